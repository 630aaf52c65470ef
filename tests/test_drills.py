"""Failure drills: what a user meets when things go wrong, and that nothing is lost or half-written."""

import gzip
import json
import os
import resource
import signal
import string
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from store import ImportFailed, import_file
from studio import service
from studio.data_tab import export_path
from studio.runner import Runner

from helpers import ALIGNSTUDIO


def test_a_training_job_killed_mid_run_fails_keeps_the_store_and_resumes(
    workspace, store, pairs_file, tiny_model, tmp_path
):
    import gzip

    path = tmp_path / "hh40.jsonl"
    path.write_text("".join(gzip.open(pairs_file, "rt", encoding="utf-8").readlines()[:40]))
    import_file(store, path, "hh40")
    before = store.stats()
    runner = Runner(store, workspace)
    run_id = service.start_training(
        runner,
        "rm",
        "hh40",
        base=str(tiny_model),
        max_steps=60,
        eval_share=0.0,
        batch_size=2,
        max_length=256,
        save_every=5,
        lora_r=4,
    ).run_id
    folder = workspace.runs_dir / str(run_id)
    deadline = time.time() + 300
    # A complete checkpoint (a kill while one is being written leaves one that resume rightly skips).
    while not list((folder / "checkpoints").glob("checkpoint-*/trainer_state.json")) and time.time() < deadline:
        runner.sync(run_id)
        time.sleep(0.2)
    os.kill(runner.get(run_id)["pid"], signal.SIGKILL)
    time.sleep(1)
    run = runner.sync(run_id)
    assert run["status"] == "failed" and "log.txt" in run["message"]
    assert {k: v for k, v in store.stats().items() if k != "runs"} == {k: v for k, v in before.items() if k != "runs"}
    runner.resume(run_id)
    run = runner.wait(run_id)
    assert run["status"] == "succeeded", run["message"]
    assert "resuming from checkpoint-" in (folder / "events.jsonl").read_text()
    assert store.scalar("SELECT count(*) FROM models WHERE run_id = ?", [run_id]) == 1


def _fill_the_disk_at(limit_bytes: int):
    """For a child process: writes past `limit_bytes` fail as on a full disk (EFBIG instead of ENOSPC)."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return limit


def test_a_full_disk_gives_a_clear_message_and_writes_nothing(tmp_path, pairs_file):
    ws = tmp_path / "ws"
    subprocess.run([ALIGNSTUDIO, "stats", "--workspace", ws], check=True, capture_output=True)  # a new, empty workspace
    result = subprocess.run([ALIGNSTUDIO, "import", pairs_file, "--dataset", "hh", "--workspace", ws],
                            capture_output=True, text=True, preexec_fn=_fill_the_disk_at(400_000))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        "cannot write the workspace database" in result.stderr and "Nothing of this change was written" in result.stderr
    )
    stats = subprocess.run(
        [ALIGNSTUDIO, "stats", "--json", "--workspace", ws], capture_output=True, text=True, check=True
    )
    assert json.loads(stats.stdout)["pairs"] == 0
    # With room again, the same import goes through.
    subprocess.run(
        [ALIGNSTUDIO, "import", pairs_file, "--dataset", "hh", "--workspace", ws], check=True, capture_output=True
    )


def _big_jsonl(path: Path, megabytes: int, start: int = 0) -> int:
    """Distinct pairs of ~10 KB of incompressible text each (hex of random bytes); the row count."""
    rows, size = 0, 0
    with open(path, "w") as f:
        while size < megabytes * 1_000_000:
            line = json.dumps({"prompt": f"question {start + rows} " + os.urandom(500).hex(),
                               "chosen": os.urandom(2000).hex(), "rejected": os.urandom(2000).hex()}) + "\n"
            f.write(line)
            size, rows = size + len(line), rows + 1
    return rows


# A child imports a file into a new workspace; it prints its peak resident memory and the pairs.
IMPORT_CHILD = """
import json, resource, sys
from store import Store, import_file
with Store(sys.argv[2]) as store:
    pairs = import_file(store, sys.argv[1], "big").pairs
print(json.dumps({"pairs": pairs, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


@pytest.mark.slow  # about 11,000 and 22,000 rows (100 and 200 MB), and their peak memory
def test_a_large_import_streams_in_flat_memory(tmp_path):
    results = {}
    for megabytes in (100, 200):
        path = tmp_path / f"big{megabytes}.jsonl"
        rows = _big_jsonl(path, megabytes)
        out = subprocess.run([sys.executable, "-c", IMPORT_CHILD, path, tmp_path / f"ws{megabytes}.duckdb"],
                             capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1])
        results[megabytes] = json.loads(out.stdout)
        assert results[megabytes]["pairs"] == rows
        path.unlink()
    # Holding the rows (the one-transaction import did) costs about 3 MB per MB of file: 300 MB more here.
    growth = results[200]["peak_mb"] - results[100]["peak_mb"]
    assert growth < 50, (
        f"peak memory {results[100]['peak_mb']:.0f} MB for 100 MB, {results[200]['peak_mb']:.0f} MB for 200 MB"
    )


KILLED_IMPORT_CHILD = """
import os, signal, sys
import store.imports
from store import Store, import_file
store.imports.BATCH_ROWS = 1_000  # chunks of 500 pairs, so that the file takes several
write, chunks = store.imports._Batch.write, []
def write_then_die(self, *args):
    write(self, *args)
    chunks.append(1)
    if len(chunks) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
store.imports._Batch.write = write_then_die
with Store(sys.argv[2]) as s:
    import_file(s, sys.argv[1], "big")
"""


def test_an_import_killed_mid_file_leaves_nothing_once_the_workspace_reopens(tmp_path):
    from store import Store

    path, db = tmp_path / "big.jsonl", tmp_path / "ws.duckdb"
    rows = _big_jsonl(path, 40)  # 4,400 pairs, written in chunks of 500
    child = subprocess.run([sys.executable, "-c", KILLED_IMPORT_CHILD, path, db], cwd=Path(__file__).parents[1])
    assert child.returncode == -signal.SIGKILL
    with Store(db, read_only=True) as seen:  # three chunks were committed, and no dataset shows them
        assert 0 < seen.stats()["pairs"] < rows and seen.stats()["datasets"] == 0
    with Store(db) as reopened:
        assert reopened.stats() == {t: 0 for t in reopened.stats()}
        assert reopened.scalar("SELECT count(*) FROM import_staging") == 0
        report = import_file(reopened, path, "big")
        assert (report.pairs, report.new_pairs) == (rows, rows)


# Lines a user's file might hold: JSON objects with the keys the formats know, arbitrary values,
# broken JSON, empty lines, CSV quoting gone wrong, nesting past any parser's depth.
TEXT = st.text(alphabet=string.printable + "éü中\u2028", max_size=40)
VALUE = st.recursive(st.none() | st.booleans() | st.integers() | TEXT,
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3), max_leaves=6)
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "bot", ""]), "content": VALUE})
RECORD = st.dictionaries(st.sampled_from(["prompt", "chosen", "rejected", "messages", "text", "other"]),
                         VALUE | st.lists(MESSAGE, max_size=3), max_size=4)
CSV_LINE = st.lists(st.sampled_from(['"', '""', ",", "q", "a b", '"x"y', "\r", "\x00"]), max_size=6).map("".join)
NESTED = st.integers(900, 3000).map(lambda depth: '{"prompt": "q", "x": ' + "[" * depth + "]" * depth + "}")
LINE = (RECORD.map(json.dumps) | TEXT | st.just("") | RECORD.map(lambda r: json.dumps(r)[:-1]) | CSV_LINE | NESTED
        | st.just("prompt,chosen,rejected"))


def wrap(data: bytes, how: str) -> bytes:
    """The file as saved: plain, with Excel's byte order mark, gzipped, or gzipped and cut short."""
    if how == "bom":
        return b"\xef\xbb\xbf" + data
    if how.startswith("gzip"):
        packed = gzip.compress(data)
        return packed[: len(packed) // 2] if how == "gzip-cut" else packed
    return data


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(LINE, min_size=1, max_size=6), suffix=st.sampled_from([".jsonl", ".json", ".csv"]),
       how=st.sampled_from(["plain", "bom", "gzip", "gzip-cut"]), skip_bad=st.booleans())
def test_fuzzed_imports_never_crash_and_never_write_partial_data(tmp_path, store, lines, suffix, how, skip_bad):
    path = tmp_path / f"fuzz{suffix}{'.gz' if how.startswith('gzip') else ''}"
    path.write_bytes(wrap("\n".join(lines).encode("utf-8", "surrogatepass"), how))
    before = store.stats()
    try:
        report = import_file(store, path, "fuzz", skip_bad=skip_bad)
    except ImportFailed as e:
        assert e.report.errors and all(str(path) in str(err) for err in e.report.errors)
        assert store.stats() == before  # refused: nothing written
    else:
        assert report.written and report.pairs + report.prompts_only > 0
        # every row of the file is imported or reported
        assert report.rows == report.pairs + report.prompts_only + len(report.errors)


@pytest.mark.parametrize("name", ["../../escape", "/etc/passwd", "..", "a/b\\c", "ok name"])
def test_export_files_stay_in_the_exports_folder_whatever_the_dataset_is_called(workspace, name):
    path = export_path(workspace, name, "conversational", ".jsonl")
    assert path.parent == workspace.exports_dir and path.name.endswith("-conversational.jsonl")
    assert export_path(workspace, name, "conversational", "/../../x").suffix == ".jsonl"
