"""Labelling speed: how long the store takes to serve the next pair and commit a label.

    python benchmarks/next_pair.py [--pairs 100000] [--labels 1000]

Builds two workspaces from the HH-RLHF sample in ../shared/data, made as large as asked with
distinct prompts: a small one (1,000 pairs, the baseline) and a large one (`--pairs`). In each,
one annotator labels `--labels` pairs the way the Label tab does (serve the next pair, commit the
answer) while a second annotator's tab holds a claim, and a third annotator has labelled 10% of
the pairs before. Prints the median and 95th percentile milliseconds of serving and of labelling
at both sizes, and the ratio large/small. Target: the next pair in under 50 ms at 100,000 pairs.

Then the Data tab's browsing, timed through the function the tab calls (`pairs_page`: the line
"Pairs 1-20 of N", the table and its ids): a random page of the whole dataset, a search for a
word (common and rare words of the sample, each first page then a random page of its matches) and
a search for a pair's id; and the baseline, the search as the tab did it before (every text's
JSON parsed), a quarter as many times. Target: each under 300 ms at the 95th percentile at
1,000,000 pairs.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from store import Store, import_file  # noqa: E402
from store.labelling import LabelQueue  # noqa: E402
from store.pairs import _TEXT, IN_DATASET, _contains  # noqa: E402  (the old search, rebuilt for the baseline)
from studio.data_tab import pairs_page  # noqa: E402

HH = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless-sample.jsonl.gz"


def make_workspace(folder: Path, pairs: int) -> Store:
    rows = [json.loads(line) for line in gzip.open(HH, "rt", encoding="utf-8")]
    path = folder / f"hh-{pairs}.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(pairs):
            row = rows[i % len(rows)]
            tag = f" (copy {i // len(rows)})"
            f.write(
                json.dumps(
                    {
                        "chosen": row["chosen"].replace("\n\nAssistant:", tag + "\n\nAssistant:", 1),
                        "rejected": row["rejected"].replace("\n\nAssistant:", tag + "\n\nAssistant:", 1),
                    }
                )
                + "\n"
            )
    store = Store(folder / f"ws-{pairs}.duckdb")
    import_file(store, path, "hh")
    with store.transaction() as cur:  # earlier work by another annotator: 10% labelled
        cur.execute("""INSERT INTO labels (pair_id, annotator, verdict)
                       SELECT pair_id, 'earlier', 'first' FROM dataset_pairs USING SAMPLE 10 PERCENT (bernoulli, 7)""")
    return store


def label_many(store: Store, n: int) -> tuple[list[float], list[float]]:
    queue = LabelQueue(store, seed=0)
    queue.next_pair("hh", "other", "other-tab")  # another annotator's open tab holds a pair
    serve_ms, label_ms = [], []
    for i in range(n):
        t0 = time.perf_counter()
        served = queue.next_pair("hh", "bench", "bench-tab")
        t1 = time.perf_counter()
        queue.label("bench-tab", "bench", served, ("left", "right", "tie")[i % 3])
        t2 = time.perf_counter()
        serve_ms.append((t1 - t0) * 1000)
        label_ms.append((t2 - t1) * 1000)
    return serve_ms, label_ms


SEARCH_WORDS = ("money", "the", "police", "recipe", "neighbor", "Kenya", "xylophone", "copy 3)")
# The baseline: how the tab searched before, every text's JSON parsed. Only its count of matches is
# timed here (the tab ran it, then the same condition again for the page), so it is a lower bound.
SEARCH_BEFORE = "SELECT count(*) FROM pairs p WHERE {} AND (p.id = ? OR {})".format(IN_DATASET, " OR ".join(
    f"{_TEXT.format(f'(SELECT messages FROM {table} WHERE id = p.{column})')} ILIKE ? ESCAPE '\\'"
    for table, column in (("prompts", "prompt_id"), ("responses", "first_id"), ("responses", "second_id"))))


def browse_many(store: Store, n: int) -> dict[str, list[float]]:
    """Milliseconds of the Data tab's listing, by kind of request, `n` of each."""
    rng = random.Random(0)
    total = store.scalar("SELECT count(*) FROM dataset_pairs")
    pair_ids = [r["pair_id"] for r in store.query("SELECT pair_id FROM dataset_pairs USING SAMPLE 200 ROWS")]
    timings: dict[str, list[float]] = {"page": [], "search": [], "search, later page": [], "pair id": [],
                                       "search before (count)": []}

    def timed(kind: str, search: str, page: int) -> str:
        t0 = time.perf_counter()
        _, _, line, _ = pairs_page(store, "hh", search, page)
        timings[kind].append((time.perf_counter() - t0) * 1000)
        return line

    for i in range(n):
        timed("page", "", rng.randint(1, max(1, total // 20)))
        word = SEARCH_WORDS[i % len(SEARCH_WORDS)]
        line = timed("search", word, 1)
        matches = int(line.split(" of ")[1].split()[0].replace(",", "")) if " of " in line else 0
        timed("search, later page", word, rng.randint(1, max(1, matches // 20)))
        timed("pair id", rng.choice(pair_ids), 1)
        if i < max(2, n // 4):  # slow: a quarter as many
            t0 = time.perf_counter()
            store.scalar(SEARCH_BEFORE, [store.dataset_id("hh"), word, *[_contains(word)] * 3])
            timings["search before (count)"].append((time.perf_counter() - t0) * 1000)
    return timings


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--labels", type=int, default=1000)
    parser.add_argument("--browse", type=int, default=40, help="Data-tab requests of each kind")
    args = parser.parse_args()
    results, browsing = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in (1000, args.pairs):
            t0 = time.perf_counter()
            store = make_workspace(Path(tmp), size)
            print(f"{size:>7,} pairs: workspace built in {time.perf_counter() - t0:.1f} s", flush=True)
            serve_ms, label_ms = label_many(store, args.labels)
            browsing[size] = browse_many(store, args.browse)
            store.close()
            results[size] = (statistics.median(serve_ms), p95(serve_ms), statistics.median(label_ms), p95(label_ms))
            print(f"{size:>7,} pairs: next pair median {results[size][0]:.1f} ms, p95 {results[size][1]:.1f} ms; "
                  f"label commit median {results[size][2]:.1f} ms, p95 {results[size][3]:.1f} ms "
                  f"({args.labels} labels)", flush=True)
    small, large = results[1000], results[args.pairs]
    print(f"ratio {args.pairs:,} / 1,000 pairs: next pair {large[0] / small[0]:.2f}x, label {large[2] / small[2]:.2f}x")
    print(f"target: next pair under 50 ms at {args.pairs:,} pairs: "
          f"{'met' if large[1] < 50 else 'NOT met'} (p95 {large[1]:.1f} ms)")
    print(f"Data tab ({args.browse} requests of each kind): median / p95 ms at 1,000 and {args.pairs:,} pairs, "
          "then the search against the way before it")
    for kind in browsing[1000]:
        small_ms, large_ms = browsing[1000][kind], browsing[args.pairs][kind]
        print(f"  {kind:<20} {statistics.median(small_ms):7.1f} / {p95(small_ms):7.1f}   "
              f"{statistics.median(large_ms):7.1f} / {p95(large_ms):7.1f}   "
              f"({statistics.median(large_ms) / statistics.median(small_ms):.1f}x; "
              f"{'under' if p95(large_ms) < 300 else 'OVER'} 300 ms)")
    for size in (1000, args.pairs):
        before, now = browsing[size]["search before (count)"], browsing[size]["search"]
        print(f"  search at {size:,} pairs: {statistics.median(before) / statistics.median(now):.1f}x faster than "
              f"before (median; its count alone {statistics.median(before):.0f} ms)")


if __name__ == "__main__":
    main()
