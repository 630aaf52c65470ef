"""Browse and curate a dataset's pairs: search and paging, one pair in full, remove, copy, move.

Removing a pair takes it out of a dataset; the pair, its responses and its labels stay in the
store (another dataset may hold it, and labels are never thrown away).
"""

from __future__ import annotations

import hashlib
import json
import re
import weakref

import numpy as np

from common.errors import StudioError
from store import search as search_index
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


# What a stored message list's JSON holds besides its texts: keys, roles and the punctuation between.
_JSON_WORDS = ("content", "role", "user", "assistant", "system")
_JSON_PUNCTUATION = set("[]{},: ")


def _text_matches(column: str, search: str) -> tuple[str, list]:
    """SQL condition for a message list (JSON) whose text contains `search`, any case.

    Parsing every row's JSON is what costs (about 1 s for a million prompts), so where it can be
    exact the raw JSON is matched instead. A search of plain ASCII without a quote or a backslash
    that is not part of a key or a role can only match inside a message's text, as JSON writes it:
    the one thing to exclude is a match that starts just after an escape's backslash ("nfoo" in
    "\\nfoo"), which the pattern does by wanting an even number of backslashes before it. Rows with
    \\u escapes (control characters) are parsed."""
    text = search.strip()
    exact = f"{_TEXT.format(column)} ILIKE ? ESCAPE '\\'"
    plain = all(" " <= ch <= "~" and ch not in '"\\' for ch in text)
    if (not plain or set(text) <= _JSON_PUNCTUATION
            or any(text.lower() in word for word in _JSON_WORDS)):
        return exact, [_contains(text)]
    pattern = "".join(f"[{ch.lower()}{ch.upper()}]" if ch.isalpha() else f"\\x{ord(ch):02x}" for ch in text)
    # The plain pattern first: RE2 scans for it several times faster than for the exact one, which
    # only rows where it follows a backslash somewhere (an escape such as \n before it) need.
    return (f"regexp_matches({column}, ?) AND (NOT regexp_matches({column}, ?) OR regexp_matches({column}, ?)) "
            f"AND (NOT contains({column}, '\\u') OR {exact})",
            [pattern, rf"\\{pattern}", rf"(?:^|[^\\])(?:\\\\)*{pattern}", _contains(text)])


IN_DATASET = "p.id IN (SELECT pair_id FROM dataset_pairs WHERE dataset_id = ?)"
PAIR_ID = re.compile(r"[0-9a-f]{32}")
_KEPT_SEARCHES = 2
_searches: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # store -> {(dataset, search, members): ids}


def _matching_ids(store: Store, dataset_id: int, search: str):
    """The ids of the dataset's pairs whose prompt or responses contain `search` (or whose id it
    is), in import order, as a numpy array of bytes.

    A search reads all the text in the store (about 1 GB at a million pairs), so its result is
    kept for the next request (the next page) and used while the dataset holds the same pairs."""
    search = search.strip()
    if PAIR_ID.fullmatch(search) and store.scalar(
            "SELECT count(*) FROM dataset_pairs WHERE dataset_id = ? AND pair_id = ?", [dataset_id, search]):
        return np.array([search], dtype="S32")  # a pair's own id: that pair, without reading any text
    members = tuple(store.query("SELECT count(*) AS n, bit_xor(hash(pair_id)) AS xor FROM dataset_pairs "
                                "WHERE dataset_id = ?", [dataset_id])[0].values())
    kept = _searches.setdefault(store, {})
    key = (dataset_id, search, members)
    if key not in kept:
        condition, params = _text_matches("messages", search)
        # The matching pairs of the whole store first, then those of the dataset: a semi-join of the
        # few hits, not of every pair (about 100 ms less at a million pairs).
        ids = store.column(f"""
            WITH hit_responses AS MATERIALIZED (SELECT id FROM responses WHERE {condition}),
            hits AS MATERIALIZED (
                SELECT p.id, p.rowid AS position FROM pairs p WHERE p.id = ?
                OR p.prompt_id IN (SELECT id FROM prompts WHERE {condition})
                OR p.first_id IN (SELECT id FROM hit_responses) OR p.second_id IN (SELECT id FROM hit_responses))
            SELECT id FROM hits WHERE id IN (SELECT pair_id FROM dataset_pairs WHERE dataset_id = ?)
            ORDER BY position""", [*params, search, *params, dataset_id])
        while len(kept) >= _KEPT_SEARCHES:
            kept.pop(next(iter(kept)))
        kept[key] = np.asarray(ids, dtype="S32")
    return kept[key]


def _indexed(store: Store, dataset_id: int, search: str, first: int = 0, page_size: int | None = None,
             in_transaction: bool = False) -> tuple[list[str], int] | None:
    """A page of the dataset's pairs holding the words (and "phrases") of `search`, from the word
    index, and how many there are; None when the index cannot answer: text that is not only words,
    or words it does not hold (a part of a word), which the substring search then looks for."""
    phrases = search_index.parse(search)
    if phrases is None:
        return None
    found = search_index.search(store, dataset_id, phrases, first, page_size, may_write=not in_transaction)
    return found if found is not None and found[1] else None


def _pairs_by_id(store: Store, ids: list[str]) -> list[dict]:
    """Pairs with their texts and label counts, in the order of `ids` (a page: a few dozen)."""
    if not ids:
        return []
    rows = store.query(f"""
        SELECT p.id, pr.messages AS prompt, a.messages AS first, b.messages AS second, p.source_verdict,
               (SELECT count(*) FROM labels l WHERE l.pair_id = p.id) AS labels
        FROM pairs p JOIN prompts pr ON pr.id = p.prompt_id
        JOIN responses a ON a.id = p.first_id JOIN responses b ON b.id = p.second_id
        WHERE p.id IN ({", ".join("?" * len(ids))})""", ids)  # a list of values: looked up in the index
    for r in rows:
        for key in ("prompt", "first", "second"):
            r[key] = json.loads(r[key])
    position = {pair_id: i for i, pair_id in enumerate(ids)}
    return sorted(rows, key=lambda r: position[r["id"]])


def count_pairs(store: Store, dataset: str) -> int:
    """How many pairs a dataset holds."""
    return store.scalar("SELECT count(*) FROM dataset_pairs WHERE dataset_id = ?", [_dataset_id(store, dataset)])


def find_pairs(store: Store, dataset: str, search: str = "", page: int = 1,
               page_size: int = PAGE_SIZE) -> tuple[list[dict], int]:
    """One page of a dataset's pairs (in import order) matching `search`, and how many match.

    `search` is words (and "quoted phrases") a pair's messages hold, found in the word index
    (store.search); text any of them contains (any case), where the index cannot answer; or a
    pair's id."""
    dataset_id = _dataset_id(store, dataset)
    first = (max(page, 1) - 1) * page_size
    if not search.strip():
        total = count_pairs(store, dataset)
        # The page's ids first, from the ids alone; then their texts (joining texts before the
        # LIMIT would read every pair's).
        ids = [r["id"] for r in store.query(f"SELECT p.id FROM pairs p WHERE {IN_DATASET} ORDER BY p.rowid "
                                            "LIMIT ? OFFSET ?", [dataset_id, page_size, first])]
    elif (found := _indexed(store, dataset_id, search, first, page_size)) is not None:
        ids, total = found
    else:
        matching = _matching_ids(store, dataset_id, search)
        total = len(matching)
        ids = [i.decode() for i in matching[first:first + page_size]]
    return _pairs_by_id(store, ids), total


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


def _selected(cur, store: Store, dataset_id: int, pair_ids: list[str] | None, search: str) -> list[str]:
    """The given pairs of the dataset (those it holds), else all its pairs matching `search`."""
    if pair_ids is None:
        if search.strip():
            found = _indexed(store, dataset_id, search, in_transaction=True)
            return found[0] if found is not None else [i.decode() for i in _matching_ids(store, dataset_id, search)]
        return [r[0] for r in cur.execute(f"SELECT p.id FROM pairs p WHERE {IN_DATASET} ORDER BY p.rowid",
                                          [dataset_id]).fetchall()]
    return [r[0] for r in cur.execute(f"""SELECT p.id FROM pairs p WHERE {IN_DATASET}
                                          AND p.id IN (SELECT unnest(?::VARCHAR[])) ORDER BY p.rowid""",
                                      [dataset_id, pair_ids]).fetchall()]


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
    if pair_ids is None and search.strip():  # the word index in step first: inside the transaction it cannot be
        search_index.sync(store, _dataset_id(store, dataset))
    with store.transaction() as cur:
        dataset_id = _dataset_id(store, dataset)
        chosen = _selected(cur, store, dataset_id, pair_ids, search)
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
    if pair_ids is None and search.strip():
        search_index.sync(store, _dataset_id(store, dataset))
    with store.transaction() as cur:
        dataset_id = _dataset_id(store, dataset)
        chosen = _selected(cur, store, dataset_id, pair_ids, search)
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
