"""Browse and curate a dataset's pairs: search and paging, one pair in full, remove, copy, move.

Removing a pair takes it out of a dataset; the pair, its responses and its labels stay in the
store (another dataset may hold it, and labels are never thrown away).
"""

from __future__ import annotations

import hashlib
import json

from common.errors import StudioError
from store.db import Store, create_dataset, fetch_one

PAGE_SIZE = 20

# All message text of a JSON message list, for searching.
_TEXT = "array_to_string(json_extract_string({}, '$[*].content'), ' ')"


class CurationError(StudioError, ValueError):
    pass


def _dataset_id(store: Store, name: str) -> int:
    dataset_id = store.dataset_id(name)
    if dataset_id is None:
        raise CurationError(f"no dataset named '{name}'")
    return dataset_id


def _contains(search: str) -> str:
    """An ILIKE pattern (ESCAPE '\\') for text containing `search` literally."""
    return "%" + search.strip().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _matching(search: str) -> tuple[str, list]:
    """SQL condition (over pairs p) for pairs whose prompt or responses contain `search`, or
    whose id it is."""
    if not search.strip():
        return "true", []
    condition = " OR ".join(
        f"{_TEXT.format(col)} ILIKE ? ESCAPE '\\'" for col in
        ("(SELECT messages FROM prompts WHERE id = p.prompt_id)",
         "(SELECT messages FROM responses WHERE id = p.first_id)",
         "(SELECT messages FROM responses WHERE id = p.second_id)"))
    return f"(p.id = ? OR {condition})", [search.strip()] + [_contains(search)] * 3


def find_pairs(store: Store, dataset: str, search: str = "", page: int = 1,
               page_size: int = PAGE_SIZE) -> tuple[list[dict], int]:
    """One page of a dataset's pairs (in import order) matching `search`, and how many match."""
    dataset_id = _dataset_id(store, dataset)
    condition, params = _matching(search)
    where = f"p.id IN (SELECT pair_id FROM dataset_pairs WHERE dataset_id = ?) AND {condition}"
    total = store.scalar(f"SELECT count(*) FROM pairs p WHERE {where}", [dataset_id, *params])
    rows = store.query(f"""
        SELECT p.id, pr.messages AS prompt, a.messages AS first, b.messages AS second, p.source_verdict,
               (SELECT count(*) FROM labels l WHERE l.pair_id = p.id) AS labels
        FROM pairs p JOIN prompts pr ON pr.id = p.prompt_id
        JOIN responses a ON a.id = p.first_id JOIN responses b ON b.id = p.second_id
        WHERE {where} ORDER BY p.rowid LIMIT ? OFFSET ?""",
        [dataset_id, *params, page_size, (max(page, 1) - 1) * page_size])
    for r in rows:
        for key in ("prompt", "first", "second"):
            r[key] = json.loads(r[key])
    return rows, total


def find_prompts(store: Store, dataset: str, search: str = "", page: int = 1,
                 page_size: int = PAGE_SIZE) -> tuple[list[dict], int]:
    """One page of a dataset's prompts (in stored order) matching `search`, with how many answers
    each has in the store, and how many match: a prompts-only dataset is browsed this way."""
    dataset_id = _dataset_id(store, dataset)
    condition, params = "true", []
    if search.strip():
        condition, params = f"{_TEXT.format('pr.messages')} ILIKE ? ESCAPE '\\'", [_contains(search)]
    where = f"pr.id IN (SELECT prompt_id FROM dataset_prompts WHERE dataset_id = ?) AND {condition}"
    total = store.scalar(f"SELECT count(*) FROM prompts pr WHERE {where}", [dataset_id, *params])
    rows = store.query(f"""
        SELECT pr.id, pr.messages AS prompt, (SELECT count(*) FROM responses r WHERE r.prompt_id = pr.id) AS answers
        FROM prompts pr WHERE {where} ORDER BY pr.rowid LIMIT ? OFFSET ?""",
        [dataset_id, *params, page_size, (max(page, 1) - 1) * page_size])
    for r in rows:
        r["prompt"] = json.loads(r["prompt"])
    return rows, total


def get_pair(store: Store, pair_id: str) -> dict:
    """A pair in full: prompt and both responses (messages, model), its source verdict, its labels
    and the datasets holding it."""
    rows = store.query("""
        SELECT p.id, pr.messages AS prompt, a.messages AS first, b.messages AS second,
               a.model AS first_model, b.model AS second_model, p.source_verdict, p.source
        FROM pairs p JOIN prompts pr ON pr.id = p.prompt_id
        JOIN responses a ON a.id = p.first_id JOIN responses b ON b.id = p.second_id
        WHERE p.id = ?""", [pair_id])
    if not rows:
        raise CurationError(f"no pair {pair_id}")
    pair = rows[0]
    for key in ("prompt", "first", "second"):
        pair[key] = json.loads(pair[key])
    pair["labels"] = store.query(
        "SELECT annotator, verdict, created_at FROM labels WHERE pair_id = ? ORDER BY id", [pair_id])
    pair["datasets"] = [r["name"] for r in store.query(
        "SELECT d.name FROM datasets d JOIN dataset_pairs dp ON dp.dataset_id = d.id "
        "WHERE dp.pair_id = ? ORDER BY d.id", [pair_id])]
    return pair


def _selected(cur, dataset_id: int, pair_ids: list[str] | None, search: str) -> list[str]:
    condition, params = _matching(search)
    ids_filter = "true" if pair_ids is None else "p.id IN (SELECT unnest(?::VARCHAR[]))"
    return [r[0] for r in cur.execute(f"""
        SELECT p.id FROM pairs p
        WHERE p.id IN (SELECT pair_id FROM dataset_pairs WHERE dataset_id = ?) AND {ids_filter} AND {condition}
        ORDER BY p.rowid""", [dataset_id, *([pair_ids] if pair_ids is not None else []), *params]).fetchall()]


def _add_prompts(cur, dataset_id: int, pair_ids: list[str]) -> None:
    cur.execute("""INSERT OR IGNORE INTO dataset_prompts
                   SELECT DISTINCT ?, prompt_id FROM pairs WHERE id IN (SELECT unnest(?::VARCHAR[]))""",
                [dataset_id, pair_ids])


def _take_out(cur, dataset_id: int, pair_ids: list[str]) -> None:
    """Take pairs out of a dataset, and with them the prompts no remaining pair of it asks."""
    cur.execute("DELETE FROM dataset_pairs WHERE dataset_id = ? AND pair_id IN (SELECT unnest(?::VARCHAR[]))",
                [dataset_id, pair_ids])
    cur.execute("""DELETE FROM dataset_prompts WHERE dataset_id = $d
                   AND prompt_id IN (SELECT prompt_id FROM pairs WHERE id IN (SELECT unnest($ids::VARCHAR[])))
                   AND prompt_id NOT IN (SELECT prompt_id FROM pairs
                                         WHERE id IN (SELECT pair_id FROM dataset_pairs WHERE dataset_id = $d))""",
                {"d": dataset_id, "ids": pair_ids})


def remove_pairs(store: Store, dataset: str, pair_ids: list[str] | None = None, search: str = "") -> int:
    """Take pairs out of a dataset: the given ones, else all matching `search`. Returns how many."""
    with store.transaction() as cur:
        dataset_id = _dataset_id(store, dataset)
        chosen = _selected(cur, dataset_id, pair_ids, search)
        _take_out(cur, dataset_id, chosen)
    return len(chosen)


def copy_pairs(store: Store, dataset: str, into: str, pair_ids: list[str] | None = None, search: str = "",
               move: bool = False) -> int:
    """Copy (or move) pairs of `dataset` into `into`, created if new: the given ones, else all
    matching `search`. Returns how many were selected."""
    into = into.strip()
    if not into:
        raise CurationError("name the dataset to copy or move the pairs into")
    if into == dataset:
        raise CurationError("the pairs are already in that dataset")
    with store.transaction() as cur:
        dataset_id = _dataset_id(store, dataset)
        chosen = _selected(cur, dataset_id, pair_ids, search)
        if not chosen:
            raise CurationError("no pair selected")
        row = fetch_one(cur, "SELECT id FROM datasets WHERE name = ?", [into])
        target = row[0] if row else create_dataset(
            cur, into, {"source": "curation", "from": dataset, "search": search or None})
        cur.execute("INSERT OR IGNORE INTO dataset_pairs SELECT ?, unnest(?::VARCHAR[])", [target, chosen])
        _add_prompts(cur, target, chosen)
        if move:
            _take_out(cur, dataset_id, chosen)
    return len(chosen)


def seeded_order(keys, seed: int) -> list[str]:
    """The keys in an order fixed by a seed (a hash of seed and key), whatever order they came in."""
    return sorted(set(keys), key=lambda k: hashlib.sha256(f"{seed}:{k}".encode()).hexdigest())


def split_pairs(store: Store, dataset: str, into: tuple[str, str], share: float = 0.5, by: str = "prompt",
                seed: int = 0) -> tuple[int, int]:
    """Split a dataset's pairs into two new datasets: `share` of them into the first, the rest into
    the second, in a seeded order. By "prompt", every pair of a prompt goes with it, so the two
    share no prompt (a judge trained on one is independent of a policy trained on the other); by
    "pair", the pairs are drawn one by one (a random sample). Returns the two pair counts."""
    if by not in ("prompt", "pair"):
        raise CurationError(f"split by 'prompt' or 'pair', not {by!r}")
    if not 0 < share < 1:
        raise CurationError(f"the share of the first part must be between 0 and 1, got {share}")
    names = [n.strip() for n in into]
    if not all(names) or names[0] == names[1]:
        raise CurationError("name two different datasets to split into")
    with store.transaction() as cur:
        dataset_id = _dataset_id(store, dataset)
        targets = []  # made first (a bad name is refused before any work); undone with the rest on an error
        for half, name in enumerate(names):
            if fetch_one(cur, "SELECT id FROM datasets WHERE name = ?", [name]):
                raise CurationError(f"a dataset named '{name}' exists already; choose another name")
            targets.append(create_dataset(cur, name, {"source": "split", "from": dataset, "by": by, "share": share,
                                                       "part": half + 1, "seed": seed}))
        rows = cur.execute("""SELECT id, prompt_id FROM pairs
                              WHERE id IN (SELECT pair_id FROM dataset_pairs WHERE dataset_id = ?)""",
                           [dataset_id]).fetchall()
        key_of = {pair_id: (prompt_id if by == "prompt" else pair_id) for pair_id, prompt_id in rows}
        order = seeded_order(key_of.values(), seed)
        if len(order) < 2:
            raise CurationError(f"'{dataset}' has pairs on fewer than two {by}s: nothing to split")
        cut = min(max(1, round(len(order) * share)), len(order) - 1)
        first = set(order[:cut])
        parts = ([p for p, k in key_of.items() if k in first], [p for p, k in key_of.items() if k not in first])
        for target, pair_ids in zip(targets, parts):
            cur.execute("INSERT INTO dataset_pairs SELECT ?, unnest(?::VARCHAR[])", [target, pair_ids])
            _add_prompts(cur, target, pair_ids)
    return len(parts[0]), len(parts[1])
