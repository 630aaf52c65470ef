"""The guided demo: every stage of the loop runs and reports its figures; without --auto it waits
for labels and goes on from them."""

import json

from pipelines.judges import heuristic_verdict
from studio.cli import main as cli_main


def test_the_heuristic_labeller_follows_its_stated_rule():
    ended, cut = {"text": "Paris is the capital.", "finish": "stop"}, {"text": "Paris is", "finish": "length"}
    assert heuristic_verdict(ended, cut) == "first" and heuristic_verdict(cut, ended) == "second"
    rambling = {"text": "yes yes yes yes yes no", "finish": "stop"}
    assert heuristic_verdict(rambling, ended) == "second"  # fewer repeated words wins
    longer = {"text": "Paris is the capital of France.", "finish": "stop"}
    assert heuristic_verdict(longer, ended) == "second"   # then the shorter one
    assert heuristic_verdict(ended, dict(ended)) == "tie"


def demo(workspace, tiny_model, *extra):
    return cli_main(["demo", "--base", str(tiny_model), "--prompts", "4", "--heldout", "2", "--max-new-tokens", "12",
                     "--rm-steps", "2", "--dpo-steps", "2", "--batch-size", "2", "--eval-prompts", "2",
                     "--compare-prompts", "2", "--workspace", str(workspace.root),
                     "--models-dir", str(workspace.models_dir), *extra])


def test_the_demo_waits_for_labels_then_runs_every_stage_to_a_compared_gguf(workspace, tiny_model, capsys):
    assert demo(workspace, tiny_model) == 0
    out = capsys.readouterr().out
    assert "Label the pairs of 'demo-pairs' in the Label tab" in out
    with workspace.open_store() as store:
        pairs = store.scalar(
            "SELECT count(*) FROM dataset_pairs WHERE dataset_id = ?", [store.dataset_id("demo-pairs")]
        )
        assert pairs == 12  # 4 prompts, 3 of 4 candidates kept each, 3 pairs among them
        assert store.scalar("SELECT count(*) FROM labels") == 0

    assert demo(workspace, tiny_model, "--auto") == 0
    out = capsys.readouterr().out
    report = json.loads((workspace.root / "demo-report.json").read_text())
    names = [s["name"] for s in report["stages"]]
    assert names == [
        "prompts",
        "labels",
        "reward model",
        "dpo",
        "evaluate",
        "export",
        "compare",
    ]  # data stages done before
    figures = {s["name"]: s["figures"] for s in report["stages"]}
    assert sum(figures["labels"].values()) == 12
    assert 0 <= figures["reward model"]["eval_accuracy"] <= 1 and 0 <= figures["evaluate"]["win_rate"] <= 1
    evaluation = next(s["summary"] for s in report["stages"] if s["name"] == "evaluate")
    assert "\n" not in evaluation and "; KL from the base" in evaluation  # one line in the Home tab's list
    # The rule judges; the reward model of the same pairs is shown beside it as their proxy.
    assert evaluation.startswith("run ") and "rule 'heuristic': policy wins" in evaluation
    assert "; proxy: a reward model trained on this policy's own pairs" in evaluation
    assert 0 <= figures["evaluate"]["proxy_win_low"] <= figures["evaluate"]["proxy_win_rate"] <= 1
    assert figures["export"]["mb"] > 0 and figures["compare"]["tokens_per_s_policy"] > 0
    assert "The demo took" in out and "Compare tab" in out
    with workspace.open_store() as store:
        assert store.query("SELECT kind, status FROM runs WHERE status <> 'succeeded'") == []
        assert store.scalar("SELECT count(*) FROM models WHERE kind = 'gguf'") == 1
        assert store.scalar("SELECT count(*) FROM labels WHERE annotator = 'heuristic'") == 12
