"""Import speed: the studio's batched import against the obvious row-by-row insert, same run.

    python benchmarks/import_speed.py [--copies 5]

Both read the HH-RLHF sample from ../shared/data, made `--copies` times larger with distinct
prompts, and write the same rows into a fresh DuckDB workspace. The baseline parses with the same
code and inserts each prompt, response and pair with its own INSERT statement, in one
transaction. Prints rows/s of each and their ratio.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from store import Store, import_file  # noqa: E402
from store.db import content_hash, is_empty_response  # noqa: E402
from store.formats import parse_preference_record  # noqa: E402

HH = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless-sample.jsonl.gz"


def make_input(folder: Path, copies: int) -> Path:
    rows = [json.loads(line) for line in gzip.open(HH, "rt", encoding="utf-8")]
    path = folder / "hh-large.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for copy in range(copies):
            for row in rows:
                tag = f" (copy {copy})"
                f.write(json.dumps({"chosen": row["chosen"].replace("\n\nAssistant:", tag + "\n\nAssistant:", 1),
                                    "rejected": row["rejected"].replace("\n\nAssistant:", tag + "\n\nAssistant:", 1)}) + "\n")
    return path


def row_by_row(store: Store, path: Path) -> int:
    n = 0
    with store.transaction() as cur:
        dataset_id = cur.execute("INSERT INTO datasets (name) VALUES ('baseline') RETURNING id").fetchall()[0][0]
        for line in open(path, encoding="utf-8"):
            pair = parse_preference_record(json.loads(line))
            pid = content_hash("prompt", pair.prompt)
            cur.execute("INSERT OR IGNORE INTO prompts (id, messages) VALUES (?, ?)", [pid, json.dumps(pair.prompt)])
            ids = []
            for side in (pair.chosen, pair.rejected):
                rid = content_hash("response", pid, side)
                ids.append(rid)
                cur.execute("INSERT OR IGNORE INTO responses (id, prompt_id, messages, is_empty) VALUES (?, ?, ?, ?)",
                            [rid, pid, json.dumps(side), is_empty_response(side)])
            pair_id = content_hash("pair", pid, *ids)
            cur.execute("INSERT OR IGNORE INTO pairs (id, prompt_id, first_id, second_id, source_verdict) "
                        "VALUES (?, ?, ?, ?, 'first')", [pair_id, pid, *ids])
            cur.execute("INSERT OR IGNORE INTO dataset_pairs VALUES (?, ?)", [dataset_id, pair_id])
            n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = make_input(tmp, args.copies)
        with Store(tmp / "ours.duckdb") as store:
            start = time.perf_counter()
            ours_rows = import_file(store, path, "ours").pairs
            ours = time.perf_counter() - start
        with Store(tmp / "baseline.duckdb") as store:
            start = time.perf_counter()
            base_rows = row_by_row(store, path)
            base = time.perf_counter() - start
    assert ours_rows == base_rows
    print(f"pairs: {ours_rows}")
    print(f"studio import (batched):  {ours_rows / ours:10.0f} pairs/s ({ours:.2f} s)")
    print(f"row-by-row INSERT:        {base_rows / base:10.0f} pairs/s ({base:.2f} s)")
    print(f"ratio: {base / ours:.1f}x")


if __name__ == "__main__":
    main()
