"""Rounds: the policy answers, a reward model picks best against worst, a new policy trains from the
previous one (its reference), and each round is judged against the one before it."""

import json

import pytest

from store import import_file
from store.labelling import queue
from store.rounds import RoundError, best_against_worst
from studio import service
from studio.rounds import RoundSettings, keep_by_judge, run_rounds
from studio.runner import RunError, Runner

from helpers import arithmetic_pairs


def prompts_file(path, words):
    path.write_text("".join(json.dumps({"prompt": f"Say something about {w}."}) + "\n" for w in words))
    return path


@pytest.fixture
def loop(workspace, store, tmp_path, tiny_model):
    """Pairs for a reward model, prompts to answer in rounds, held-out prompts to judge on."""
    import_file(store, arithmetic_pairs(tmp_path, n=8), "sums")
    import_file(store, prompts_file(tmp_path / "asks.jsonl", ["tea", "rain", "maps", "bees"]), "asks")
    import_file(store, prompts_file(tmp_path / "held.jsonl", ["glass", "bread"]), "held")
    runner = Runner(store, workspace)
    rm = service.start_training(runner, "rm", "sums", base=str(tiny_model), max_steps=1, batch_size=4,
                                max_length=128, lora_r=4, lora_alpha=8, eval_share=0.0).run_id
    assert runner.wait(rm)["status"] == "succeeded"
    return runner, f"rm-run{rm}"


SMALL = dict(n=2, max_new_tokens=8, max_steps=1, eval_limit=2, max_length=128, engine="transformers")
TRAIN = {"lora_r": 4, "lora_alpha": 8, "batch_size": 2}


def test_two_rounds_of_iterative_dpo_each_train_from_the_previous_policy_and_resume_without_rerunning(
        loop, tiny_model):
    runner, reward_model = loop
    said = []
    results = run_rounds(runner, "asks", reward_model, "held", policy=str(tiny_model), rule="heuristic",
                         settings=RoundSettings(rounds=2, **SMALL), train_settings=TRAIN, say=said.append)
    assert [r.round for r in results] == [1, 2]
    store = runner.store
    first, second = results
    # Round 2 answered with round 1's policy and trained from it: its base (and DPO's reference) is that policy.
    first_policy = store.scalar("SELECT path FROM models WHERE run_id = ?", [first.train_run])
    assert json.loads(runner.get(second.train_run)["config"])["base"] == first_policy
    assert second.policy_from == first.policy == f"dpo-run{first.train_run}"
    for r in results:
        recipe = json.loads(store.query("SELECT recipe FROM datasets WHERE name = ?", [r.pairs_dataset])[0]["recipe"])
        assert (recipe["round"], recipe["policy"], recipe["reward_model"]) == (r.round, r.policy_from, reward_model)
        assert r.pairs == 4 and runner.get(r.train_run)["dataset"] == r.pairs_dataset
        assert set(r.judge) == {"win_rate", "win_low", "win_high"} and set(r.proxy) == set(r.judge)
    # Each pair's verdict is the reward model's: the first side scored higher.
    rows = store.query("""SELECT a.reward AS first, b.reward AS second FROM dataset_pairs dp
                          JOIN pairs p ON p.id = dp.pair_id JOIN datasets d ON d.id = dp.dataset_id AND d.name = ?
                          JOIN rewards a ON a.response_id = p.first_id JOIN rewards b ON b.response_id = p.second_id""",
                       [first.pairs_dataset])
    assert len(rows) == 4 and all(r["first"] > r["second"] for r in rows)
    assert any(line.startswith("kept: ") for line in said)
    # Run again: every round's pairs, training and evaluation exist, so nothing new runs.
    runs = store.stats()["runs"]
    again = run_rounds(runner, "asks", reward_model, "held", policy=str(tiny_model), rule="heuristic",
                       settings=RoundSettings(rounds=2, **SMALL), train_settings=TRAIN, say=said.append)
    assert [(r.train_run, r.eval_run) for r in again] == [(r.train_run, r.eval_run) for r in results]
    assert store.stats()["runs"] == runs


def test_rejection_sampling_fine_tunes_on_each_prompts_best_answer(loop, tiny_model):
    runner, reward_model = loop
    (result,) = run_rounds(runner, "asks", reward_model, "held", policy=str(tiny_model), rule="heuristic",
                           settings=RoundSettings(mode="sft", **SMALL), train_settings=TRAIN, say=lambda _: None)
    run = runner.get(result.train_run)
    assert run["kind"] == "sft" and result.pairs_dataset == "asks-sft-round1"
    import pyarrow.parquet as pq

    trained = pq.read_table(f"{run['folder']}/inputs.parquet").to_pylist()
    best = {r["first_id"] for r in runner.store.query(
        "SELECT first_id FROM pairs WHERE id IN (SELECT pair_id FROM dataset_pairs dp JOIN datasets d "
        "ON d.id = dp.dataset_id WHERE d.name = 'asks-sft-round1')")}
    texts = {r["messages"] for r in runner.store.query(
        "SELECT messages::VARCHAR AS messages FROM responses WHERE id IN (SELECT unnest(?))", [list(best)])}
    assert {json.dumps(json.loads(r["chosen"]), separators=(",", ":")) for r in trained} == \
        {json.dumps(json.loads(t), separators=(",", ":")) for t in texts}


def test_a_round_that_cannot_start_is_refused_in_a_sentence_before_any_run(loop, tiny_model):
    runner, reward_model = loop
    runs = runner.store.stats()["runs"]
    for bad, match in ((dict(n=0), "n must be 2 to 64"), (dict(n=1000), "n must be 2 to 64"),
                       (dict(rounds=0), "rounds must be 1 to 20")):
        with pytest.raises(ValueError, match=match):
            RoundSettings(**bad)
    with pytest.raises(RunError, match="no dataset named 'nowhere'"):
        run_rounds(runner, "nowhere", reward_model, "held", rule="heuristic")
    with pytest.raises(RunError, match="'dpo-run1' is not a reward model"):
        run_rounds(runner, "asks", "dpo-run1", "held", rule="heuristic")
    with pytest.raises(RunError, match="judged by an independent judge"):
        run_rounds(runner, "asks", reward_model, "held")
    assert runner.store.stats()["runs"] == runs


def test_pairs_need_a_best_that_beats_the_worst_by_the_margin(loop):
    runner, reward_model = loop
    with pytest.raises(RoundError, match="no pair can be made from 'asks'"):
        best_against_worst(runner.store, "asks", "nobody", reward_model, "x")
    assert runner.store.dataset_id("x") is None


def test_the_kept_policy_is_the_last_round_the_judge_did_not_call_worse():
    from studio.rounds import RoundResult

    def judged(k, high):
        return RoundResult(k, "p", "d", 4, k, f"dpo-run{k}", 0, {"win_rate": 0.4, "win_low": 0.1, "win_high": high})

    assert keep_by_judge([judged(1, 0.9), judged(2, 0.45), judged(3, 0.9)], "base") == "dpo-run1"
    assert keep_by_judge([judged(1, 0.3)], "base") == "base"


def test_best_of_n_counts_the_proxys_pick_against_one_answer_by_proxy_and_judge():
    from pipelines.best_of_n import curves, ns_up_to

    assert ns_up_to(16) == [1, 2, 4, 8, 16] and ns_up_to(6) == [1, 2, 4, 6]
    # Two prompts, answers 0..4: the proxy prefers later samples; the judge agrees on the first
    # prompt only: the proxy's win rate climbs to 100%, the judge's stays at a half.
    rows = [{"prompt_id": p, "sample": i, "proxy": float(i), "judge": float(i if p == "a" else -i)}
            for p in ("a", "b") for i in range(5)]
    drawn = {point["n"]: point for point in curves(rows, [1, 2, 4])}
    assert drawn[4]["proxy"]["win_rate"] == 1.0 and drawn[4]["judge"]["win_rate"] == 0.5
    assert drawn[4]["proxy"]["n"] == 2
    # Judged by a rule instead (the guided demo's gold standard): the heuristic on the pick's and the one
    # answer's text and ending. The proxy picks the longest; it ends only at odd samples.
    rows = [{"prompt_id": "a", "sample": i, "proxy": float(i), "text": "word " * (i + 1),
             "finish": "stop" if i % 2 else "length"} for i in range(5)]
    drawn = {point["n"]: point["judge"]["win_rate"] for point in curves(rows, [1, 2, 4], rule="heuristic")}
    assert drawn == {1: 1.0, 2: 0.0, 4: 0.0}  # ended beats cut; then fewer repeated words win


def test_best_of_n_from_the_cli_draws_both_curves_as_a_runs_metrics(workspace, store, tmp_path, tiny_model, capsys):
    from studio.cli import main as cli_main

    import_file(store, arithmetic_pairs(tmp_path, n=8), "sums")
    import_file(store, prompts_file(tmp_path / "held.jsonl", ["glass", "bread", "tea"]), "held")
    runner = Runner(store, workspace)
    proxy, judge = service.start_training(runner, "rm", "sums", judge_split=True, base=str(tiny_model), max_steps=1,
                                          batch_size=2, max_length=128, lora_r=4, lora_alpha=8,
                                          eval_share=0.0).run_ids
    assert runner.wait(proxy)["status"] == runner.wait(judge)["status"] == "succeeded"
    store.close()
    # --limit holds here as in any evaluation: 2 of the 3 prompts answered N + 1 times (it was ignored)
    code = cli_main(["evaluate", "--best-of", "4", "--model", str(tiny_model), "--prompts", "held", "--limit", "2",
                     "--proxy-model", f"rm-run{proxy}", "--judge-run", str(judge), "--max-new-tokens", "6",
                     "--workspace", str(workspace.root), "--models-dir", str(workspace.models_dir)])
    out = capsys.readouterr().out
    assert code == 0, out
    table = out[out.index("  N  "):].splitlines()
    assert [line.split()[0] for line in table[1:]] == ["1", "2", "4"]
    with workspace.open_store() as again:
        run = again.query("SELECT id FROM runs WHERE kind = 'best-of-n'")[0]["id"]
        steps = again.query("SELECT step, value FROM run_metrics WHERE run_id = ? AND name = 'judge/win_rate' "
                            "ORDER BY step", [run])
    assert [s["step"] for s in steps] == [1, 2, 4] and all(0 <= s["value"] <= 1 for s in steps)
    # A rule judges instead of a reward model (test_best_of_n_counts... counts it): what it reads of each
    # answer, its text and how it ended, comes with the proxy's reward; both judges together are refused.
    from store.rounds import scored_samples
    from studio.rounds import BEST_OF_SEED

    with workspace.open_store() as again:
        rows = scored_samples(again, "held", str(tiny_model), BEST_OF_SEED, f"rm-run{proxy}", None)
    assert len(rows) == 10 and all(r["text"] is not None and r["finish"] in ("stop", "length") and r["judge"] is None
                                   for r in rows)
    code = cli_main(["evaluate", "--best-of", "2", "--model", str(tiny_model), "--prompts", "held",
                     "--proxy-model", f"rm-run{proxy}", "--rule", "heuristic", "--judge-run", str(judge),
                     "--workspace", str(workspace.root), "--models-dir", str(workspace.models_dir)])
    assert code == 2 and "not both" in capsys.readouterr().err


def test_a_reward_model_ensemble_trains_as_one_job_and_scores_mean_spread_and_a_conservative_score(
        workspace, store, tmp_path, tiny_model):
    """K members on bootstrap samples with their own seeds; loaded as one base with K adapters; the
    report card is the mean's; what the studio optimises against is mean minus lambda times spread."""
    from pipelines.models import Placement
    from pipelines.reward_model import RewardEnsemble, load_reward_model, score

    import_file(store, arithmetic_pairs(tmp_path, n=12), "sums")
    import_file(store, prompts_file(tmp_path / "asks.jsonl", ["tea", "rain"]), "asks")
    runner = Runner(store, workspace)
    run_id = service.start_training(runner, "rm", "sums", base=str(tiny_model), max_steps=2, batch_size=4,
                                    max_length=128, lora_r=4, lora_alpha=8, eval_share=0.25, ensemble=3,
                                    ensemble_lambda=0.5).run_id
    run = runner.wait(run_id)
    assert run["status"] == "succeeded", run["message"]
    assert run["message"].startswith("an ensemble of 3 reward models (accuracy of their mean)")
    path = store.scalar("SELECT path FROM models WHERE run_id = ?", [run_id])
    tokenizer, ensemble = load_reward_model(path, Placement("cpu", "float32"))
    assert isinstance(ensemble, RewardEnsemble) and len(ensemble.names) == 3
    conversations = [[{"role": "user", "content": "2 plus 2?"}, {"role": "assistant", "content": a}]
                     for a in ("4.", "I would rather not.")]
    each = ensemble.each(tokenizer, conversations, 8, 128)
    assert len({tuple(v) for v in each}) == 3  # three different members
    means, spreads, conservative = ensemble.combine(each)
    assert score(tokenizer, ensemble, conversations) == pytest.approx(conservative)
    assert conservative == pytest.approx([m - 0.5 * s for m, s in zip(means, spreads)])
    # Scoring a dataset with it stores the conservative score and the members' spread, and the label
    # queue's uncertain order puts first the pairs whose gap is smallest in units of that spread.
    name = store.scalar("SELECT name FROM models WHERE run_id = ?", [run_id])
    scoring = runner.wait(service.start_reward_scoring(runner, "sums", name))
    assert scoring["status"] == "succeeded", scoring["message"]
    stored = store.query("SELECT reward, spread FROM rewards WHERE model = ?", [name])
    assert len(stored) == 24 and all(r["spread"] is not None and r["spread"] >= 0 for r in stored)
    gaps = {r["pair_id"]: abs(r["ra"] - r["rb"]) / ((r["sa"] ** 2 + r["sb"] ** 2) ** 0.5 or 1) for r in store.query(
        """SELECT p.id AS pair_id, a.reward AS ra, b.reward AS rb, a.spread AS sa, b.spread AS sb FROM pairs p
           JOIN rewards a ON a.response_id = p.first_id AND a.model = $m
           JOIN rewards b ON b.response_id = p.second_id AND b.model = $m""", {"m": name})}
    served = [r["pair_id"] for r in queue(store, "sums", "ann", "uncertain", name, limit=12)]
    assert served == sorted(gaps, key=lambda p: (gaps[p], p))
    # GRPO takes the ensemble as its reward (a function of TRL's, for what is not one model; PPO and the
    # rest score through `score`, as above).
    grpo = service.start_training(runner, "grpo", prompts="asks", reward_run=run_id, base=str(tiny_model),
                                  max_steps=1, batch_size=2, num_generations=2, max_new_tokens=6, max_length=128,
                                  lora_r=4, lora_alpha=8, watch_prompts=0).run_id
    run = runner.wait(grpo)
    assert run["status"] == "succeeded", run["message"]
    with pytest.raises(RunError, match="ensemble must be 1 to 16 members"):
        service.start_training(runner, "rm", "sums", base=str(tiny_model), ensemble=40)
