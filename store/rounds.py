"""The pairs of a round: for each prompt, a model's best answer against its worst by a reward model.

A round (studio.rounds) samples N answers per prompt from the current policy and scores them; here
they become a new dataset of pairs, the best answer first (the pair's verdict), where the best
beats the worst by more than a margin. Iterative DPO trains on those pairs; rejection sampling
fine-tunes (SFT) on their preferred side, the best answer of each prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.errors import StudioError
from store.db import Store, content_hash, create_dataset


class RoundError(StudioError, ValueError):
    pass


@dataclass(frozen=True)
class RoundPairs:
    dataset: str
    prompts: int        # prompts with at least one scored answer of the model
    pairs: int          # best against worst, kept
    too_close: int      # prompts whose best and worst are within the margin (no pair)
    single: int         # prompts with one scored answer only (no pair)
    mean_best: float | None
    mean_worst: float | None

    def summary(self) -> str:
        left = [f"{n} {why}" for n, why in ((self.too_close, "within the margin"), (self.single, "with one answer"))
                if n]
        return (f"{self.pairs} pairs (best against worst) from {self.prompts} prompts into '{self.dataset}'"
                + (f"; left out {', '.join(left)}" if left else ""))


def best_against_worst(store: Store, dataset: str, model: str, reward_model: str, into: str, margin: float = 0.0,
                       recipe: dict | None = None) -> RoundPairs:
    """For each prompt of `dataset`, `model`'s answers scored by `reward_model`: the best against
    the worst as a pair (best first: its verdict), kept where the best leads by more than `margin`,
    in a new dataset `into`. Empty answers are left out. Nothing is written when no pair can be made."""
    dataset_id = store.dataset_id(dataset)
    if dataset_id is None:
        raise RoundError(f"no dataset named '{dataset}'")
    if store.dataset_id(into) is not None:
        raise RoundError(f"a dataset named '{into}' already exists")
    rows = store.query("""
        SELECT r.prompt_id, r.id, w.reward FROM responses r
        JOIN rewards w ON w.response_id = r.id AND w.model = ?
        WHERE r.model = ? AND NOT r.is_empty
          AND r.prompt_id IN (SELECT prompt_id FROM dataset_prompts WHERE dataset_id = ?)
        ORDER BY r.prompt_id, r.id""", [reward_model, model, dataset_id])
    by_prompt: dict[str, list[tuple[float, str]]] = {}
    for r in rows:
        by_prompt.setdefault(r["prompt_id"], []).append((r["reward"], r["id"]))
    pairs, too_close, single = [], 0, 0
    for prompt_id, scored in by_prompt.items():
        if len(scored) < 2:
            single += 1
            continue
        scored.sort(key=lambda s: (-s[0], s[1]))
        (best, best_id), (worst, worst_id) = scored[0], scored[-1]
        if best - worst <= margin:
            too_close += 1
            continue
        pairs.append((content_hash("pair", prompt_id, best_id, worst_id), prompt_id, best_id, worst_id, best, worst))
    if not pairs:
        raise RoundError(f"no pair can be made from '{dataset}': of {len(by_prompt)} prompts with answers of {model} "
                         f"scored by {reward_model}, {too_close} have their best within {margin} of their worst and "
                         f"{single} have one answer; sample more answers per prompt or lower the margin")
    with store.transaction() as cur:
        new_id = create_dataset(cur, into, {"source": dataset, "method": "best against worst", "model": model,
                                            "reward_model": reward_model, "margin": margin, **(recipe or {})})
        for pair_id, prompt_id, best_id, worst_id, _, _ in pairs:
            cur.execute("""INSERT OR IGNORE INTO pairs (id, prompt_id, first_id, second_id, source_verdict, source,
                                                        first_model, second_model)
                           VALUES (?, ?, ?, ?, 'first', 'round', ?, ?)""",
                        [pair_id, prompt_id, best_id, worst_id, model, model])
            # The same two answers paired before without a verdict (a perplexity filter): the round gives it.
            cur.execute("UPDATE pairs SET source_verdict = 'first' WHERE id = ? AND source_verdict IS NULL", [pair_id])
            cur.execute("INSERT INTO dataset_pairs VALUES (?, ?)", [new_id, pair_id])
            cur.execute("INSERT OR IGNORE INTO dataset_prompts VALUES (?, ?)", [new_id, prompt_id])
    return RoundPairs(into, len(by_prompt), len(pairs), too_close, single,
                      sum(p[4] for p in pairs) / len(pairs), sum(p[5] for p in pairs) / len(pairs))


def scored_samples(store: Store, dataset: str, model: str, seed: int, proxy: str, judge: str | None) -> list[dict]:
    """`model`'s answers to the prompts of `dataset` sampled with `seed` (one generation), each with
    its sample index, its text and how it ended (what a rule reads), and its rewards under the
    reward models `proxy` and `judge` (None: no judge reward model; a rule judges)."""
    return store.query(f"""
        SELECT r.prompt_id, CAST(json_extract(r.generation, '$.sample') AS INTEGER) AS sample,
               json_extract_string(r.messages, '$[0].content') AS text,
               coalesce(json_extract_string(r.generation, '$.finish'), 'stop') AS finish,
               p.reward AS proxy, {'j.reward' if judge else 'NULL'} AS judge
        FROM responses r
        JOIN rewards p ON p.response_id = r.id AND p.model = $proxy
        {'JOIN rewards j ON j.response_id = r.id AND j.model = $judge' if judge else ''}
        WHERE r.model = $model AND CAST(json_extract(r.generation, '$.seed') AS INTEGER) = $seed
          AND r.prompt_id IN (SELECT prompt_id FROM dataset_prompts dp JOIN datasets d ON d.id = dp.dataset_id
                              WHERE d.name = $dataset)
        ORDER BY r.prompt_id, sample""", {"proxy": proxy, "model": model, "seed": seed, "dataset": dataset,
                                          **({"judge": judge} if judge else {})})
