"""Failure drills: what a user meets when things go wrong, and that nothing is lost or half-written."""

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
from hypothesis import HealthCheck, given, settings, strategies as st

from store import ImportFailed, import_file
from studio.data_tab import export_path
from studio.runner import Runner

ALIGNSTUDIO = str(Path(sys.executable).parent / "alignstudio")


def test_a_training_job_killed_mid_run_fails_keeps_the_store_and_resumes(workspace, store, hh_file, tiny_model, tmp_path):
    import gzip

    path = tmp_path / "hh40.jsonl"
    path.write_text("".join(gzip.open(hh_file, "rt", encoding="utf-8").readlines()[:40]))
    import_file(store, path, "hh40")
    before = store.stats()
    runner = Runner(store, workspace)
    run_id = runner.start_training("reward", "hh40", base=str(tiny_model), max_steps=60, eval_share=0.0, batch_size=2,
                                   max_length=256, save_every=5, lora_r=4)
    folder = workspace.runs_dir / str(run_id)
    deadline = time.time() + 300
    while not list((folder / "checkpoints").glob("checkpoint-*")) and time.time() < deadline:
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


def test_a_full_disk_gives_a_clear_message_and_writes_nothing(tmp_path, hh_file):
    ws = tmp_path / "ws"
    subprocess.run([ALIGNSTUDIO, "stats", "--workspace", ws], check=True, capture_output=True)  # a new, empty workspace
    result = subprocess.run([ALIGNSTUDIO, "import", hh_file, "--dataset", "hh", "--workspace", ws],
                            capture_output=True, text=True, preexec_fn=_fill_the_disk_at(400_000))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "cannot write the workspace database" in result.stderr and "Nothing of this change was written" in result.stderr
    stats = subprocess.run([ALIGNSTUDIO, "stats", "--json", "--workspace", ws], capture_output=True, text=True, check=True)
    assert json.loads(stats.stdout)["pairs"] == 0
    # With room again, the same import goes through.
    subprocess.run([ALIGNSTUDIO, "import", hh_file, "--dataset", "hh", "--workspace", ws], check=True, capture_output=True)


# Lines a user's file might hold: JSON objects with the keys the formats know, arbitrary values,
# broken JSON, empty lines.
TEXT = st.text(alphabet=string.printable + "éü中\u2028", max_size=40)
VALUE = st.recursive(st.none() | st.booleans() | st.integers() | TEXT,
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3), max_leaves=6)
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "bot", ""]), "content": VALUE})
RECORD = st.dictionaries(st.sampled_from(["prompt", "chosen", "rejected", "messages", "text", "other"]),
                         VALUE | st.lists(MESSAGE, max_size=3), max_size=4)
LINE = RECORD.map(json.dumps) | TEXT | st.just("") | RECORD.map(lambda r: json.dumps(r)[:-1])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(LINE, min_size=1, max_size=6), suffix=st.sampled_from([".jsonl", ".json", ".csv"]))
def test_fuzzed_imports_never_crash_and_never_write_partial_data(tmp_path, store, lines, suffix):
    path = tmp_path / f"fuzz{suffix}"
    path.write_text("\n".join(lines), encoding="utf-8")
    before = store.stats()
    try:
        report = import_file(store, path, "fuzz")
    except ImportFailed as e:
        assert e.report.errors and all(str(path) in str(err) for err in e.report.errors)
        assert store.stats() == before  # refused: nothing written
    else:
        assert report.written and report.pairs + report.prompts_only > 0


@pytest.mark.parametrize("name", ["../../escape", "/etc/passwd", "..", "a/b\\c", "ok name"])
def test_export_files_stay_in_the_exports_folder_whatever_the_dataset_is_called(workspace, name):
    path = export_path(workspace, name, "conversational", ".jsonl")
    assert path.parent == workspace.exports_dir and path.name.endswith("-conversational.jsonl")
    assert export_path(workspace, name, "conversational", "/../../x").suffix == ".jsonl"
