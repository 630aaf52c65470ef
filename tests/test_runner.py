"""The job runner with a real pipeline: perplexity scoring of HH pairs on the tiny model."""

import gzip
import json
import os
import signal
import subprocess
import time

import pytest

from store import import_file
from studio import service
from studio.runner import RunError, Runner

from helpers import wait_until


def import_hh(store, pairs_file, tmp_path, n):
    subset = tmp_path / f"hh{n}.jsonl"
    with gzip.open(pairs_file, "rt", encoding="utf-8") as f:
        subset.write_text("".join(line for _, line in zip(range(n), f)))
    import_file(store, subset, "hh")


def wait_for_progress(runner, run_id, timeout=120):
    def progressed():
        runner.sync(run_id)
        return runner.store.scalar("SELECT max(value) FROM run_metrics WHERE run_id = ? AND name = 'progress'",
                                   [run_id])
    wait_until(progressed, timeout, "progress of the job", poll_s=0.2)


def partial_ids(run):
    lines = (open(os.path.join(run["folder"], "partial.jsonl")).read().splitlines())
    return [json.loads(line)["response_id"] for line in lines]


def test_a_job_runs_reports_progress_and_its_scores_land_in_the_store(
    store, workspace, pairs_file, tmp_path, tiny_model
):
    import_hh(store, pairs_file, tmp_path, 100)
    runner = Runner(store, workspace)
    run_id = service.start_perplexity(runner, "hh", model=str(tiny_model))
    run = runner.wait(run_id)
    assert run["status"] == "succeeded", run["message"]
    assert (
        store.scalar("SELECT count(*) FROM perplexities WHERE model = ? AND run_id = ?", [str(tiny_model), run_id])
        == 200
    )
    assert store.scalar("SELECT count(*) FROM run_metrics WHERE run_id = ? AND name = 'progress'", [run_id]) > 1
    assert json.loads(open(os.path.join(run["folder"], "config.json")).read())["model"] == str(tiny_model)
    with pytest.raises(RunError, match="no responses left to score"):  # scores are computed once
        service.start_perplexity(runner, "hh", model=str(tiny_model))


def test_cancel_checkpoints_and_resume_finishes_the_rest(store, workspace, pairs_file, tmp_path, tiny_model):
    import_hh(store, pairs_file, tmp_path, 300)
    runner = Runner(store, workspace)
    run_id = service.start_perplexity(runner, "hh", model=str(tiny_model), batch_size=1)
    wait_for_progress(runner, run_id)
    runner.cancel(run_id)
    run = runner.wait(run_id)
    assert run["status"] == "cancelled"
    done = partial_ids(run)
    assert 0 < len(done) < 600
    assert store.scalar("SELECT count(*) FROM perplexities") == 0  # nothing half-ingested

    runner.resume(run_id)
    run = runner.wait(run_id)
    assert run["status"] == "succeeded", run["message"]
    assert sorted(partial_ids(run)) == sorted(set(partial_ids(run)))  # nothing scored twice
    assert store.scalar("SELECT count(*) FROM perplexities") == 600


def test_a_killed_job_is_marked_failed_keeps_its_log_and_resumes(store, workspace, pairs_file, tmp_path, tiny_model):
    import_hh(store, pairs_file, tmp_path, 300)
    runner = Runner(store, workspace)
    run_id = service.start_perplexity(runner, "hh", model=str(tiny_model), batch_size=1)
    wait_for_progress(runner, run_id)
    os.kill(runner.get(run_id)["pid"], signal.SIGKILL)
    time.sleep(0.5)
    run = runner.sync(run_id)
    assert run["status"] == "failed" and "log.txt" in run["message"]
    assert os.path.getsize(os.path.join(run["folder"], "log.txt")) > 0
    assert store.scalar("SELECT count(*) FROM perplexities") == 0

    runner.resume(run_id)
    assert runner.wait(run_id)["status"] == "succeeded"
    assert store.scalar("SELECT count(*) FROM perplexities") == 600


def test_after_a_restart_finished_runs_are_ingested_and_lost_ones_fail(
    store, workspace, pairs_file, tmp_path, tiny_model
):
    import_hh(store, pairs_file, tmp_path, 20)
    first = Runner(store, workspace)
    finished = service.start_perplexity(first, "hh", model=str(tiny_model))
    first._procs[finished].wait()  # the job ends while "the studio is down": nobody syncs it
    # A run whose process vanished without a word (its pid now belongs to nobody).
    gone = subprocess.Popen(["true"])
    gone.wait()
    with store.transaction() as cur:
        cur.execute("INSERT INTO runs (kind, config, status, pid, folder) VALUES "
                    "('perplexity', '{}', 'running', ?, ?)", [gone.pid, str(tmp_path / "lost")])

    Runner(store, workspace).recover()  # the studio starts again, and catches up first
    statuses = dict((r["id"], r["status"]) for r in store.query("SELECT id, status FROM runs"))
    assert statuses[finished] == "succeeded"
    assert store.scalar("SELECT count(*) FROM perplexities") == 40
    assert [s for i, s in statuses.items() if i != finished] == ["failed"]


def test_unknown_dataset_and_bad_control_requests(store, workspace):
    runner = Runner(store, workspace)
    with pytest.raises(RunError, match="no dataset named 'nope'"):
        service.start_perplexity(runner, "nope")
    with pytest.raises(RunError, match="no run 42"):
        runner.cancel(42)


def test_the_home_runs_table_keeps_a_message_s_lines_apart(store, tmp_path):
    """An evaluation's message says one judge a line; in the Home tab's table cell the lines would
    run together ("... better KL from the base ..."), so they are shown joined by semicolons."""
    from store.runs import create_run, record_events
    from studio.home_tab import runs_table

    run_id, _ = create_run(store, "evaluate", {}, tmp_path)
    record_events(store, run_id, [], 0, "succeeded", "rule 'heuristic': policy wins 88% of 48 prompts: better\n"
                                                     "KL from the base 6.58; answer length -61.4 tokens")
    message = next(row[4] for row in runs_table(store) if row[0] == run_id)
    assert message == ("rule 'heuristic': policy wins 88% of 48 prompts: better; "
                       "KL from the base 6.58; answer length -61.4 tokens")
