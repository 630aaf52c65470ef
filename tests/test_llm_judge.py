"""The local LLM judge (a GGUF chat model asked in both orders, verdicts from the labels'
probabilities) and the length-controlled win rate beside every verdict."""

from __future__ import annotations

import gzip
import json
import random

import pytest

from common.stats import length_controlled
from pipelines.llm_judge import LlamaJudge, judge_summary
from pipelines.models import default_gguf_path
from store import import_file
from studio import reports, service
from studio.cli import main as cli_main
from studio.runner import RunError, Runner


def test_a_judge_that_only_likes_short_answers_is_even_at_equal_length():
    rng = random.Random(0)
    differences = [rng.gauss(0, 30) for _ in range(200)]
    short_wins = [1.0 if d < 0 else 0.0 for d in differences]
    lc = length_controlled(short_wins, differences)
    assert sum(short_wins) / len(short_wins) == pytest.approx(0.5, abs=0.1)
    assert lc["lc_low"] < 0.5 < lc["lc_high"] and lc["lc_slope_per_token"] < 0
    # A judge that prefers the policy whatever the lengths keeps its win at equal length.
    better = [1.0 if rng.random() < 0.75 else 0.0 for _ in differences]
    lc = length_controlled(better, differences)
    assert lc["lc_verdict"] == "better" and lc["lc_win_rate"] == pytest.approx(0.75, abs=0.07)


def test_orders_that_disagree_are_ties_and_no_verdict_is_counted_apart():
    results = [{"verdict": "first", "orders_disagree": False}, {"verdict": "tie", "orders_disagree": True},
               {"verdict": "second", "orders_disagree": False}, {"verdict": None, "orders_disagree": None}]
    summary = judge_summary(results)
    assert (summary["n"], summary["win_rate"], summary["no_verdict"]) == (3, 0.5, 1)
    assert summary["position_bias"] == pytest.approx(1 / 3)


@pytest.mark.default_model
def test_the_default_model_as_judge_reads_the_labels_probabilities_in_both_orders():
    judge = LlamaJudge(default_gguf_path())
    try:
        p_first = judge.prefers_a("What is the capital of France?", "Paris.", "I like turtles.")
        p_swapped = judge.prefers_a("What is the capital of France?", "I like turtles.", "Paris.")
        result = judge.compare([{"role": "user", "content": "What is the capital of France?"}], "Paris.",
                               "I like turtles.")
    finally:
        judge.close()
    assert 0 <= p_first <= 1 and 0 <= p_swapped <= 1
    # A 135M model mostly says "A" whatever comes first: its orders disagree, and that is a tie.
    assert result["orders_disagree"] == ((p_first > 0.5) != (p_swapped < 0.5))
    assert result["verdict"] == ("tie" if result["orders_disagree"] else "first" if p_first > 0.5 else "second")


def test_a_bad_judge_file_and_a_guideline_without_its_placeholders_are_refused_before_a_run(workspace, store,
                                                                                          tmp_path):
    with store.transaction() as cur:
        cur.execute("INSERT INTO runs (kind, status, config) VALUES ('dpo', 'succeeded', '{}')")
        run_id = cur.execute("SELECT max(id) FROM runs").fetchone()[0]
        cur.execute("INSERT INTO models (name, kind, path, purpose, run_id) VALUES ('dpo-x', 'adapter', '/x', "
                    "'policy', ?)", [run_id])
    runner = Runner(store, workspace)
    not_gguf = tmp_path / "judge.txt"
    not_gguf.write_text("hello")
    with pytest.raises(RunError, match="no GGUF model of that name and no .gguf file there"):
        service.start_evaluation(runner, run_id, "p", llm_judge=str(not_gguf))
    with pytest.raises(RunError, match=r"lacks \{answer_b\}"):
        service.start_evaluation(runner, run_id, "p", llm_judge="default", judge_guideline="{prompt} {answer_a}")
    assert store.scalar("SELECT count(*) FROM runs") == 1


@pytest.mark.default_model
def test_evaluate_with_an_llm_judge_reports_its_win_rate_position_bias_and_length_controlled_rates(
        tmp_path, workspace, store, pairs_file, tiny_model, capsys):
    path = tmp_path / "hh20.jsonl"
    path.write_text("".join(gzip.open(pairs_file, "rt", encoding="utf-8").readlines()[:20]))
    import_file(store, path, "hh20")
    runner = Runner(store, workspace)
    run_id = service.start_training(runner, "dpo", "hh20", base=str(tiny_model), max_steps=2, batch_size=2,
                                 max_length=128, lora_r=4, lora_alpha=8).run_id
    assert runner.wait(run_id)["status"] == "succeeded"
    store.close()
    code = cli_main(["evaluate", "--policy-run", str(run_id), "--prompts", "hh20", "--llm-judge", "default",
                     "--rule", "heuristic", "--limit", "4", "--max-new-tokens", "8", "--workspace",
                     str(workspace.root), "--models-dir", str(workspace.models_dir)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "LLM judge (SmolLM2-135M-Instruct.Q4_1.gguf): " in out and "position bias" in out
    assert "at equal length" in out
    with workspace.open_store() as store:
        evaluation = store.scalar("SELECT max(id) FROM runs WHERE kind = 'evaluate'")
        metrics = {r["name"]: r["value"] for r in store.query(
            "SELECT name, value FROM run_metrics WHERE run_id = ?", [evaluation])}
    assert 0 <= metrics["llm/position_bias"] <= 1 and metrics["llm/n"] + metrics["llm/no_verdict"] == 4
    assert 0 <= metrics["rule/lc_win_rate"] <= 1 and metrics["rule/lc_low"] <= metrics["rule/lc_high"]
    json.dumps(metrics)


def labelled_pairs(tmp_path, store):
    """Six pairs: a helpful answer against a curt one (the file's verdict: the helpful one)."""
    path = tmp_path / "pairs.jsonl"
    rows = [
        {
            "prompt": f"How do I keep {t} fresh?",
            "chosen": f"Keep {t} in a cool, dry place and use it within a week.",
            "rejected": "Dunno.",
        }
        for t in ("bread", "coffee", "herbs", "cheese", "apples", "tea")
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    import_file(store, path, "pairs")


def test_a_judge_report_without_peoples_labels_says_there_is_nothing_to_compare(tmp_path, store, workspace):
    labelled_pairs(tmp_path, store)
    with store.transaction() as cur:  # the file's verdicts taken away: nobody has judged these pairs
        cur.execute("UPDATE pairs SET source_verdict = NULL")
    lines = reports.judge_report(Runner(store, workspace), "pairs", rule="heuristic")
    assert lines == ["dataset 'pairs' has no pair with a person's label (nor verdicts from its file): there is "
                     "nothing to compare a judge against; label some pairs in the Label tab first"]


def test_the_same_report_card_for_a_rule_and_an_llm_judge_that_never_answers(tmp_path, store, workspace,
                                                                             monkeypatch):
    labelled_pairs(tmp_path, store)
    monkeypatch.setattr(LlamaJudge, "prefers_a", lambda self, *a: None)  # a judge that answers neither A nor B
    lines = reports.judge_report(Runner(store, workspace), "pairs", rule="heuristic", llm_judge="default")
    assert lines[0] == "6 pairs of 'pairs' with people's labels"
    # The heuristic prefers the shorter answer: it disagrees with the file on every pair, kappa undefined or low.
    rule_line = next(line for line in lines if line.startswith("rule 'heuristic' agrees with the file's own verdicts"))
    assert "on 0% of 6 pairs" in rule_line
    assert any(line.startswith("rule 'heuristic' picks the longer answer in 0% of 6 pairs") for line in lines)
    assert "LLM judge SmolLM2-135M-Instruct.Q4_1.gguf: nothing to compare against" in " ".join(lines)


@pytest.mark.default_model
def test_labelling_with_the_judge_writes_ai_labels_that_people_outrank(tmp_path, store, workspace):
    from store.exports import preference_records
    from store.labelling import add_rule_labels, judge_disagreements

    labelled_pairs(tmp_path, store)
    pair_ids = [r["id"] for r in store.query("SELECT id FROM pairs ORDER BY id")]
    add_rule_labels(store, "alice", [(pair_ids[0], "second")])  # a person's label, against the file
    before = preference_records(store, "pairs")[0]
    runner = Runner(store, workspace)
    run = runner.wait(service.start_judge_labels(runner, "pairs", "default", limit=4))
    assert run["status"] == "succeeded", run["message"]
    labels = store.query("SELECT pair_id, annotator, verdict FROM labels ORDER BY id")
    judge = "judge:SmolLM2-135M-Instruct.Q4_1.gguf"
    assert {r["annotator"] for r in labels} <= {"alice", judge}
    assert [r for r in labels if r["annotator"] == "alice"] == [{"pair_id": pair_ids[0], "annotator": "alice",
                                                                 "verdict": "second"}]
    assert len([r for r in labels if r["annotator"] == judge]) <= 4
    # Training reads what people said: the judge's labels change no preference of these pairs.
    assert preference_records(store, "pairs")[0] == before
    # Its disagreements with people (or the file) are listed, most contested first.
    for row in judge_disagreements(store, "pairs"):
        assert row["judge"] == judge and row["judge_verdict"] in ("first", "second")
    # Labelling again replaces the judge's labels, it does not add to them.
    assert runner.wait(service.start_judge_labels(runner, "pairs", "default", limit=4))["status"] == "succeeded"
    assert store.scalar("SELECT count(*) FROM labels WHERE annotator = ?", [judge]) <= 4


def test_an_export_takes_or_leaves_ai_labels_and_says_whose_verdicts_it_wrote(tmp_path, store):
    from store import export_pairs
    from store.labelling import add_rule_labels

    labelled_pairs(tmp_path, store)  # six pairs that came with the file's verdicts
    ids = [r["id"] for r in store.query("SELECT id FROM pairs ORDER BY id")]
    with store.transaction() as cur:  # two pairs nobody judged: their file gave no verdict
        cur.execute("UPDATE pairs SET source_verdict = NULL WHERE id IN (?, ?)", ids[:2])
    add_rule_labels(store, "alice", [(ids[0], "first")])
    add_rule_labels(store, "judge:j.gguf", [(ids[0], "second"), (ids[1], "first"), (ids[2], "second")])
    everything = export_pairs(store, tmp_path / "all.jsonl", "pairs")
    assert (everything.pairs, everything.decided_by) == (6, {"people": 1, "judge": 1, "file": 4})
    assert "(4 from the file's verdicts, 1 from AI labels, 1 from people's labels)" in everything.summary()
    people = export_pairs(store, tmp_path / "people.jsonl", "pairs", annotators="people")
    assert (people.pairs, people.left_out) == (5, {"AI labels only": 1})
    # The judge's "second" on a pair whose file said "first" changes nothing: the file outranks it.
    chosen = {json.loads(line)["prompt"][0]["content"]: json.loads(line)["chosen"][0]["content"]
              for line in (tmp_path / "all.jsonl").read_text().splitlines()}
    assert len(chosen) == 6 and "Dunno." not in chosen.values()


def test_a_reward_model_gets_the_same_report_card_on_the_labelled_pairs_it_was_not_trained_on(
        tmp_path, store, workspace, tiny_model):
    labelled_pairs(tmp_path, store)
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({"prompt": f"What is {i} times two?", "chosen": f"It is {2 * i}.",
                                         "rejected": "Ask someone else."}) + "\n" for i in range(6)))
    import_file(store, other, "other")
    runner = Runner(store, workspace)
    run_id = service.start_training(runner, "rm", "other", base=str(tiny_model), max_steps=1, batch_size=2,
                                 max_length=64, lora_r=2, lora_alpha=4, eval_share=0.0).run_id
    assert runner.wait(run_id)["status"] == "succeeded"
    lines = reports.judge_report(runner, "pairs", reward_run=run_id)
    assert lines[0] == "6 pairs of 'pairs' with people's labels"
    assert lines[1].startswith(f"reward model of run {run_id} agrees with the file's own verdicts on ")
    assert "kappa" in lines[1]  # undefined here: the file gives one verdict only (always the first side)
    # On the pairs it was trained on it is no judge: they are left out.
    lines = reports.judge_report(runner, "other", reward_run=run_id)
    assert lines[1] == (f"reward model of run {run_id}: every labelled pair's prompt was in its training data; "
                        "judge it on other pairs")


def test_a_judges_prompt_too_long_for_its_context_is_refused_before_a_run():
    from pipelines.llm_judge import MAX_GUIDELINE_CHARS
    from studio.judging import checked_guideline
    from studio.runner import RunError

    huge = "{prompt} {answer_a} {answer_b} " + "Be fair. " * 120_000  # the red-team's 1 MB guideline
    with pytest.raises(RunError, match="at most 8,000 fit the judge's context"):
        checked_guideline(huge)
    fits = "{prompt} {answer_a} {answer_b} " + "x" * (MAX_GUIDELINE_CHARS - 40)
    assert checked_guideline(fits) == fits
