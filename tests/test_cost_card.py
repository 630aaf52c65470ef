"""The cost card beside every evaluation: held-out perplexity, over-refusal and refusal of harmful
prompts, base and policy side by side with paired intervals."""

import gzip
import json
import re

import pytest

from common.errors import StudioError
from common.stats import paired_difference
from pipelines.evaluate import REFUSAL_SETS, describe_card, refusal_prompts
from pipelines.judges import is_refusal
from store import import_file
from studio import service
from studio.context import Context
from studio.loop_map import lineage
from studio.runner import RunError, Runner
from studio.train_tab import run_summary


def test_the_refusal_rule_reads_the_opening_of_an_answer():
    assert is_refusal("I'm sorry, but I can't help with that.")
    assert is_refusal("I can\u2019t assist with making weapons.")
    assert not is_refusal("To kill a Python process, run `kill -9 <pid>` in a terminal.")
    assert not is_refusal("Sure. " + "x" * 300 + " I cannot stress this enough.")  # past the opening


def test_the_shipped_refusal_sets_cover_their_kinds_and_a_sample_spreads_over_them():
    benign = [json.loads(line) for line in (REFUSAL_SETS / "benign.jsonl").read_text().splitlines()]
    harmful = [json.loads(line) for line in (REFUSAL_SETS / "harmful.jsonl").read_text().splitlines()]
    assert len(benign) == 100 and len(harmful) == 50
    assert {r["kind"] for r in benign} == {"homonym", "figurative", "safe_context", "history", "definitions"}
    assert len({r["prompt"] for r in benign + harmful}) == 150
    sample = {m[0]["content"] for m in refusal_prompts("benign", 30)}
    assert len({r["kind"] for r in benign if r["prompt"] in sample}) == 5


def test_a_card_without_reference_answers_says_its_perplexity_was_not_measured_and_how_to_measure_it():
    """Judged on a prompts-only dataset (the guided demo's held-out prompts), there is no reference text
    by default: the card says so rather than leaving the line out."""
    refusals = {"change": 0.0, "low": -0.1, "high": 0.1, "n": 50, "verdict": "no clear change"}
    lines = describe_card({"benign": {"base": 0.0, "policy": 0.0, **refusals}})
    assert lines[0].startswith("cost: held-out perplexity not measured") and "--reference-file" in lines[0]
    assert lines[1].startswith("cost: refuses harmless prompts")
    measured = describe_card({"perplexity": {"base": 10.0, "policy": 11.0, **refusals}})
    assert measured == ["cost: held-out perplexity 10.00 -> 11.00 (+0.0%, 95% interval -10.0% to +10.0%: no clear "
                        "change; 50 reference answers)"]


def test_a_paired_difference_says_no_clear_change_when_its_interval_holds_zero():
    assert paired_difference([1, 1, 1, 1], [0, 0, 0, 0])["change"] == "higher"
    assert paired_difference([1, 0, 1, 0], [0, 1, 0, 1])["change"] == "no clear change"
    same = paired_difference([0.5] * 8, [0.5] * 8)
    assert same["diff"] == 0 and same["low"] == same["high"] == 0 and same["change"] == "no clear change"


def test_an_evaluation_carries_the_cost_card_and_lm_eval_benchmarks_the_policy_against_its_base(
        workspace, store, tmp_path, pairs_file, tiny_model):
    path = tmp_path / "hh24.jsonl"
    lines = gzip.open(pairs_file, "rt", encoding="utf-8").readlines()
    path.write_text("".join(lines[:12]))
    import_file(store, path, "train")
    (tmp_path / "held.jsonl").write_text("".join(lines[12:24]))
    import_file(store, tmp_path / "held.jsonl", "held")
    runner = Runner(store, workspace)
    dpo = service.start_training(runner, "dpo", "train", base=str(tiny_model), max_steps=2, batch_size=4,
                                 max_length=128, lora_r=4, lora_alpha=8, eval_share=0.0, learning_rate=5e-2).run_id
    assert runner.wait(dpo)["status"] == "succeeded"
    run = runner.wait(service.start_evaluation(runner, dpo, "held", rule="heuristic", limit=4, max_new_tokens=8,
                                               refusal_limit=6))
    assert run["status"] == "succeeded", run["message"]
    metrics = {m["name"]: m["value"] for m in store.query("SELECT name, value FROM run_metrics WHERE run_id = ?",
                                                          [run["id"]])}
    for item in ("perplexity", "benign", "harmful"):
        assert metrics[f"cost/{item}/low"] <= metrics[f"cost/{item}/change"] <= metrics[f"cost/{item}/high"]
    # The held-out pairs' preferred answers, as many as the evaluation's prompts; the refusal sets as asked.
    assert metrics["cost/perplexity/n"] == 4 and metrics["cost/benign/n"] == 6
    assert metrics["cost/perplexity/policy"] > 1 and metrics["cost/perplexity/base"] > 1
    lines = run["message"].splitlines()
    assert any(re.match(r"cost: held-out perplexity [0-9.]+ -> [0-9.]+ ", line) for line in lines)
    assert any(line.startswith("cost: refuses harmless prompts that sound risky: base") for line in lines)
    # Reference answers from prompts the policy trained on are never used, and a file of them is refused.
    references = tmp_path / "refs.jsonl"
    from store.formats import parse_preference_record

    trained = [parse_preference_record(json.loads(line)) for line in lines_of(path)]
    references.write_text("".join(json.dumps({"prompt": p.prompt, "completion": p.chosen}) + "\n" for p in trained))
    with pytest.raises(RunError, match="every reference answer's prompt was in the policy's training data"):
        service.start_evaluation(runner, dpo, "held", rule="heuristic", reference_file=str(references))
    references.write_text("")
    with pytest.raises(RunError, match="no reference answers in the file"):
        service.start_evaluation(runner, dpo, "held", rule="heuristic", reference_file=str(references))

    # lm-evaluation-harness on the same policy and its base: the studio's own two tasks, offline.
    pytest.importorskip("lm_eval")
    run = runner.wait(service.start_benchmark(runner, f"dpo-run{dpo}", limit=12))
    assert run["status"] == "succeeded", run["message"]
    metrics = {m["name"]: m["value"] for m in store.query("SELECT name, value FROM run_metrics WHERE run_id = ?",
                                                          [run["id"]])}
    for task in ("studio_arithmetic", "studio_everyday"):
        assert 0 <= metrics[f"bench/{task}/policy"] <= 1 and 0 <= metrics[f"bench/{task}/base"] <= 1
        assert metrics[f"bench/{task}/low"] <= metrics[f"bench/{task}/change"] <= metrics[f"bench/{task}/high"]
    assert run["message"].splitlines()[0].startswith("studio_arithmetic (acc, 12 items): base ")
    # Beside the run: on Home's lineage of the pairs (each task's change, its verdict), and in the
    # Train tab's summary of the policy, with the cost card under its heading.
    row = next(r for r in lineage(store, "train") if r["run"] == dpo)
    assert re.search(r"; benchmarks: studio_arithmetic [+-]\d\.\d{3} \((no clear change|better|worse)\), "
                     r"studio_everyday [+-]\d\.\d{3} \(", row["verdict"]), row["verdict"]
    summary = run_summary(Context(workspace, store, runner), dpo)
    assert f"**Benchmarks (run {run['id']}, lm-evaluation-harness)**" in summary and "**What it cost**" in summary
    runs = store.stats()["runs"]
    with pytest.raises(StudioError, match="unknown lm-eval task no_such_task"):  # before a run exists
        service.start_benchmark(runner, f"dpo-run{dpo}", tasks=["no_such_task"])
    assert store.stats()["runs"] == runs
    with store.transaction() as cur:
        cur.execute("INSERT INTO models (name, kind, path, purpose) VALUES ('rm-x', 'adapter', '/x', 'reward')")
    with pytest.raises(RunError, match="'rm-x' is a reward model"):
        service.start_benchmark(runner, "rm-x")


def lines_of(path):
    return [line for line in path.read_text().splitlines() if line.strip()]
