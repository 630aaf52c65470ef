"""Labelling: hand out a dataset's pairs to annotators, record their verdicts, measure agreement.

A pair is labelled once per annotator (a new verdict replaces the old one). While a pair is shown
in one browser tab it is *claimed* by that tab, so no other tab (of any annotator) is served it at
the same time. Claims live in memory: they only matter while the studio process is serving, and a
claim left by a closed tab expires after `CLAIM_TTL_S`.

Pairs are served fewest-labels-first (skips and AI judges' labels do not count), so that several annotators first spread
over the dataset and then overlap, which is what agreement needs. Among pairs with as many labels,
the queue's order (ORDERS) decides: a fixed shuffle, or the pairs that matter first (active
preference learning): those a reward model is least sure of (the smallest gap between its scores
of the two answers), or those where a reward model and an AI judge take opposite sides.
"""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass
from itertools import combinations

from common.errors import StudioError
from common.stats import cohen_kappa
from store.db import Store, fetch_one

VERDICTS = ("first", "second", "tie", "both-bad", "skip")
# What the annotator sees: the left and right response, in an order randomised per pair.
ANSWERS = ("left", "right", "tie", "both-bad", "skip")
CLAIM_TTL_S = 15 * 60
MAX_ANNOTATOR_CHARS = 64
SOURCE_ANNOTATOR = "source"  # the verdict a pair was imported with, in the agreement view

# A pair's preference for training: its labels given here when it has any (other than skips),
# by majority of first/second; else the verdict of the file it came from. `outcome` says why a pair
# has no preference: 'unlabelled', 'tie', 'both-bad', 'skip' or 'split' (as many firsts as seconds).
# An AI judge's labels (annotator judge:...) count only where no person labelled the pair and its
# file gave no verdict: people outrank the judge, which fills in where nobody has looked.
PAIR_PREFERENCE = """
WITH by_people AS (
    SELECT pair_id FROM labels WHERE verdict <> 'skip' AND annotator NOT LIKE 'judge:%'
    UNION SELECT id FROM pairs WHERE source_verdict IS NOT NULL
), votes AS (
    SELECT pair_id,
           count(*) FILTER (verdict = 'first') AS firsts,
           count(*) FILTER (verdict = 'second') AS seconds,
           count(*) FILTER (verdict = 'tie') AS ties,
           count(*) FILTER (verdict = 'both-bad') AS both_bad,
           count(*) FILTER (verdict <> 'skip') AS decisive,
           count(*) AS given
    FROM labels WHERE annotator NOT LIKE 'judge:%' OR pair_id NOT IN (SELECT pair_id FROM by_people)
    GROUP BY pair_id
)
SELECT p.id AS pair_id,
       CASE WHEN coalesce(v.decisive, 0) = 0 THEN p.source_verdict
            WHEN v.firsts > v.seconds THEN 'first'
            WHEN v.seconds > v.firsts THEN 'second' END AS verdict,
       CASE WHEN coalesce(v.decisive, 0) = 0 AND p.source_verdict IS NOT NULL THEN p.source_verdict
            WHEN coalesce(v.decisive, 0) = 0 AND coalesce(v.given, 0) > 0 THEN 'skip'
            WHEN coalesce(v.decisive, 0) = 0 THEN 'unlabelled'
            WHEN v.firsts > v.seconds THEN 'first'
            WHEN v.seconds > v.firsts THEN 'second'
            WHEN v.firsts > 0 THEN 'split'
            WHEN v.ties >= v.both_bad THEN 'tie'
            ELSE 'both-bad' END AS outcome,
       CASE WHEN coalesce(v.decisive, 0) = 0 THEN CASE WHEN p.source_verdict IS NOT NULL THEN 'file' END
            WHEN p.id IN (SELECT pair_id FROM by_people) THEN 'people'
            ELSE 'judge' END AS decided_by
FROM pairs p LEFT JOIN votes v ON v.pair_id = p.id
"""


class LabelError(StudioError, ValueError):
    pass


# The orders a queue can serve pairs in (after fewest labels first): name -> what it means.
ORDERS = {
    "shuffled": "a fixed shuffle (the pairs' content hashes)",
    "uncertain": "the pairs the reward model is least sure of first: the smallest gap between its scores of the "
                 "two answers (for an ensemble, the gap in units of its members' spread) (active labelling)",
    "disagree": "the pairs where the reward model and an AI judge (judge:...) take opposite sides first, then the "
                "judge's ties, then the reward model's smallest gaps",
}

# The listings behind the orders: $d the dataset, $a the annotator (their labelled pairs left out),
# $skip the pair ids held by other sessions, $m the reward model.
PEOPLES_COUNTS = """counts AS (  -- people's labels: an AI judge's do not stand for a person's look
    SELECT pair_id, count(*) AS n FROM labels WHERE verdict <> 'skip' AND annotator NOT LIKE 'judge:%' GROUP BY pair_id
)"""
OPEN_TO = """dp.dataset_id = $d
  AND dp.pair_id NOT IN (SELECT pair_id FROM labels WHERE annotator = $a)
  AND dp.pair_id NOT IN (SELECT unnest($skip::VARCHAR[]))"""
# Shuffled: the pair ids alone (no text, no score is read: about 40 ms at a million pairs).
SHUFFLED = f"""
WITH {PEOPLES_COUNTS}
SELECT dp.pair_id, coalesce(c.n, 0) AS labels, NULL::DOUBLE AS reward_gap, NULL::VARCHAR AS judge_verdict,
       NULL::BOOLEAN AS disagree
FROM dataset_pairs dp LEFT JOIN counts c ON c.pair_id = dp.pair_id
WHERE {OPEN_TO}
ORDER BY coalesce(c.n, 0), dp.pair_id  -- ids are content hashes: a fixed shuffle
LIMIT $limit
"""
BY_REWARD = f"""
WITH {PEOPLES_COUNTS},
judged AS (
    SELECT pair_id, CASE WHEN count(DISTINCT verdict) > 1 THEN 'split' ELSE min(verdict) END AS verdict
    FROM labels WHERE annotator LIKE 'judge:%' AND verdict IN ('first', 'second', 'tie') GROUP BY pair_id
)
SELECT dp.pair_id, coalesce(c.n, 0) AS labels, ra.reward - rb.reward AS reward_gap, j.verdict AS judge_verdict,
       CASE WHEN ra.reward IS NULL OR j.verdict NOT IN ('first', 'second') THEN NULL
            ELSE (ra.reward > rb.reward) <> (j.verdict = 'first') END AS disagree
FROM dataset_pairs dp
JOIN pairs p ON p.id = dp.pair_id
LEFT JOIN counts c ON c.pair_id = dp.pair_id
LEFT JOIN rewards ra ON ra.response_id = p.first_id AND ra.model = $m
LEFT JOIN rewards rb ON rb.response_id = p.second_id AND rb.model = $m
LEFT JOIN judged j ON j.pair_id = dp.pair_id
WHERE {OPEN_TO}
ORDER BY coalesce(c.n, 0), {{order}} dp.pair_id
LIMIT $limit
"""
# An ensemble's gap is measured in its members' spread: a pair they disagree on comes before an
# equally close one they agree on (one reward model has no spread: its gap as it is).
UNCERTAINTY = "abs(ra.reward - rb.reward) / coalesce(nullif(sqrt(ra.spread ^ 2 + rb.spread ^ 2), 0), 1)"
ORDER_KEYS = {
    "uncertain": f"{UNCERTAINTY} NULLS LAST,",
    "disagree": "CASE WHEN disagree THEN 0 WHEN j.verdict = 'tie' THEN 1 ELSE 2 END, "
                "abs(ra.reward - rb.reward) NULLS LAST,",
}


def check_order(store: Store, dataset_id: int, dataset: str, order: str, reward_model: str | None) -> str | None:
    """The reward model an order reads (None for 'shuffled'); a LabelError when it cannot be used."""
    if order not in ORDERS:
        raise LabelError(f"unknown order {order!r}; one of {', '.join(ORDERS)}")
    if order == "shuffled":
        return None
    if not reward_model:
        raise LabelError(f"the order '{order}' reads a reward model's scores: pick a reward model")
    if not store.scalar("SELECT count(*) FROM models WHERE name = ? AND purpose = 'reward'", [reward_model]) and \
            not store.scalar("SELECT count(*) FROM rewards WHERE model = ?", [reward_model]):
        known = [r["name"] for r in store.query("SELECT name FROM models WHERE purpose = 'reward' ORDER BY id DESC")]
        raise LabelError(f"no reward model named '{reward_model}'"
                         + (f"; the workspace has {', '.join(known[:5])}" if known else
                            "; train one first (alignstudio train rm)"))
    scored = store.scalar("""
        SELECT count(*) FROM dataset_pairs dp JOIN pairs p ON p.id = dp.pair_id
        JOIN rewards ra ON ra.response_id = p.first_id AND ra.model = $m
        JOIN rewards rb ON rb.response_id = p.second_id AND rb.model = $m
        WHERE dp.dataset_id = $d""", {"d": dataset_id, "m": reward_model})
    if not scored:
        raise LabelError(f"'{reward_model}' has not scored the answers of '{dataset}' yet: score them first "
                         f"(alignstudio rewards --dataset {dataset} --reward-model {reward_model}, or the Label "
                         "tab's Score button)")
    return reward_model


def queue(store: Store, dataset: str, annotator: str, order: str = "shuffled", reward_model: str | None = None,
          limit: int = 20, held_by_others: list[str] | None = None) -> list[dict]:
    """The next `limit` pairs `annotator` would be served in `order`: pair_id, labels (by anyone),
    reward_gap (first minus second, under the reward model), judge_verdict, disagree."""
    annotator = check_annotator(annotator)
    dataset_id = store.dataset_id(dataset)
    if dataset_id is None:
        raise LabelError(f"no dataset named '{dataset}'")
    model = check_order(store, dataset_id, dataset, order, reward_model)
    params = {"d": dataset_id, "a": annotator, "skip": held_by_others or [], "limit": limit}
    if model is None:
        return store.query(SHUFFLED, params)
    return store.query(BY_REWARD.format(order=ORDER_KEYS[order]), {**params, "m": model})


@dataclass
class ServedPair:
    """One pair as shown to an annotator: `swapped` means the pair's second response is on the left."""
    pair_id: str
    prompt: list[dict]
    left: list[dict]
    right: list[dict]
    left_model: str | None
    right_model: str | None
    swapped: bool


def check_annotator(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise LabelError("type an annotator name first")
    if len(name) > MAX_ANNOTATOR_CHARS:
        raise LabelError(f"an annotator name has at most {MAX_ANNOTATOR_CHARS} characters")
    if name == SOURCE_ANNOTATOR:
        raise LabelError(f"'{SOURCE_ANNOTATOR}' is reserved for the verdicts a file came with; pick another name")
    return name


def verdict_for(answer: str, swapped: bool) -> str:
    """The stored verdict (about first/second) for an answer about left/right."""
    if answer not in ANSWERS:
        raise LabelError(f"unknown answer {answer!r}; one of {', '.join(ANSWERS)}")
    if answer == "left":
        return "second" if swapped else "first"
    if answer == "right":
        return "first" if swapped else "second"
    return answer


class LabelQueue:
    """Serves pairs to annotators' sessions (browser tabs) and commits each label as it is given."""

    def __init__(self, store: Store, claim_ttl_s: float = CLAIM_TTL_S, seed: int | None = None):
        self.store = store
        self.claim_ttl_s = claim_ttl_s
        self._claims: dict[str, tuple[str, float]] = {}  # pair id -> (session, expiry)
        self._lock = threading.Lock()
        self._random = random.Random(seed)

    def _dataset_id(self, dataset: str) -> int:
        dataset_id = self.store.dataset_id(dataset)
        if dataset_id is None:
            raise LabelError(f"no dataset named '{dataset}'")
        return dataset_id

    def _claimed_by_others(self, session: str) -> list[str]:
        now = time.monotonic()
        for pair_id in [p for p, (_, expiry) in self._claims.items() if expiry < now]:
            del self._claims[pair_id]
        return [p for p, (s, _) in self._claims.items() if s != session]

    def _claim(self, session: str, pair_id: str) -> None:
        self._release_locked(session)
        self._claims[pair_id] = (session, time.monotonic() + self.claim_ttl_s)

    def _release_locked(self, session: str) -> None:
        for pair_id in [p for p, (s, _) in self._claims.items() if s == session]:
            del self._claims[pair_id]

    def release(self, session: str) -> None:
        """Give back what a session holds (its tab closed, or it changed dataset)."""
        with self._lock:
            self._release_locked(session)

    def next_pair(self, dataset: str, annotator: str, session: str, order: str = "shuffled",
                  reward_model: str | None = None) -> ServedPair | None:
        """The next pair `annotator` has not labelled and no other session holds, in `order`
        (ORDERS); None when done."""
        with self._lock:
            row = queue(self.store, dataset, annotator, order, reward_model, limit=1,
                        held_by_others=self._claimed_by_others(session))
            if not row:
                self._release_locked(session)
                return None
            pair_id = row[0]["pair_id"]
            self._claim(session, pair_id)
        return self._serve(pair_id, swapped=self._random.random() < 0.5)

    def _serve(self, pair_id: str, swapped: bool) -> ServedPair:
        row = self.store.query("""
            SELECT pr.messages AS prompt, a.messages AS first, b.messages AS second,
                   coalesce(p.first_model, a.model) AS first_model, coalesce(p.second_model, b.model) AS second_model
            FROM pairs p JOIN prompts pr ON pr.id = p.prompt_id
            JOIN responses a ON a.id = p.first_id JOIN responses b ON b.id = p.second_id
            WHERE p.id = ?""", [pair_id])[0]
        sides = [(json.loads(row["first"]), row["first_model"]), (json.loads(row["second"]), row["second_model"])]
        (left, left_model), (right, right_model) = reversed(sides) if swapped else sides
        return ServedPair(pair_id, json.loads(row["prompt"]), left, right, left_model, right_model, swapped)

    def label(self, session: str, annotator: str, served: ServedPair, answer: str) -> str:
        """Commit one answer about a served pair; returns the stored verdict."""
        annotator = check_annotator(annotator)
        verdict = verdict_for(answer, served.swapped)
        with self.store.transaction() as cur:
            if fetch_one(cur, "SELECT 1 FROM pairs WHERE id = ?", [served.pair_id]) is None:
                raise LabelError("this pair is no longer in the workspace")
            cur.execute("DELETE FROM labels WHERE pair_id = ? AND annotator = ?", [served.pair_id, annotator])
            cur.execute("INSERT INTO labels (pair_id, annotator, verdict, swapped) VALUES (?, ?, ?, ?)",
                        [served.pair_id, annotator, verdict, served.swapped])
        with self._lock:
            if self._claims.get(served.pair_id, ("",))[0] == session:
                del self._claims[served.pair_id]
        return verdict

    def undo(self, dataset: str, annotator: str, session: str) -> ServedPair | None:
        """Take back the annotator's latest label in the dataset and serve that pair again, shown
        as it was; None when there is nothing to undo."""
        annotator = check_annotator(annotator)
        dataset_id = self._dataset_id(dataset)
        with self.store.transaction() as cur:
            last = fetch_one(cur, """
                SELECT id, pair_id, swapped FROM labels
                WHERE annotator = ? AND pair_id IN (SELECT pair_id FROM dataset_pairs WHERE dataset_id = ?)
                ORDER BY id DESC LIMIT 1""", [annotator, dataset_id])
            if last is None:
                return None
            cur.execute("DELETE FROM labels WHERE id = ?", [last[0]])
        with self._lock:
            self._claim(session, last[1])
        return self._serve(last[1], swapped=last[2])


def add_rule_labels(store: Store, annotator: str, verdicts: list[tuple[str, str]]) -> None:
    """Labels given by a rule (pair_id, verdict in first/second/tie), all in one transaction."""
    with store.transaction() as cur:
        for pair_id, verdict in verdicts:
            cur.execute(
                "INSERT INTO labels (pair_id, annotator, verdict) VALUES (?, ?, ?)", [pair_id, annotator, verdict]
            )


def progress(store: Store, dataset: str) -> dict:
    """Pairs in the dataset and, per annotator, how many they labelled and with which verdicts."""
    dataset_id = store.dataset_id(dataset)
    if dataset_id is None:
        raise LabelError(f"no dataset named '{dataset}'")
    total = store.scalar("SELECT count(*) FROM dataset_pairs WHERE dataset_id = ?", [dataset_id])
    rows = store.query("""
        SELECT annotator, verdict, count(*) AS n FROM labels
        WHERE pair_id IN (SELECT pair_id FROM dataset_pairs WHERE dataset_id = ?)
        GROUP BY annotator, verdict ORDER BY annotator""", [dataset_id])
    annotators: dict[str, dict[str, int]] = {}
    for r in rows:
        annotators.setdefault(r["annotator"], dict.fromkeys(VERDICTS, 0))[r["verdict"]] = r["n"]
    labelled_by_anyone = store.scalar("""
        SELECT count(DISTINCT pair_id) FROM labels WHERE verdict <> 'skip'
        AND pair_id IN (SELECT pair_id FROM dataset_pairs WHERE dataset_id = ?)""", [dataset_id])
    return {"pairs": total, "labelled_by_anyone": labelled_by_anyone, "annotators": annotators}


def agreement(store: Store, dataset: str) -> dict:
    """Agreement between every two annotators (the source file's verdicts count as the annotator
    'source') over the pairs both judged (skips left out): shared pairs, share agreeing, Cohen's
    kappa; and the pairs where annotators disagree.

    Kappa is left out (None) against 'source': an import stores the preferred response first, so
    the source's verdict is always 'first' and kappa would be 0 whatever the annotator did."""
    dataset_id = store.dataset_id(dataset)
    if dataset_id is None:
        raise LabelError(f"no dataset named '{dataset}'")
    rows = store.query("""
        SELECT pair_id, annotator, verdict FROM labels
        WHERE verdict <> 'skip' AND pair_id IN (SELECT pair_id FROM dataset_pairs WHERE dataset_id = ?)
        UNION ALL
        SELECT id, ?, source_verdict FROM pairs
        WHERE source_verdict IS NOT NULL AND id IN (SELECT pair_id FROM dataset_pairs WHERE dataset_id = ?)
          AND id IN (SELECT pair_id FROM labels WHERE verdict <> 'skip')""",
        [dataset_id, SOURCE_ANNOTATOR, dataset_id])
    by_annotator: dict[str, dict[str, str]] = {}
    for r in rows:
        by_annotator.setdefault(r["annotator"], {})[r["pair_id"]] = r["verdict"]
    table = []
    for x, y in combinations(sorted(by_annotator), 2):
        shared = sorted(set(by_annotator[x]) & set(by_annotator[y]))
        if not shared:
            continue
        a = [by_annotator[x][p] for p in shared]
        b = [by_annotator[y][p] for p in shared]
        table.append({"a": x, "b": y, "pairs": len(shared),
                      "agreement": sum(u == v for u, v in zip(a, b)) / len(shared),
                      "kappa": None if SOURCE_ANNOTATOR in (x, y) else cohen_kappa(a, b)})
    verdicts_by_pair: dict[str, dict[str, str]] = {}
    for name, verdicts in by_annotator.items():
        for pair_id, verdict in verdicts.items():
            verdicts_by_pair.setdefault(pair_id, {})[name] = verdict
    disagreements = [{"pair_id": p, "verdicts": v} for p, v in verdicts_by_pair.items()
                     if len(v) > 1 and len(set(v.values())) > 1]
    return {"annotators": sorted(by_annotator), "pairs": table, "disagreements": disagreements}


def reward_opinion(store: Store, pair_id: str) -> dict | None:
    """The newest reward model that scored both responses of a pair: {model, first, second}."""
    rows = store.query("""
        SELECT a.model, a.reward AS first, b.reward AS second FROM pairs p
        JOIN rewards a ON a.response_id = p.first_id
        JOIN rewards b ON b.response_id = p.second_id AND b.model = a.model
        JOIN models m ON m.name = a.model
        WHERE p.id = ? ORDER BY m.id DESC LIMIT 1""", [pair_id])
    return rows[0] if rows else None


def judge_disagreements(store: Store, dataset: str) -> list[dict]:
    """Pairs of a dataset where an AI judge's label (judge:...) took one side and a person (or the
    pair's file) the other: pair_id, prompt, judge, its verdict and the people's verdicts, the pairs
    that most need a person's look first (most people against the judge)."""
    dataset_id = store.dataset_id(dataset)
    if dataset_id is None:
        raise LabelError(f"no dataset named '{dataset}'")
    return store.query("""
        WITH people AS (
            SELECT pair_id, annotator, verdict FROM labels
            WHERE verdict IN ('first', 'second') AND annotator NOT LIKE 'judge:%'
            UNION ALL SELECT id, 'source', source_verdict FROM pairs WHERE source_verdict IN ('first', 'second')
        )
        SELECT j.pair_id, pr.messages AS prompt, j.annotator AS judge, j.verdict AS judge_verdict,
               string_agg(pe.annotator || ': ' || pe.verdict, ', ' ORDER BY pe.annotator) AS people,
               count(*) AS against
        FROM labels j JOIN people pe ON pe.pair_id = j.pair_id AND pe.verdict <> j.verdict
        JOIN pairs p ON p.id = j.pair_id JOIN prompts pr ON pr.id = p.prompt_id
        WHERE j.annotator LIKE 'judge:%' AND j.verdict IN ('first', 'second')
          AND j.pair_id IN (SELECT pair_id FROM dataset_pairs WHERE dataset_id = ?)
        GROUP BY j.pair_id, pr.messages, j.annotator, j.verdict
        ORDER BY against DESC, j.pair_id""", [dataset_id])


def reward_disagreements(store: Store, dataset: str, reward_model: str) -> list[dict]:
    """Pairs of a dataset with a preference (labels, else the file) where the reward model scores
    the other response higher, the most confident first: pair_id, prompt, verdict, margin (the
    RM's reward of the preferred response minus the other's, negative here)."""
    dataset_id = store.dataset_id(dataset)
    if dataset_id is None:
        raise LabelError(f"no dataset named '{dataset}'")
    return store.query(f"""
        WITH preference AS ({PAIR_PREFERENCE})
        SELECT p.id AS pair_id, pr.messages AS prompt, pref.verdict,
               CASE WHEN pref.verdict = 'first' THEN a.reward - b.reward ELSE b.reward - a.reward END AS margin
        FROM pairs p JOIN preference pref ON pref.pair_id = p.id
        JOIN prompts pr ON pr.id = p.prompt_id
        JOIN rewards a ON a.response_id = p.first_id AND a.model = $m
        JOIN rewards b ON b.response_id = p.second_id AND b.model = $m
        WHERE p.id IN (SELECT pair_id FROM dataset_pairs WHERE dataset_id = $d) AND pref.verdict IS NOT NULL
          AND (CASE WHEN pref.verdict = 'first' THEN a.reward - b.reward ELSE b.reward - a.reward END) < 0
        ORDER BY margin""", {"d": dataset_id, "m": reward_model})
