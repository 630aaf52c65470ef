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
from studio.runner import Runner

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
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(ROOT), NUM_PROCESSES="2")
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
