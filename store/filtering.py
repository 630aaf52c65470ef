"""Perplexity filtering: keep what the target model could plausibly have written.

Given a dataset and a model whose perplexities are stored (`alignstudio score`), a response passes
if its perplexity is at most a threshold: an absolute one (`max_ppl`), or a quantile of the
scores (`keep_quantile`), computed over the whole dataset or within each prompt (`per_prompt`).

- A pair is kept only if both its responses pass. With a quantile, the quantile is taken over
  each pair's worse side (its larger perplexity), so `keep_quantile=0.5` keeps half of the pairs.
- Responses that came without a pair (candidates generated for a prompt) are kept if they pass,
  and new, unlabelled pairs are formed among the kept responses of each prompt.

The result is a new dataset whose recipe records how it was made.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.errors import StudioError
from store.db import Store, content_hash, create_dataset


class FilterError(StudioError, ValueError):
    pass


@dataclass
class FilterPlan:
    """What a filter keeps, before anything is written (the UI previews it as the user moves the
    threshold)."""
    dataset: str
    recipe: dict
    threshold: float | None          # the perplexity limit, when one limit applies to all
    scores: list[dict]               # every response: pair_id (None for a candidate), prompt_id, response_id, ppl
    kept_pairs: list[str]
    formed_pairs: list[tuple[str, str, str, str]]  # (pair id, prompt id, first, second) among kept candidates
    kept_responses: set[str]
    prompts_before: int

    @property
    def prompts_after(self) -> int:
        kept = set(self.kept_pairs)
        return len({r["prompt_id"] for r in self.scores if r["pair_id"] in kept}
                   | {prompt_id for _, prompt_id, _, _ in self.formed_pairs})

    def summary(self, into: str | None = None) -> str:
        pairs_before = len({r["pair_id"] for r in self.scores if r["pair_id"] is not None})
        limit = f" (perplexity <= {self.threshold:.3g})" if self.threshold is not None else ""
        formed = f"; {len(self.formed_pairs):,} new pairs formed among kept candidates" if self.formed_pairs else ""
        pairs = f", {len(self.kept_pairs):,} of {pairs_before:,} pairs" if pairs_before else ""  # not for prompts only
        return (
            f"{repr(into) + ' keeps' if into else 'Keeps'} {self.prompts_after:,} of {self.prompts_before:,} prompts, "
            f"{len(self.kept_responses):,} of {len(self.scores):,} responses{pairs} of '{self.dataset}'{limit}{formed}"
        )


# Every response of the dataset (both sides of its pairs, and its prompts' candidates) with its
# perplexity under the model ($d: dataset id, $m: model).
RESPONSES = """
    WITH pair_sides AS (
        SELECT p.id AS pair_id, p.prompt_id, side.response_id
        FROM pairs p, LATERAL (VALUES (p.first_id), (p.second_id)) side(response_id)
        WHERE p.id IN (SELECT pair_id FROM dataset_pairs WHERE dataset_id = $d)
    ),
    candidates AS (
        SELECT NULL::VARCHAR AS pair_id, r.prompt_id, r.id AS response_id FROM responses r
        WHERE r.prompt_id IN (SELECT prompt_id FROM dataset_prompts WHERE dataset_id = $d)
          AND r.id NOT IN (SELECT response_id FROM pair_sides)
    )
    SELECT s.pair_id, s.prompt_id, s.response_id, x.ppl
    FROM (SELECT * FROM pair_sides UNION ALL SELECT * FROM candidates) s
    LEFT JOIN perplexities x ON x.response_id = s.response_id AND x.model = $m
"""


def plan_filter(store: Store, dataset: str, model: str, max_ppl: float | None = None,
                keep_quantile: float | None = None, per_prompt: bool = False) -> FilterPlan:
    if (max_ppl is None) == (keep_quantile is None):
        raise FilterError("give exactly one rule: a maximum perplexity or a quantile to keep")
    if keep_quantile is not None and not 0 < keep_quantile <= 1:
        raise FilterError(f"the quantile to keep must be in (0, 1], got {keep_quantile}")
    dataset_id = store.dataset_id(dataset)
    if dataset_id is None:
        raise FilterError(f"no dataset named '{dataset}'")
    params = {"d": dataset_id, "m": model}
    rows = store.query(RESPONSES, params)
    if not rows:
        raise FilterError(f"dataset '{dataset}' has no responses to filter: generate candidate answers to its "
                          "prompts first (Build dataset tab: Generate candidates; or `alignstudio generate`)")
    unscored = {r["response_id"] for r in rows if r["ppl"] is None}
    if unscored:
        raise FilterError(f"{len(unscored):,} responses of '{dataset}' have no perplexity under '{model}' "
                          "(responses too long to score, or not scored yet): score them first (Build dataset tab: "
                          f"Score perplexity; or `alignstudio score --dataset {dataset} --model {model}`)")

    group = "prompt_id" if per_prompt else "1"
    if max_ppl is not None:
        pair_limit = candidate_limit = repr(float(max_ppl))
    else:
        pair_limit = f"quantile_disc(worse, {float(keep_quantile)}) OVER (PARTITION BY {group})"
        candidate_limit = f"quantile_disc(ppl, {float(keep_quantile)}) OVER (PARTITION BY {group})"
    pair_scores = f"""SELECT pair_id, any_value(prompt_id) AS prompt_id, max(ppl) AS worse
                      FROM ({RESPONSES}) WHERE pair_id IS NOT NULL GROUP BY pair_id"""
    kept_pairs = [r["pair_id"] for r in store.query(
        f"SELECT pair_id FROM (SELECT pair_id, worse, {pair_limit} AS limit_ FROM ({pair_scores})) "
        "WHERE worse <= limit_ ORDER BY pair_id", params)]
    kept_candidates = store.query(f"""
        SELECT prompt_id, response_id FROM (
            SELECT prompt_id, response_id, ppl, {candidate_limit} AS limit_
            FROM ({RESPONSES}) WHERE pair_id IS NULL)
        WHERE ppl <= limit_ ORDER BY prompt_id, response_id""", params)
    threshold = None  # per prompt, each prompt has its own
    if max_ppl is not None and not per_prompt:
        threshold = max_ppl
    elif not per_prompt:
        has_pairs = any(r["pair_id"] is not None for r in rows)
        threshold = store.scalar(
            f"SELECT quantile_disc(worse, {float(keep_quantile)}) FROM ({pair_scores})" if has_pairs else
            f"SELECT quantile_disc(ppl, {float(keep_quantile)}) FROM ({RESPONSES}) WHERE pair_id IS NULL", params)

    by_prompt: dict[str, list[str]] = {}
    for c in kept_candidates:
        by_prompt.setdefault(c["prompt_id"], []).append(c["response_id"])
    formed = [(content_hash("pair", prompt_id, a, b), prompt_id, a, b)
              for prompt_id, ids in by_prompt.items() for i, a in enumerate(ids) for b in ids[i + 1:]]
    kept_pair_set = set(kept_pairs)
    kept_responses = ({c["response_id"] for c in kept_candidates}
                      | {r["response_id"] for r in rows if r["pair_id"] in kept_pair_set})
    recipe = {"source": dataset, "model": model, "method": "perplexity filter",
              "rule": "max_ppl" if max_ppl is not None else "keep_quantile",
              "value": max_ppl if max_ppl is not None else keep_quantile, "per_prompt": per_prompt,
              "threshold": threshold}
    return FilterPlan(dataset, recipe, threshold, rows, kept_pairs, formed, kept_responses,
                      store.scalar("SELECT count(*) FROM dataset_prompts WHERE dataset_id = ?", [dataset_id]))


def save_filtered(store: Store, plan: FilterPlan, into: str) -> str:
    """Write the plan's pairs as the new dataset `into`; returns the summary."""
    if store.dataset_id(into) is not None:
        raise FilterError(f"a dataset named '{into}' already exists; choose another name")
    with store.transaction() as cur:
        new_id = create_dataset(cur, into, plan.recipe)
        for pair_id in plan.kept_pairs:
            cur.execute("INSERT INTO dataset_pairs VALUES (?, ?)", [new_id, pair_id])
        for pair_id, prompt_id, a, b in plan.formed_pairs:
            cur.execute("INSERT OR IGNORE INTO pairs (id, prompt_id, first_id, second_id, source) "
                        "VALUES (?, ?, ?, ?, 'perplexity filter')", [pair_id, prompt_id, a, b])
            cur.execute("INSERT OR IGNORE INTO dataset_pairs VALUES (?, ?)", [new_id, pair_id])
        cur.execute("""INSERT INTO dataset_prompts SELECT DISTINCT ?, prompt_id FROM pairs
                       WHERE id IN (SELECT pair_id FROM dataset_pairs WHERE dataset_id = ?)""", [new_id, new_id])
    return plan.summary(into)


def filter_by_perplexity(store: Store, dataset: str, model: str, into: str, max_ppl: float | None = None,
                         keep_quantile: float | None = None, per_prompt: bool = False) -> FilterPlan:
    """Plan and save in one step (the CLI's `filter`)."""
    plan = plan_filter(store, dataset, model, max_ppl, keep_quantile, per_prompt)
    save_filtered(store, plan, into)
    return plan
