"""Comparing two models: arena votes become labelled pairs, the leaderboard rates the models, and a
batch comparison stores both models' answers as pairs ready for labelling."""

import json

import pytest

from pipelines.models import default_gguf_path
from store import import_file
from store.arena import ELO_K, ELO_START, leaderboard, record_vote, reward_win_rate
from store.exports import preference_records
from studio import jobs
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
    # Two models can write the same text: the pair still knows which model wrote which side.
    same = record_vote(store, PROMPT, ("model-b", answer("Hi!")), ("model-a", answer("Hi!")), "tie", "ann")
    assert store.query("SELECT first_model, second_model FROM pairs WHERE id = ?", [same])[0] == \
        {"first_model": "model-b", "second_model": "model-a"}


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
        jobs.start_comparison(runner, "default", "nope", "demo")
    run = runner.wait(jobs.start_comparison(runner, "default", "twin", "demo", limit=3, max_tokens=12, temperature=0.0))
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
        jobs.start_comparison(runner, "default", "twin", "demo", into="demo-default-vs-twin")
    ids = store.query("SELECT first_id, second_id FROM pairs WHERE first_model = 'default'")
    with store.transaction() as cur:
        for p in ids:
            cur.execute("INSERT OR REPLACE INTO rewards VALUES (?, 'rm', ?, NULL)", [p["first_id"], 1.0])
    assert reward_win_rate(store, "demo-default-vs-twin", "rm")["win_rate"] == 0.5  # identical answers: ties
