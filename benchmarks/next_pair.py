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
a search for a pair's id. A search of words is answered by the word index (store/search.py, a
tantivy index); one it cannot answer (punctuation, a word nobody wrote) falls back to the substring
scan: the two are timed apart. Beside them, in the same run, the substring scan alone for the same
words (the search as it was before the index: `_matching_ids`, its cache emptied each time). Also
printed: the import's seconds with and without the indexing, the index's size on disk and its cost
per imported pair. Target: each request under 300 ms at the 95th percentile at 1,000,000 pairs.
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
from store import pairs as store_pairs  # noqa: E402  (the substring scan, timed alone for the baseline)
from store import search as search_index  # noqa: E402
from store.labelling import LabelQueue  # noqa: E402
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
    indexing = []
    sync = search_index.sync

    def timed_sync(*args):  # the import brings the word index in step as its last step: timed apart
        t0 = time.perf_counter()
        try:
            return sync(*args)
        finally:
            indexing.append(time.perf_counter() - t0)

    search_index.sync = timed_sync
    t0 = time.perf_counter()
    try:
        import_file(store, path, "hh")
    finally:
        search_index.sync = sync
    seconds, index_s = time.perf_counter() - t0, sum(indexing)
    size = sum(f.stat().st_size for f in search_index.index_folder(store).rglob("*") if f.is_file())
    print(f"{pairs:>9,} pairs: import {seconds:.1f} s, of which the word index {index_s:.1f} s "
          f"({index_s / pairs * 1e6:.0f} us a pair); index {size / 1e6:.1f} MB on disk ({size / pairs:.0f} bytes a "
          f"pair; the database {store.path.stat().st_size / 1e6:.0f} MB)", flush=True)
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
INDEX, TEXT, SCAN = "search, words (index)", "search, as text (fallback)", "substring scan alone (before the index)"


def browse_many(store: Store, n: int) -> dict[str, list[float]]:
    """Milliseconds of the Data tab's listing, by kind of request, `n` of each."""
    rng = random.Random(0)
    total = store.scalar("SELECT count(*) FROM dataset_pairs")
    dataset_id = store.dataset_id("hh")
    pair_ids = [r["pair_id"] for r in store.query("SELECT pair_id FROM dataset_pairs USING SAMPLE 200 ROWS")]
    by_index = {w for w in SEARCH_WORDS if store_pairs._indexed(store, dataset_id, w, 0, 1) is not None}
    print(f"  words the index answers: {', '.join(sorted(by_index))}; as text: "
          f"{', '.join(w for w in SEARCH_WORDS if w not in by_index)}", flush=True)
    timings: dict[str, list[float]] = {"page": [], INDEX: [], TEXT: [], "search, later page": [], "pair id": [],
                                       SCAN: []}

    def timed(kind: str, search: str, page: int) -> str:
        t0 = time.perf_counter()
        _, _, line, _ = pairs_page(store, "hh", search, page)
        timings[kind].append((time.perf_counter() - t0) * 1000)
        return line

    for i in range(n):
        timed("page", "", rng.randint(1, max(1, total // 20)))
        word = SEARCH_WORDS[i % len(SEARCH_WORDS)]
        store_pairs._searches.clear()  # the scan keeps its last results: every first page here is a fresh one
        line = timed(INDEX if word in by_index else TEXT, word, 1)
        matches = int(line.split(" of ")[1].split()[0].replace(",", "")) if " of " in line else 0
        timed("search, later page", word, rng.randint(1, max(1, matches // 20)))
        timed("pair id", rng.choice(pair_ids), 1)
        store_pairs._searches.clear()
        t0 = time.perf_counter()  # the first page as the substring scan found it before the index
        ids = store_pairs._matching_ids(store, dataset_id, word)
        store_pairs._pairs_by_id(store, [i.decode() for i in ids[:20]])
        timings[SCAN].append((time.perf_counter() - t0) * 1000)
    return timings


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) > 1 else values[0]


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
        if not small_ms or not large_ms:
            continue
        print(f"  {kind:<40} {statistics.median(small_ms):7.1f} / {p95(small_ms):7.1f}   "
              f"{statistics.median(large_ms):7.1f} / {p95(large_ms):7.1f}   "
              f"({statistics.median(large_ms) / statistics.median(small_ms):.1f}x; "
              f"{'under' if p95(large_ms) < 300 else 'OVER'} 300 ms)")
    for size in (1000, args.pairs):
        before, now = browsing[size][SCAN], browsing[size][INDEX]
        if before and now:
            print(f"  words at {size:,} pairs: the index {statistics.median(before) / statistics.median(now):.1f}x "
                  f"faster than the scan alone (median; the scan {statistics.median(before):.0f} ms)")

if __name__ == "__main__":
    main()
