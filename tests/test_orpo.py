"""ORPO, added through the methods table alone (its pipeline module and one entry): it trains as
a job on pairs, through the same runner, CLI and store as every method."""

from store import import_file
from studio import service
from studio.methods import METHODS
from studio.runner import Runner

from helpers import arithmetic_pairs


def test_orpo_trains_on_pairs_as_a_job_and_makes_a_policy(workspace, store, tmp_path, tiny_model):
    import_file(store, arithmetic_pairs(tmp_path), "pairs")
    runner = Runner(store, workspace)
    run_id = service.start_training(runner, "orpo", "pairs", base=str(tiny_model), max_steps=2, batch_size=4,
                                 max_length=128, lora_r=4, lora_alpha=8, eval_share=0.25).run_id
    run = runner.wait(run_id)
    assert run["status"] == "succeeded", run["message"]
    assert run["message"].startswith("ORPO trained (2 steps); eval reward margin")
    assert store.query("SELECT name, purpose FROM models") == [{"name": f"orpo-run{run_id}", "purpose": "policy"}]
    logged = {r["name"] for r in store.query("SELECT DISTINCT name FROM run_metrics WHERE run_id = ?", [run_id])}
    assert set(METHODS["orpo"].plotted) <= logged
    # The memory plan reads its shape from the table: both sides of a pair in every batch.
    assert METHODS["orpo"].shape.sequences == 2
