"""The job runner's lifecycle with a stand-in pipeline (tests/fake_pipeline.py): start, follow,
record outputs, cancel, resume, rerun, failure and a killed process, in seconds and without a model."""

import json
import os
import signal
from pathlib import Path

import pytest

from store.runs import record_adapter
from studio import kinds
from studio.runner import RunError, Runner

from helpers import read_events, wait_until

sys_path = str(Path(__file__).resolve().parent)


@pytest.fixture
def runner(store, workspace, monkeypatch):
    from fake_pipeline import FakeConfig

    def record(cur, run, config, final, folder):
        out = json.loads((folder / config["output"]).read_text())
        record_adapter(cur, run["id"], f"fake-run{run['id']}-{out['steps']}steps", folder / config["output"],
                       "none", "policy")

    monkeypatch.setenv("PYTHONPATH", sys_path)  # the runner adds the project root in front
    monkeypatch.setitem(kinds.JOBS, "fake", kinds.Job("fake_pipeline", FakeConfig, record))
    return Runner(store, workspace)


def start(runner, **settings):
    from fake_pipeline import FakeConfig

    return runner.start("fake", FakeConfig(**settings), {"inputs.parquet": [{"x": i} for i in range(3)]})


def wait_for_step(runner, run_id, step, timeout=60):
    def reached():
        runner.sync(run_id)
        return (runner.store.scalar("SELECT max(step) FROM run_metrics WHERE run_id = ?", [run_id]) or 0) >= step
    wait_until(reached, timeout, f"run {run_id} reaching step {step}", poll_s=0.05)


def test_a_run_reports_every_step_and_its_output_lands_with_its_success(runner, store):
    run_id = start(runner, steps=5)
    run = runner.wait(run_id, poll_s=0.05)
    assert run["status"] == "succeeded" and run["message"] == "counted 5 steps over 3 rows"
    assert [e["status"] for e in read_events(run)].count("started") == 1
    assert store.query("SELECT step, value FROM run_metrics WHERE run_id = ? AND name = 'loss' ORDER BY step",
                       [run_id]) == [{"step": s, "value": 1.0 / s} for s in range(1, 6)]
    assert store.scalar("SELECT max(value) FROM run_metrics WHERE run_id = ? AND name = 'progress'", [run_id]) == 1.0
    assert store.query("SELECT name, purpose FROM models") == [
        {"name": f"fake-run{run_id}-5steps", "purpose": "policy"}
    ]
    assert json.loads(run["config"]) == {"steps": 5, "sleep_s": 0.05, "fail_at": -1, "fail_with_a_sentence": False,
                                         "inputs": "inputs.parquet", "output": "out.json"}


def test_cancel_stops_at_a_checkpoint_and_resume_finishes_from_it(runner, store):
    run_id = start(runner, steps=40)
    wait_for_step(runner, run_id, 3)
    runner.cancel(run_id)
    run = runner.wait(run_id, poll_s=0.05)
    assert run["status"] == "cancelled"
    stopped = json.loads((Path(run["folder"]) / "checkpoint.json").read_text())["step"]
    assert 3 <= stopped < 40
    assert store.stats()["models"] == 0  # nothing recorded for a cancelled run
    runner.resume(run_id)
    with pytest.raises(RunError, match="only cancelled or failed runs resume"):
        runner.resume(run_id)  # it is running again
    run = runner.wait(run_id, poll_s=0.05)
    assert run["status"] == "succeeded"
    assert f"resuming from step {stopped}" in [e.get("message") for e in read_events(run)]
    steps = [r["step"] for r in store.query("SELECT step FROM run_metrics WHERE run_id = ? AND name = 'loss' "
                                             "ORDER BY rowid", [run_id])]
    assert steps == list(range(1, 41))  # every step once, in order, across the two processes
    assert store.query("SELECT name FROM models") == [{"name": f"fake-run{run_id}-40steps"}]


def test_a_failing_run_is_failed_with_its_error_and_records_nothing(runner, store):
    run = runner.wait(start(runner, steps=5, fail_at=3), poll_s=0.05)
    assert run["status"] == "failed"
    assert run["message"] == "RuntimeError: failed at step 3 as asked"
    # The studio's own errors are sentences written for the user: shown without a type's name.
    run = runner.wait(start(runner, steps=5, fail_at=2, fail_with_a_sentence=True), poll_s=0.05)
    assert (run["status"], run["message"]) == ("failed", "failed at step 2 as asked")
    assert "Traceback" in (Path(run["folder"]) / "log.txt").read_text()
    assert store.stats()["models"] == 0


def test_a_killed_run_is_failed_and_points_to_its_log(runner, store):
    run_id = start(runner, steps=400)
    wait_for_step(runner, run_id, 1)
    os.kill(runner.get(run_id)["pid"], signal.SIGKILL)
    run = runner.wait(run_id, poll_s=0.05)
    assert run["status"] == "failed"
    assert "ended without reporting a result" in run["message"] and "log.txt" in run["message"]


def test_rerun_repeats_a_run_with_its_config_and_inputs(runner, store):
    first = runner.wait(start(runner, steps=2), poll_s=0.05)
    second = runner.wait(runner.rerun(first["id"]), poll_s=0.05)
    assert second["status"] == "succeeded" and second["id"] != first["id"]
    assert second["config"] == first["config"] and second["message"] == "counted 2 steps over 3 rows"


def test_unknown_kinds_and_runs_are_refused(runner, store):
    from fake_pipeline import FakeConfig

    with pytest.raises(RunError, match="unknown kind of job 'nope'"):
        runner.start("nope", FakeConfig(), {})
    with pytest.raises(RunError, match="no run 42"):
        runner.cancel(42)
    assert store.stats()["runs"] == 0


def test_a_second_identical_job_while_the_first_runs_is_refused(runner):
    first = start(runner, steps=40, sleep_s=0.1)
    with pytest.raises(RunError, match=f"the same fake job is running already \\(run {first}\\)"):
        start(runner, steps=40, sleep_s=0.1)  # a double click
    other = start(runner, steps=2, sleep_s=0.1)  # other settings: a job of its own
    assert runner.wait(other)["status"] == "succeeded"
    runner.cancel(first)
    assert runner.wait(first)["status"] == "cancelled"
    again = start(runner, steps=40, sleep_s=0.1)  # the first has ended: the same job may run again
    runner.cancel(again)
    runner.wait(again)


def test_with_one_gpu_a_second_job_waits_says_for_which_and_starts_after(runner, store, workspace):
    gpu = Runner(store, workspace, one_job_at_a_time=True)  # as on a machine with a GPU
    first = start(gpu, steps=40, sleep_s=0.1)
    second = start(gpu, steps=3, sleep_s=0.05)
    third = start(gpu, steps=2, sleep_s=0.05)
    waiting = gpu.get(second)
    assert (waiting["status"], waiting["pid"]) == ("queued", None)
    assert waiting["message"] == f"waiting for run {first} to end (one GPU job at a time)"
    gpu.cancel(third)  # a waiting run is cancelled without ever starting
    assert gpu.get(third)["status"] == "cancelled" and not (Path(gpu.get(third)["folder"]) / "events.jsonl").exists()
    wait_for_step(gpu, first, 1)
    gpu.cancel(first)
    assert gpu.wait(first)["status"] == "cancelled"
    assert gpu.wait(second)["status"] == "succeeded"  # its turn came when the first ended
    gpu.resume(first)
    assert gpu.wait(first)["status"] == "succeeded"


def test_a_single_process_job_sees_only_the_first_visible_gpu(runner, monkeypatch):
    """With two cards visible, a one-process Trainer would wrap the model in DataParallel (a device
    mismatch with TRL's and Accelerate's forward): the runner hands a job one GPU."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    run = runner.wait(start(runner, steps=1), poll_s=0.05)
    assert json.loads((Path(run["folder"]) / "out.json").read_text())["gpus"] == "1"
