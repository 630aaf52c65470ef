"""A training job taken elsewhere and brought back: `train ... --bundle DIR` writes a folder that
its own launch.sh runs (here: two CPU ranks through Accelerate, as on a machine with two GPUs),
and `runs import DIR` makes it a run of the workspace that equals a local run of the same config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines.models import choose_placement
from pipelines.reward import HELD_OUT_SCORES
from pipelines.reward_model import load_reward_model, score
from store import import_file
from store.models import model_path
from store.queries import latest_metrics
from studio import service
from studio.bundles import import_bundle
from studio.kinds import RunError
from studio.runner import Runner, free_port

from helpers import cli, write_pairs

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = dict(max_steps=2, batch_size=2, max_length=512, lora_r=4, lora_alpha=8, eval_share=0.25, save_every=100,
                seed=0, num_processes=2, device="cpu")


def held_out_rewards(folder: Path) -> dict[str, tuple[float, float]]:
    return {r["pair_id"]: (r["reward_chosen"], r["reward_rejected"])
            for r in pq.read_table(folder / HELD_OUT_SCORES).to_pylist()}


@pytest.mark.slow
def test_a_bundle_run_by_its_own_launcher_on_two_ranks_comes_back_equal_to_a_local_run(workspace, store, tiny_model,
                                                                                       tmp_path):
    import_file(store, write_pairs(tmp_path / "pairs.jsonl.gz", n=24), "pairs")
    runner = Runner(store, workspace)
    local = service.start_training(runner, "rm", "pairs", base=str(tiny_model), **SETTINGS).run_id
    assert runner.wait(local)["status"] == "succeeded"

    bundle = tmp_path / "bundle"
    made = service.start_training(runner, "rm", "pairs", base=str(tiny_model), bundle=bundle, **SETTINGS)
    assert made.run_ids == () and made.bundle == bundle and made.plan is not None
    assert {p.name for p in bundle.iterdir()} >= {"config.json", "inputs.parquet", "launch.sh", "job.sbatch",
                                                 "README.txt", "bundle.json"}
    assert json.loads((bundle / "config.json").read_text())["models_dir"] == "models"
    assert len((bundle / "README.txt").read_text().splitlines()) == 3
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(ROOT), NUM_PROCESSES="2",
               MAIN_PROCESS_PORT=str(free_port()))
    with open(bundle / "log.txt", "w") as log:
        subprocess.run(["bash", str(bundle / "launch.sh")], env=env, stdout=log, stderr=subprocess.STDOUT,
                       timeout=900, check=True)

    imported = import_bundle(runner, bundle)
    run = runner.get(imported)
    assert run["status"] == "succeeded" and run["kind"] == "rm" and run["dataset"] == "pairs"  # its lineage
    ours, theirs = latest_metrics(store, local), latest_metrics(store, imported)
    assert theirs["heldout_pairs"] == ours["heldout_pairs"] > 0
    assert abs(theirs["heldout_accuracy"] - ours["heldout_accuracy"]) < 1e-4
    local_rewards = held_out_rewards(workspace.runs_dir / str(local))
    bundle_rewards = held_out_rewards(workspace.runs_dir / str(imported))
    assert local_rewards.keys() == bundle_rewards.keys()
    gaps = [abs(a - b) for k in local_rewards for a, b in zip(local_rewards[k], bundle_rewards[k])]
    assert max(gaps) < 1e-4, (local_rewards, bundle_rewards)
    steps = [e["step"] for e in map(json.loads, (bundle / "events.jsonl").read_text().splitlines()) if "step" in e]
    assert max(steps) == SETTINGS["max_steps"]
    # The adapter is registered as a local run's, and loads.
    adapter = model_path(store, "reward", run_id=imported)
    assert adapter and Path(adapter).is_relative_to(workspace.runs_dir / str(imported))
    tokenizer, model = load_reward_model(adapter, choose_placement())
    conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert len(score(tokenizer, model, [conversation])) == 1


def test_a_bundle_is_refused_where_it_cannot_be_one(workspace, store, tmp_path):
    import_file(store, write_pairs(tmp_path / "pairs.jsonl.gz", n=8), "pairs")
    runner = Runner(store, workspace)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "something").write_text("x")
    with pytest.raises(RunError, match="a bundle goes into a new or empty folder"):
        service.start_training(runner, "rm", "pairs", bundle=tmp_path / "full")
    with pytest.raises(RunError, match="a judge split is two runs"):
        service.start_training(runner, "rm", "pairs", judge_split=True, bundle=tmp_path / "split")
    with pytest.raises(RunError, match="is not a bundle"):
        import_bundle(runner, tmp_path / "full")
    service.start_training(runner, "rm", "pairs", bundle=tmp_path / "b")
    with pytest.raises(RunError, match="has not run yet"):
        import_bundle(runner, tmp_path / "b")
    assert store.stats()["runs"] == 0


def test_runs_import_from_the_command_line_says_what_is_wrong(tmp_path):
    result = cli("runs", "import", tmp_path, workspace=tmp_path / "ws", check=False)
    assert result.returncode == 2 and "is not a bundle (bundle.json is missing)" in result.stderr


def made_bundle(runner, folder: Path) -> Path:
    service.start_training(runner, "rm", "pairs", bundle=folder, max_steps=1)
    return folder


def ran(folder: Path, *lines: bytes) -> Path:
    (folder / "events.jsonl").write_bytes(b"".join(lines)
                                          + b'{"status": "failed", "message": "ran out of memory", "step": 1}\n')
    return folder


def test_a_stranger_s_bundle_is_checked_whole_before_anything_is_copied(workspace, store, tmp_path):
    """The red-team's bundles: a link out of the bundle, an output outside the run, a changed kind,
    bad event lines, the same bundle twice. None leaves a half-imported run or a stuck workspace."""
    import_file(store, write_pairs(tmp_path / "pairs.jsonl.gz", n=8), "pairs")
    runner = Runner(store, workspace)
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key.txt").write_text("private")
    linked = ran(made_bundle(runner, tmp_path / "linked"))
    (linked / "model").symlink_to(secret)
    with pytest.raises(RunError, match="nothing was copied.*linked/model: a link"):
        import_bundle(runner, linked)
    escaping = ran(made_bundle(runner, tmp_path / "escaping"))
    config = json.loads((escaping / "config.json").read_text())
    (escaping / "config.json").write_text(json.dumps({**config, "output": "../../../elsewhere"}))
    with pytest.raises(RunError, match="'output' \\('../../../elsewhere'\\) is not a path inside the bundle"):
        import_bundle(runner, escaping)
    changed = ran(made_bundle(runner, tmp_path / "changed"))
    bundle = json.loads((changed / "bundle.json").read_text())
    (changed / "bundle.json").write_text(json.dumps({**bundle, "kind": "dpo"}))
    with pytest.raises(RunError, match="settings a dpo job does not have .* was the bundle's kind changed"):
        import_bundle(runner, changed)
    assert store.stats()["runs"] == 0 and not list(workspace.runs_dir.glob("*"))
    # Bad event lines are left out and named; the run still lands, failed as its last event says.
    messy = ran(made_bundle(runner, tmp_path / "messy"), b"[1, 2, 3]\n", b"\x00\x00\x00\n",
                b'{"status": "running", "step": 1, "metrics": "nope"}\n')
    run_id = import_bundle(runner, messy)
    run = runner.get(run_id)
    assert run["status"] == "failed" and "3 lines of its events.jsonl were no events" in run["message"]
    assert "events.jsonl:1: a JSON list" in run["message"]
    with pytest.raises(RunError, match=f"was imported already, as run {run_id}"):
        import_bundle(runner, messy)
    assert store.stats()["runs"] == 1


def test_a_run_whose_outputs_cannot_be_recorded_fails_and_the_workspace_still_opens(workspace, store, tmp_path):
    from store.runs import create_run, mark_running

    run_id, folder = create_run(store, "rm", {"output": "model"}, workspace.runs_dir, None)
    folder.mkdir(parents=True)
    (folder / "events.jsonl").write_text('{"status": "succeeded", "step": 1, "message": "done"}\n')
    mark_running(store, run_id, None)  # left "running" by a studio that stopped; its model folder is gone
    Runner(store, workspace).recover()
    run = Runner(store, workspace).get(run_id)
    assert run["status"] == "failed" and "its outputs could not be recorded" in run["message"]
    store.close()
    result = cli("runs", workspace=workspace.root, check=False)
    assert result.returncode == 0 and "failed" in result.stdout
