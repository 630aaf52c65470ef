"""Pairs made by comparing two models, blind-arena votes, and the leaderboard.

A compared pair holds one prompt and two models' answers, with the model of each side kept on the
pair. An arena vote is a label on such a pair (left shown = first), so votes feed the next reward
model and DPO run like any other label. The leaderboard counts every label given on a compared pair
(arena votes and labels from the Label tab alike) and rates the models with a Bradley-Terry fit and
bootstrap 95% intervals (as Chatbot Arena does: unlike online Elo, the fit does not depend on the
order of the votes); online Elo stays beside it. A tie and "both bad" count half a win each.
"""

from __future__ import annotations

import json

from common.errors import StudioError
from common.stats import bradley_terry, bradley_terry_intervals
from store.db import Store, content_hash, is_empty_response, prompt_key, response_key
from store.imports import ensure_dataset
from store.labelling import check_annotator, verdict_for
from store.models import gguf_files

ARENA_DATASET = "arena"
ELO_START = 1000.0
ELO_K = 32.0
MIN_BATTLES_TO_RANK = 10  # fewer battles per model: the leaderboard says the order is not settled


class ArenaError(StudioError, ValueError):
    pass


def _response(cur, prompt_id: str, messages: list[dict], model: str, source: str, generation: dict | None) -> str:
    rid = response_key(prompt_id, messages)
    cur.execute("""INSERT INTO responses (id, prompt_id, messages, is_empty, model, generation, source)
                   SELECT ?, ?, ?, ?, ?, ?, ? WHERE ? NOT IN (SELECT id FROM responses)""",
                [rid, prompt_id, json.dumps(messages, ensure_ascii=False), is_empty_response(messages), model,
                 json.dumps(generation) if generation else None, source, rid])
    return rid


def add_compared_pair(cur, dataset: str, prompt: list[dict], first: tuple[str, list[dict]],
                      second: tuple[str, list[dict]], source: str, recipe: dict | None = None,
                      generation: dict | None = None) -> str:
    """Store a prompt and two models' answers (model, messages) as an unlabelled pair of `dataset`
    (created when missing, with `recipe`), inside the caller's transaction; returns the pair id."""
    if not prompt or not first[1] or not second[1]:
        raise ArenaError("a compared pair needs a prompt and two answers")
    dataset_id = ensure_dataset(cur, dataset, recipe or {"source": source}, internal=True)
    pid = prompt_key(prompt)
    cur.execute("INSERT INTO prompts (id, messages) SELECT ?, ? WHERE ? NOT IN (SELECT id FROM prompts)",
                [pid, json.dumps(prompt, ensure_ascii=False), pid])
    first_id = _response(cur, pid, first[1], first[0], source, generation)
    second_id = _response(cur, pid, second[1], second[0], source, generation)
    pair_id = content_hash("pair", pid, first_id, second_id, first[0], second[0])
    cur.execute("""INSERT INTO pairs (id, prompt_id, first_id, second_id, source, first_model, second_model)
                   SELECT ?, ?, ?, ?, ?, ?, ? WHERE ? NOT IN (SELECT id FROM pairs)""",
                [pair_id, pid, first_id, second_id, source, first[0], second[0], pair_id])
    cur.execute("INSERT OR IGNORE INTO dataset_prompts VALUES (?, ?)", [dataset_id, pid])
    cur.execute("INSERT OR IGNORE INTO dataset_pairs VALUES (?, ?)", [dataset_id, pair_id])
    return pair_id


def record_vote(store: Store, prompt: list[dict], left: tuple[str, list[dict]], right: tuple[str, list[dict]],
                answer: str, annotator: str, dataset: str = ARENA_DATASET) -> str:
    """Store an arena vote: the pair (left as first) in `dataset` and the voter's label on it, in
    one transaction. `answer` is left, right, tie or both-bad. Returns the pair id."""
    annotator = check_annotator(annotator)
    if answer not in ("left", "right", "tie", "both-bad"):
        raise ArenaError(f"unknown vote {answer!r}; one of left, right, tie, both-bad")
    if left[1] == right[1]:
        raise ArenaError("the two answers are the same, so there is nothing to vote on (nothing was stored); "
                         "send another message, or pick two different models or another seed")
    with store.transaction() as cur:
        pair_id = add_compared_pair(cur, dataset, prompt, left, right, source="arena",
                                    recipe={"source": "arena", "about": "blind votes from the Compare tab"})
        cur.execute("DELETE FROM labels WHERE pair_id = ? AND annotator = ?", [pair_id, annotator])
        cur.execute("INSERT INTO labels (pair_id, annotator, verdict, swapped) VALUES (?, ?, ?, false)",
                    [pair_id, annotator, verdict_for(answer, swapped=False)])
    return pair_id


def leaderboard(store: Store) -> list[dict]:
    """One row per model that took part in a labelled comparison: battles, wins, losses, ties,
    both-bad, the Bradley-Terry rating with its bootstrap 95% interval (`rating`, `rating_low`,
    `rating_high`), online Elo, and `ranked` (enough battles to read its place), best first. A model
    compared with itself is not counted."""
    votes = store.query("""
        SELECT p.first_model AS a, p.second_model AS b, l.verdict
        FROM labels l JOIN pairs p ON p.id = l.pair_id
        WHERE p.first_model IS NOT NULL AND p.second_model IS NOT NULL AND p.first_model <> p.second_model
          AND l.verdict <> 'skip'
        ORDER BY l.id""")
    board: dict[str, dict] = {}
    battles = []

    def entry(model: str) -> dict:
        return board.setdefault(model, {"model": model, "battles": 0, "wins": 0, "losses": 0, "ties": 0,
                                        "both_bad": 0, "elo": ELO_START})

    for v in votes:
        a, b = entry(v["a"]), entry(v["b"])
        score_a = {"first": 1.0, "second": 0.0}.get(v["verdict"], 0.5)
        battles.append((v["a"], v["b"], score_a))
        expected_a = 1.0 / (1.0 + 10 ** ((b["elo"] - a["elo"]) / 400))
        a["elo"] += ELO_K * (score_a - expected_a)
        b["elo"] -= ELO_K * (score_a - expected_a)
        for side, won, lost in ((a, "first", "second"), (b, "second", "first")):
            side["battles"] += 1
            if v["verdict"] == won:
                side["wins"] += 1
            elif v["verdict"] == lost:
                side["losses"] += 1
            elif v["verdict"] == "tie":
                side["ties"] += 1
            else:
                side["both_bad"] += 1
    ratings = bradley_terry(battles)
    intervals = bradley_terry_intervals(battles) if battles else {}
    for row in board.values():
        row["elo"] = round(row["elo"], 1)
        row["rating"] = round(ratings[row["model"]], 1)
        row["rating_low"], row["rating_high"] = (round(x, 1) for x in intervals[row["model"]])
        row["ranked"] = row["battles"] >= MIN_BATTLES_TO_RANK
    return sorted(board.values(), key=lambda r: (-r["rating"], r["model"]))


def outcomes_between(store: Store, side_a: list[str], side_b: list[str]) -> list[float]:
    """Every label given on a compared pair of a model of `side_a` against one of `side_b`, as the
    outcome for side A: 1 a win, 0 a loss, 0.5 a tie or "both bad" (as the leaderboard counts
    them); skips are not outcomes."""
    if not side_a or not side_b:
        return []
    rows = store.query("""
        SELECT CASE WHEN p.first_model IN (SELECT unnest($a)) THEN 'first' ELSE 'second' END AS a_side, l.verdict
        FROM labels l JOIN pairs p ON p.id = l.pair_id
        WHERE l.verdict <> 'skip'
          AND ((p.first_model IN (SELECT unnest($a)) AND p.second_model IN (SELECT unnest($b)))
            OR (p.first_model IN (SELECT unnest($b)) AND p.second_model IN (SELECT unnest($a))))
        ORDER BY l.id""", {"a": side_a, "b": side_b})
    return [1.0 if r["verdict"] == r["a_side"] else 0.5 if r["verdict"] in ("tie", "both-bad") else 0.0 for r in rows]


def votes_against_base(store: Store, exported: list[str], base: str) -> tuple[list[str], list[float]]:
    """People's blind votes between a policy's GGUF exports and its base: the base's names (the
    base itself and any GGUF exported from it alone) and the outcomes for the policy."""
    base_names = [base] + [r["name"] for r in gguf_files(store, base=base)]
    return base_names, (outcomes_between(store, exported, base_names) if exported else [])


def reward_win_rate(store: Store, dataset: str, reward_model: str) -> dict | None:
    """How often the first model's answer of a compared dataset gets the higher reward (a tie
    counts half); None when no pair of it has both sides scored by `reward_model`."""
    row = store.query(
        """
        SELECT any_value(p.first_model) AS model_a, any_value(p.second_model) AS model_b, count(*) AS pairs,
               avg(CASE WHEN ra.reward > rb.reward THEN 1.0 WHEN ra.reward = rb.reward THEN 0.5 ELSE 0.0 END)
                   AS win_rate,
               avg(ra.reward - rb.reward) AS reward_gap
        FROM pairs p
        JOIN rewards ra ON ra.response_id = p.first_id AND ra.model = $m
        JOIN rewards rb ON rb.response_id = p.second_id AND rb.model = $m
        WHERE p.id IN (SELECT pair_id FROM dataset_pairs
                       WHERE dataset_id = (SELECT id FROM datasets WHERE name = $d))""",
        {"m": reward_model, "d": dataset},
    )[0]
    return row if row["pairs"] else None
