"""Import speed: the studio's batched import against the obvious row-by-row insert, same run.

    python benchmarks/import_speed.py [--copies 100] [--row-by-row-copies 5]

Each reads the HH-RLHF sample from ../shared/data, made `--copies` times larger with distinct
prompts (100: 100,000 pairs, the target's size: <= 10 s), and writes the same rows into a fresh
DuckDB workspace: the studio's import with its chunk size and with the earlier 500-pair chunks,
and a baseline that parses with the same code and inserts each prompt, response and pair with its
own INSERT statement, in one transaction (on `--row-by-row-copies` copies only: at about 80
pairs/s it would take 20 minutes for 100,000). Prints pairs/s of each and their ratios.
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

import store.imports as imports  # noqa: E402
from store import Store, import_file  # noqa: E402
from store.db import content_hash, is_empty_response  # noqa: E402
from store.formats import parse_preference_record  # noqa: E402

HH = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless-sample.jsonl.gz"


def make_input(folder: Path, copies: int) -> Path:
    folder.mkdir(exist_ok=True)
    rows = [json.loads(line) for line in gzip.open(HH, "rt", encoding="utf-8")]
    path = folder / "hh-large.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for copy in range(copies):
            for row in rows:
                tag = f" (copy {copy})"
                f.write(
                    json.dumps(
                        {
                            "chosen": row["chosen"].replace("\n\nAssistant:", tag + "\n\nAssistant:", 1),
                            "rejected": row["rejected"].replace("\n\nAssistant:", tag + "\n\nAssistant:", 1),
                        }
                    )
                    + "\n"
                )
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


def studio_import(path: Path, folder: Path, name: str, chunk_rows: int) -> tuple[int, float]:
    imports.BATCH_ROWS = chunk_rows
    with Store(folder / f"{name}.duckdb") as store:
        start = time.perf_counter()
        pairs = import_file(store, path, name).pairs
        return pairs, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=100)
    parser.add_argument("--row-by-row-copies", type=int, default=5)
    args = parser.parse_args()
    chunk_rows = imports.BATCH_ROWS
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = make_input(tmp, args.copies)
        small = make_input(tmp / "small", args.row_by_row_copies)
        pairs, ours = studio_import(path, tmp, "ours", chunk_rows)
        earlier_pairs, earlier = studio_import(path, tmp, "earlier", 1000)
        imports.BATCH_ROWS = chunk_rows
        with Store(tmp / "baseline.duckdb") as store:
            start = time.perf_counter()
            base_pairs = row_by_row(store, small)
            base = time.perf_counter() - start
    assert pairs == earlier_pairs
    print(f"pairs: {pairs} (row by row: {base_pairs})")
    print(f"studio import, {chunk_rows // 2:,}-pair chunks: {pairs / ours:8.0f} pairs/s ({ours:.2f} s; target <= 10 s)")
    print(f"studio import, 500-pair chunks:   {pairs / earlier:8.0f} pairs/s ({earlier:.2f} s), "
          f"{earlier / ours:.2f}x slower")
    print(f"row-by-row INSERT:                {base_pairs / base:8.0f} pairs/s ({base:.2f} s)")
    print(f"ratio to row by row: {(pairs / ours) / (base_pairs / base):.0f}x")


if __name__ == "__main__":
    main()
