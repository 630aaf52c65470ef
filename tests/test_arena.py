"""Comparing two models: arena votes become labelled pairs, the leaderboard rates the models, and a
batch comparison stores both models' answers as pairs ready for labelling."""

import json
import math

import pytest

from common.stats import bradley_terry, bradley_terry_intervals, paired_sign_test, wilson_interval, win_summary
from pipelines.models import default_gguf_path
from store import import_file
from store.arena import ELO_K, ELO_START, ArenaError, leaderboard, record_vote, reward_win_rate
from store.exports import preference_records
from studio import reports, service
from studio.runner import RunError, Runner
from studio.workspace import ASSETS

PROMPT = [{"role": "user", "content": "Say hi"}]


def answer(text):
    return [{"role": "assistant", "content": text}]


def test_a_vote_is_a_labelled_pair_with_both_models_that_training_can_use(store):
    pair_id = record_vote(store, PROMPT, ("model-a", answer("Hi!")), ("model-b", answer("Go away.")), "left", "ann")
    pair = store.query("SELECT * FROM pairs WHERE id = ?", [pair_id])[0]
    assert (pair["first_model"], pair["second_model"], pair["source"]) == ("model-a", "model-b", "arena")
    assert store.query("SELECT annotator, verdict FROM labels") == [{"annotator": "ann", "verdict": "first"}]
    records, _ = preference_records(store, "arena")
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in records] == [("Hi!", "Go away.")]
    # Two models can write the same text: there is nothing to vote on, and nothing is stored (such a
    # pair would export as chosen == rejected, which no import takes back).
    before = store.stats()
    with pytest.raises(ArenaError, match="the two answers are the same"):
        record_vote(store, PROMPT, ("model-b", answer("Hi!")), ("model-a", answer("Hi!")), "tie", "ann")
    assert store.stats() == before


def test_the_leaderboard_counts_votes_and_rates_them_with_elo(store):
    record_vote(store, PROMPT, ("a", answer("1")), ("b", answer("2")), "left", "x")
    record_vote(store, PROMPT, ("b", answer("3")), ("a", answer("4")), "right", "x")
    record_vote(store, PROMPT, ("a", answer("5")), ("c", answer("6")), "both-bad", "x")
    board = {r["model"]: r for r in leaderboard(store)}
    assert (board["a"]["wins"], board["a"]["losses"], board["a"]["both_bad"], board["a"]["battles"]) == (2, 0, 1, 3)
    assert (board["b"]["wins"], board["b"]["losses"]) == (0, 2)
    # Elo by hand: a beats b twice, then draws with c.
    a = b = c = ELO_START
    for _ in range(2):
        gain = ELO_K * (1 - 1 / (1 + 10 ** ((b - a) / 400)))
        a, b = a + gain, b - gain
    gain = ELO_K * (0.5 - 1 / (1 + 10 ** ((c - a) / 400)))
    a, c = a + gain, c - gain
    assert [r["model"] for r in leaderboard(store)] == ["a", "c", "b"]
    assert (board["a"]["elo"], board["b"]["elo"], board["c"]["elo"]) == (round(a, 1), round(b, 1), round(c, 1))
    # The Bradley-Terry rating is the fit of the same three battles, with its bootstrap interval.
    fit = bradley_terry([("a", "b", 1.0), ("b", "a", 0.0), ("a", "c", 0.5)])
    for model in "abc":
        assert board[model]["rating"] == round(fit[model], 1)
        assert board[model]["rating_low"] <= board[model]["rating"] <= board[model]["rating_high"]
        assert not board[model]["ranked"]  # three battles rank nobody


def test_bradley_terry_matches_a_fit_by_hand_and_ignores_the_order_of_votes():
    # a beats b 3 times of 4: the MLE has strength ratio 3, i.e. 400 * log10(3) = 190.8 Elo points.
    fit = bradley_terry([("a", "b", 1.0)] * 3 + [("a", "b", 0.0)], prior=0)
    assert fit["a"] - fit["b"] == pytest.approx(400 * math.log10(3), abs=1e-6)
    # Three models, a > b > c with ties: the MLE's score equations hold (each model's expected
    # score equals its observed score), whatever order the votes came in.
    battles = [("a", "b", 1.0)] * 6 + [("a", "b", 0.0)] * 2 + [("b", "c", 1.0)] * 5 + [("c", "b", 1.0)] * 3 \
        + [("a", "c", 0.5)] * 4 + [("c", "a", 0.0)] * 3
    fit = bradley_terry(battles, prior=0)
    for model in "abc":
        observed = expected = 0.0
        for x, y, s in battles:
            if model in (x, y):
                other = y if model == x else x
                observed += s if model == x else 1 - s
                expected += 1 / (1 + 10 ** ((fit[other] - fit[model]) / 400))
        assert expected == pytest.approx(observed, abs=1e-6)
    assert bradley_terry(battles[::-1], prior=0) == pytest.approx(fit)
    assert fit["a"] > fit["b"] > fit["c"]
    # Intervals: seeded (same votes, same intervals), and they shrink as votes add up.
    few, many = bradley_terry_intervals(battles), bradley_terry_intervals(battles * 10)
    assert few == bradley_terry_intervals(battles)
    assert many["a"][1] - many["a"][0] < (few["a"][1] - few["a"][0]) / 2


def test_rates_come_with_a_wilson_interval_and_a_verdict():
    assert wilson_interval(13, 16) == pytest.approx((0.570, 0.934), abs=1e-3)  # the textbook Wilson figures
    assert win_summary([1, 1, 1, 0.5, 0])["verdict"] == "no clear difference"  # 70% of 5 is not a win
    assert win_summary([1.0] * 40 + [0.0] * 10)["verdict"] == "better"
    assert win_summary([0.0] * 40 + [1.0] * 10)["verdict"] == "worse"


def test_votes_need_a_voter_and_a_known_answer(store):
    with pytest.raises(ValueError, match="annotator name"):
        record_vote(store, PROMPT, ("a", answer("1")), ("b", answer("2")), "left", " ")
    with pytest.raises(ValueError, match="unknown vote"):
        record_vote(store, PROMPT, ("a", answer("1")), ("b", answer("2")), "skip", "x")
    assert store.stats()["pairs"] == 0


def test_a_batch_comparison_stores_unlabelled_pairs_and_the_reward_win_rate(workspace, store):
    import_file(store, ASSETS / "demo_prompts.jsonl", "demo")
    with store.transaction() as cur:  # a second name for the default's GGUF: two models to compare
        cur.execute("INSERT INTO models (name, kind, path, purpose) VALUES ('twin', 'gguf', ?, 'policy')",
                    [str(default_gguf_path())])
    runner = Runner(store, workspace)
    with pytest.raises(RunError, match="no GGUF model named 'nope'"):
        service.start_comparison(runner, "default", "nope", "demo")
    run = runner.wait(
        service.start_comparison(runner, "default", "twin", "demo", limit=3, max_tokens=12, temperature=0.0)
    )
    assert run["status"] == "succeeded", run["message"]
    pairs = store.query("""SELECT p.first_model, p.second_model, p.source_verdict, a.messages AS a, b.messages AS b
                           FROM pairs p JOIN responses a ON a.id = p.first_id JOIN responses b ON b.id = p.second_id
                           WHERE p.id IN (SELECT pair_id FROM dataset_pairs WHERE dataset_id = ?)""",
                        [store.dataset_id("demo-default-vs-twin")])
    assert len(pairs) == 3
    assert all((p["first_model"], p["second_model"], p["source_verdict"]) == ("default", "twin", None) for p in pairs)
    # Same file, greedy: the same answers, each a real one.
    assert all(p["a"] == p["b"] and json.loads(p["a"])[0]["content"].strip() for p in pairs)
    with pytest.raises(RunError, match="exists already"):
        service.start_comparison(runner, "default", "twin", "demo", into="demo-default-vs-twin")
    ids = store.query("SELECT first_id, second_id FROM pairs WHERE first_model = 'default'")
    with store.transaction() as cur:
        for p in ids:
            cur.execute("INSERT OR REPLACE INTO rewards (response_id, model, reward) VALUES (?, 'rm', ?)",
                        [p["first_id"], 1.0])
    assert reward_win_rate(store, "demo-default-vs-twin", "rm")["win_rate"] == 0.5  # identical answers: ties


def test_a_batch_comparison_resumed_half_way_answers_as_a_straight_run(tmp_path):
    """Answers are decoded a few prompts at a time, each seeded on its own: a run resumed after
    two prompts (so its batch holds other prompts) gives the answers of a straight run."""
    import pyarrow.parquet as pq

    from pipelines.compare import CompareConfig, answer_all
    from pipelines.runlog import Partial, RunLog

    prompts = [{"prompt_id": f"p{i}", "prompt": json.dumps([{"role": "user", "content": f"Name a fruit ({i})."}])}
               for i in range(6)]
    gguf = str(default_gguf_path())
    config = CompareConfig(model_a="a", model_b="b", path_a=gguf, path_b=gguf, max_tokens=10, temperature=0.8)

    def run(folder, done_before=()):
        folder.mkdir()
        with Partial(folder, key="prompt_id") as partial:
            for row in done_before:
                partial.add(row)
            answer_all(config, RunLog(folder), prompts, partial)
        return pq.read_table(folder / config.output).to_pylist()

    straight = run(tmp_path / "straight")
    assert [r["prompt_id"] for r in straight] == [p["prompt_id"] for p in prompts]
    assert all(r["answer_a"].strip() and r["finish_a"] in ("stop", "length") for r in straight)
    assert len({r["answer_a"] for r in straight}) > 1
    assert run(tmp_path / "resumed", straight[:2]) == straight


def test_people_are_the_fourth_judge_of_a_policy_through_blind_votes_on_its_gguf(store):
    """A policy run's report gains a 'people' line from blind votes between its exported GGUF and
    its base: the win rate with its interval, ties as half; before an export or a vote, what to do."""
    from store.runs import record_adapter, record_export

    with store.transaction() as cur:
        record_adapter(cur, 7, "dpo-run7", "/runs/7/model", "default", "policy")
    assert "export the policy `dpo-run7`" in reports.people_verdict(store, 7)
    assert reports.people_verdict(store, 8) is None  # no policy from that run
    with store.transaction() as cur:
        record_export(cur, 9, "dpo-run7", "/runs/7/model", "default",
                      {"merged": False, "files": [{"quant": "q8_0", "path": "/runs/9/dpo-run7-q8_0.gguf"}]})
    assert "no votes yet between `dpo-run7-q8_0` and `default`" in reports.people_verdict(store, 7)
    votes = ["left"] * 9 + ["right"] * 2 + ["tie"] * 2 + ["both-bad"]  # the policy on the left
    for i, vote in enumerate(votes):
        record_vote(store, [{"role": "user", "content": f"question {i}"}], ("dpo-run7-q8_0", answer(f"good {i}")),
                    ("default", answer(f"meh {i}")), vote, "ann")
    # The base on the left and the policy losing; a vote between other models does not count.
    record_vote(store, PROMPT, ("default", answer("fine")), ("dpo-run7-q8_0", answer("worse")), "left", "ann")
    record_vote(store, PROMPT, ("default", answer("a")), ("other", answer("b")), "left", "ann")
    line = reports.people_verdict(store, 7)
    outcomes = 9 + 0.5 * 3  # of 15 votes
    low, high = wilson_interval(outcomes, 15)
    assert f"policy wins {outcomes / 15:.0%} of 15 votes (95% interval {low:.0%}-{high:.0%})" in line
    assert line.endswith("better" if low > 0.5 else "no clear difference")


def test_two_models_on_the_same_pairs_are_compared_only_where_they_disagree():
    """McNemar's exact test: six pairs only the second gets right is unlikely by chance (p = 2/64);
    an even split or no disagreement at all says nothing; the order of the two does not matter."""
    assert paired_sign_test(0, 6) == pytest.approx(2 / 64)
    assert paired_sign_test(6, 0) == paired_sign_test(0, 6)
    assert paired_sign_test(3, 3) == 1.0 and paired_sign_test(0, 0) == 1.0
    assert 0.2 < paired_sign_test(62, 77) < 0.3 and paired_sign_test(82, 118) < 0.05
