"""Perplexity filtering over stored scores: which pairs and candidates survive, and the recipe."""

import json

import pytest

from store import import_file
from store.filtering import FilterError, filter_by_perplexity


def add_pairs(store, tmp_path, n):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"}) + "\n"
                            for i in range(n)))
    import_file(store, path, "pairs")


def set_ppl(store, model, by_text):
    """Store a perplexity for each response, chosen by its text."""
    with store.transaction() as cur:
        for rid, messages in cur.execute("SELECT id, messages::VARCHAR FROM responses").fetchall():
            text = json.loads(messages)[-1]["content"]
            cur.execute("INSERT INTO perplexities VALUES (?, ?, ?, ?, 1, 'test', NULL)",
                        [rid, model, by_text(text), 0.0])


def pairs_of(store, name):
    return sorted(r["q"] for r in store.query("""
        SELECT json_extract_string(pr.messages, '$[0].content') AS q FROM dataset_pairs dp
        JOIN datasets d ON d.id = dp.dataset_id JOIN pairs p ON p.id = dp.pair_id
        JOIN prompts pr ON pr.id = p.prompt_id WHERE d.name = ?""", [name]))


def test_a_pair_is_kept_only_if_both_sides_pass(store, tmp_path):
    add_pairs(store, tmp_path, 4)
    # chosen of pair i has perplexity i + 1, rejected 10 - i
    set_ppl(store, "m", lambda t: int(t.split()[1]) + 1 if t.startswith("good") else 10 - int(t.split()[1]))
    plan = filter_by_perplexity(store, "pairs", "m", "kept", max_ppl=8.5)
    # pair 0: (1, 10) out; 1: (2, 9) out; 2: (3, 8) in; 3: (4, 7) in
    assert pairs_of(store, "kept") == ["Q2", "Q3"]
    assert (
        plan.summary("kept")
        == "'kept' keeps 2 of 4 prompts, 4 of 8 responses, 2 of 4 pairs of 'pairs' (perplexity <= 8.5)"
    )
    recipe = json.loads(store.scalar("SELECT recipe FROM datasets WHERE name = 'kept'"))
    assert recipe == {"source": "pairs", "model": "m", "method": "perplexity filter", "rule": "max_ppl",
                      "value": 8.5, "per_prompt": False, "threshold": 8.5}


def test_the_median_keeps_half_of_the_pairs(store, tmp_path):
    add_pairs(store, tmp_path, 10)
    set_ppl(store, "m", lambda t: 3.0 * int(t.split()[1]) + (1 if t.startswith("bad") else 0))
    plan = filter_by_perplexity(store, "pairs", "m", "half", keep_quantile=0.5)
    assert pairs_of(store, "half") == ["Q0", "Q1", "Q2", "Q3", "Q4"]
    assert plan.threshold == 13.0  # the pairs' worse sides are 1, 4, ..., 28; the median is 13
    assert "keeps 5 of 10 prompts, 10 of 20 responses, 5 of 10 pairs of 'pairs' (perplexity <= 13)" in plan.summary(
        "half"
    )


def test_candidates_per_prompt_form_pairs_among_the_kept(store, tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"prompt": "Tell me a joke"}) + "\n")
    import_file(store, path, "cands")
    prompt_id = store.scalar("SELECT id FROM prompts")
    with store.transaction() as cur:
        for i in range(4):
            cur.execute("INSERT INTO responses (id, prompt_id, messages, is_empty, model) VALUES (?, ?, ?, false, 'm')",
                        [f"r{i}", prompt_id, json.dumps([{"role": "assistant", "content": f"joke {i}"}])])
            cur.execute("INSERT INTO perplexities VALUES (?, 'm', ?, 0, 1, 'test', NULL)", [f"r{i}", float(i + 1)])
    plan = filter_by_perplexity(store, "cands", "m", "plausible", keep_quantile=0.5, per_prompt=True)
    assert (len(plan.kept_responses), len(plan.formed_pairs), plan.kept_pairs) == (2, 1, [])
    assert (
        plan.summary() == "Keeps 1 of 1 prompts, 2 of 4 responses of 'cands'; 1 new pairs formed among kept candidates"
    )
    pair = store.query("SELECT first_id, second_id, source_verdict FROM pairs")
    assert pair == [{"first_id": "r0", "second_id": "r1", "source_verdict": None}]  # unlabelled, ready to label


def test_unscored_responses_and_bad_requests_are_refused(store, tmp_path):
    add_pairs(store, tmp_path, 2)
    with pytest.raises(FilterError, match="4 responses of 'pairs' have no perplexity under 'm'.*alignstudio score"):
        filter_by_perplexity(store, "pairs", "m", "x", max_ppl=5)
    set_ppl(store, "m", lambda t: 1.0)
    filter_by_perplexity(store, "pairs", "m", "x", max_ppl=5)
    with pytest.raises(FilterError, match="'x' already exists"):
        filter_by_perplexity(store, "pairs", "m", "x", max_ppl=5)
    with pytest.raises(FilterError, match="exactly one rule"):
        filter_by_perplexity(store, "pairs", "m", "y")
    with pytest.raises(FilterError, match="must be in \\(0, 1\\]"):
        filter_by_perplexity(store, "pairs", "m", "y", keep_quantile=1.5)
