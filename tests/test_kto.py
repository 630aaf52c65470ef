"""KTO, the method added through the methods table alone: it reads each answer's own verdict,
including both-bad labels that DPO cannot use, and trains through the same runner, CLI and store."""

import pyarrow.parquet as pq

from store import import_file
from store.labelling import add_rule_labels
from studio import service
from studio.methods import METHODS
from studio.runner import Runner

from helpers import arithmetic_pairs


def test_kto_trains_on_verdicts_and_counts_both_bad_answers_as_undesirable(workspace, store, tmp_path, tiny_model):
    import_file(store, arithmetic_pairs(tmp_path), "pairs")
    both_bad = store.query("SELECT pair_id FROM dataset_pairs ORDER BY pair_id LIMIT 1")[0]["pair_id"]
    add_rule_labels(store, "alice", [(both_bad, "both-bad")])
    runner = Runner(store, workspace)
    run_id = service.start_training(runner, "kto", "pairs", base=str(tiny_model), max_steps=2, batch_size=4,
                                 max_length=128, lora_r=4, lora_alpha=8, eval_share=0.25).run_id
    run = runner.wait(run_id)
    assert run["status"] == "succeeded", run["message"]
    assert run["message"].startswith("KTO trained (2 steps); eval reward margin")

    inputs = pq.read_table(f"{run['folder']}/inputs.parquet").to_pylist()
    assert len(inputs) == 24  # both sides of every pair
    assert [r["label"] for r in inputs if r["pair_id"] == both_bad] == [False, False]
    assert sum(r["label"] for r in inputs) == 11
    assert store.query("SELECT name, purpose FROM models") == [{"name": f"kto-run{run_id}", "purpose": "policy"}]
    logged = {r["name"] for r in store.query("SELECT DISTINCT name FROM run_metrics WHERE run_id = ?", [run_id])}
    assert {"loss", "kl", "rewards/chosen", "rewards/rejected", "eval_rewards/margins"} <= logged
    assert set(METHODS["kto"].plotted) <= logged
