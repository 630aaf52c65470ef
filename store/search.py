"""Word and phrase search over a dataset's pairs: a tantivy index beside the workspace database.

The index holds one document per pair of each dataset (a pair in two datasets is two documents):
the text of its prompt and both answers, its dataset and its position (the pair's place in import
order, the order the Data tab lists pairs in). It is derived from the store, never the truth: the
table `search_index` lists what it holds, and before a dataset is searched that list is compared
with the dataset's pairs (a count and a hash of the ids: a few ms at a million pairs). What differs
is added or taken out first, and the index is committed inside the store transaction that records
it, so the two move together or not at all. Every import, copy, move, removal, filter or arena vote
is therefore in step by the next search, whichever code wrote it; an import brings the index in step
at once (`sync`), so that the first search after it is fast. An index that is missing, damaged or
holds another count of documents than the table says is rebuilt.

A search of words finds the pairs holding every one of them, in any case; "a quoted phrase" the
pairs holding its words in that order. Text with other characters (punctuation, an escape) cannot be
told apart by words, and the caller (store.pairs) searches it as a substring instead, as it does a
word the index does not know (a part of a word: "neighb").
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import weakref
from pathlib import Path

import tantivy

from store.db import Store

log = logging.getLogger(__name__)

# All message text of a JSON message list (as store.pairs searches it).
_TEXT = "array_to_string(json_extract_string({}, '$[*].content'), ' ')"
MAX_WORD_CHARS = 40  # longer tokens are left out of the index (tantivy's default tokenizer does the same)
BATCH = 2_000        # documents read from the store at a time while indexing (a pair's texts can be long)
WRITER_HEAP = 128_000_000
# A search the index answers: words and "quoted phrases", nothing else.
_WORDS_ONLY = re.compile(r'[\w\s"]+')


def _schema() -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    builder.add_text_field("member", tokenizer_name="raw", index_option="basic")  # "<dataset>:<pair id>"
    builder.add_text_field("pair_id", stored=True, tokenizer_name="raw", index_option="basic")
    builder.add_integer_field("dataset", indexed=True)
    builder.add_integer_field("position", fast=True)
    builder.add_text_field("text", tokenizer_name="default")  # lower-cased words, with positions for phrases
    return builder.build()


_ANALYZER = (tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
             .filter(tantivy.Filter.remove_long(MAX_WORD_CHARS)).filter(tantivy.Filter.lowercase()).build())
_indexes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # store -> its open Index


def index_folder(store: Store) -> Path:
    return store.path.with_name(store.path.stem + ".search")


def _index(store: Store) -> tantivy.Index:
    if store not in _indexes:
        folder = index_folder(store)
        if folder.exists() and not folder.is_dir():  # a file in its place: the index is derived data, made anew
            folder.unlink()
        folder.mkdir(exist_ok=True)
        try:
            _indexes[store] = tantivy.Index(_schema(), path=str(folder), reuse=True)
        except (OSError, ValueError):  # damaged, or made by another schema: it is only derived data
            shutil.rmtree(folder)
            folder.mkdir()
            _indexes[store] = tantivy.Index(_schema(), path=str(folder))
    return _indexes[store]


def parse(search: str) -> list[list[str]] | None:
    """The search as the index reads it: a list of phrases (a word alone is a phrase of one), each
    a list of lower-cased words; None when the index cannot answer it exactly."""
    text = search.strip()
    if not text or not _WORDS_ONLY.fullmatch(text) or text.count('"') % 2:
        return None
    phrases = []
    for i, part in enumerate(text.split('"')):
        words = _ANALYZER.analyze(part)
        if "".join(words) != "".join(part.lower().split()):  # a word too long to index, or one the case changed
            return None
        phrases += [words] if i % 2 and words else [[w] for w in words]
    return phrases or None


def _query(index: tantivy.Index, dataset_id: int, phrases: list[list[str]]) -> tantivy.Query:
    schema = index.schema
    parts = [(tantivy.Occur.Must, tantivy.Query.term_query(schema, "dataset", dataset_id))]
    for words in phrases:
        query = (tantivy.Query.term_query(schema, "text", words[0]) if len(words) == 1
                 else tantivy.Query.phrase_query(schema, "text", words))
        parts.append((tantivy.Occur.Must, query))
    return tantivy.Query.boolean_query(parts)


# What tantivy raises for an index deleted, damaged or locked under it (and the file system's own).
INDEX_FAULTS = (OSError, ValueError, RuntimeError)


def forget(store: Store) -> None:
    """Drop the open index of `store`: the next use opens it again, or rebuilds it where it is damaged."""
    _indexes.pop(store, None)


def _twice(store: Store, failing: str, attempt, fallback, after_first_fault=None):
    """`attempt()`, and once more after a fault of the index (deleted, damaged or locked under us:
    forgotten, so opened again; `after_first_fault` clears what must be rebuilt); `fallback` when
    the second try fails too. A fault is logged, never shown."""
    for tried in (1, 2):
        try:
            return attempt()
        except INDEX_FAULTS as e:
            log.warning("the search index of %s %s (%s); %s", store.path, failing, e,
                        "opening it again" if tried == 1 else "searching the text instead")
            forget(store)
            if tried == 1 and after_first_fault is not None:
                after_first_fault()
    return fallback


def _drop_index(store: Store) -> None:
    """Delete a damaged index and its list of documents: rebuilt from the store on the next use."""
    if store.read_only:
        return
    with contextlib.suppress(OSError):
        shutil.rmtree(index_folder(store))
    with store.transaction() as cur:
        cur.execute("DELETE FROM search_index")


def search(store: Store, dataset_id: int, phrases: list[list[str]], offset: int = 0,
           limit: int | None = None, may_write: bool = True) -> tuple[list[str], int] | None:
    """The pair ids (import order) of the dataset's pairs holding every phrase, from `offset`, at
    most `limit` (None: all), and how many there are; None when the index is not in step and cannot
    be brought in step (a read-only store, another process writing the index, or `may_write` False:
    the caller holds the store's transaction), or when it was deleted or damaged and cannot be made
    again now: then the caller scans. A fault is never shown: the index is opened (or rebuilt) again."""
    return _twice(store, "failed", lambda: _search(store, dataset_id, phrases, offset, limit, may_write), None,
                  after_first_fault=lambda: _drop_index(store))


def _search(store: Store, dataset_id: int, phrases: list[list[str]], offset: int, limit: int | None,
            may_write: bool) -> tuple[list[str], int] | None:
    if not (sync(store, dataset_id) if may_write else in_step(store, dataset_id) and _whole(store)):
        return None
    index = _index(store)
    searcher = index.searcher()
    query = _query(index, dataset_id, phrases)
    if limit is None:  # every match: how many first, then all of them
        limit = max(searcher.search(query, limit=1, count=True).count - offset, 1)
    found = searcher.search(query, limit=limit, offset=offset, count=True, order_by_field="position",
                            order=tantivy.Order.Asc)
    return [searcher.doc(address)["pair_id"][0] for _, address in found.hits], found.count


def _members_sql(table: str) -> str:
    return f"SELECT count(*), bit_xor(hash(pair_id)) FROM {table} WHERE dataset_id = ?"


def in_step(store: Store, dataset_id: int) -> bool:
    return (store.query(_members_sql("dataset_pairs"), [dataset_id])
            == store.query(_members_sql("search_index"), [dataset_id]))


def sync(store: Store, dataset_id: int | None = None) -> bool:
    """Bring the index in step with one dataset's pairs (None: every dataset), and take out the
    documents of datasets that are gone. Returns False when it cannot be written now (never raises:
    the index is derived data, and an import or a label stands without it)."""
    return _twice(store, "cannot be brought in step", lambda: _sync(store, dataset_id), False)


def _sync(store: Store, dataset_id: int | None = None) -> bool:
    datasets = [dataset_id] if dataset_id is not None else [
        r["id"] for r in store.query("SELECT id FROM datasets ORDER BY id")]
    stale = [d for d in datasets if not in_step(store, d)]
    gone = store.query("SELECT DISTINCT dataset_id FROM search_index WHERE dataset_id NOT IN (SELECT id FROM datasets)")
    if not stale and not gone and _whole(store):
        return True
    if store.read_only:
        return False
    try:
        _write(store, stale, [r["dataset_id"] for r in gone])
    except INDEX_FAULTS as e:  # another process holds the writer lock, or the index was deleted under us
        log.warning("the search index of %s cannot be written now (%s); searching the text instead", store.path, e)
        forget(store)
        return False
    return True


def _whole(store: Store) -> bool:
    """The index holds as many documents as `search_index` lists (else it was lost or damaged)."""
    index = _index(store)
    index.reload()
    return index.searcher().num_docs == store.scalar("SELECT count(*) FROM search_index")


def _write(store: Store, datasets: list[int], gone: list[int]) -> None:
    index = _index(store)
    rebuild = not _whole(store)
    writer = index.writer(WRITER_HEAP)
    try:
        with store.transaction() as cur:
            if rebuild:
                writer.delete_all_documents()
                cur.execute("DELETE FROM search_index")
                datasets = [r[0] for r in cur.execute("SELECT id FROM datasets").fetchall()]
            for dataset_id in gone:
                writer.delete_documents_by_query(tantivy.Query.term_query(index.schema, "dataset", dataset_id))
                cur.execute("DELETE FROM search_index WHERE dataset_id = ?", [dataset_id])
            for dataset_id in datasets:
                _take_out_gone_pairs(cur, writer, dataset_id)
                _add_new_pairs(cur, writer, dataset_id)
            writer.commit()  # inside the store's transaction: if it fails, the table is rolled back too
        writer.wait_merging_threads()
    except BaseException:
        writer.rollback()
        raise
    index.reload()


def _take_out_gone_pairs(cur, writer: tantivy.IndexWriter, dataset_id: int) -> None:
    gone = [r[0] for r in cur.execute("""
        SELECT pair_id FROM search_index WHERE dataset_id = $d
        AND pair_id NOT IN (SELECT pair_id FROM dataset_pairs WHERE dataset_id = $d)""", {"d": dataset_id}).fetchall()]
    for pair_id in gone:
        writer.delete_documents_by_term("member", f"{dataset_id}:{pair_id}")
    cur.execute("""DELETE FROM search_index WHERE dataset_id = $d
                   AND pair_id NOT IN (SELECT pair_id FROM dataset_pairs WHERE dataset_id = $d)""", {"d": dataset_id})


def _texts(cur, table: str, ids: list[str]) -> dict[str, str]:
    """The message text of these rows of `table`, looked up by id (a list of values: DuckDB answers
    it from the primary key's index, so memory stays that of one batch)."""
    if not ids:
        return {}
    rows = cur.execute(f"SELECT id, {_TEXT.format('messages')} FROM {table} WHERE id IN ({', '.join('?' * len(ids))})",
                       ids).fetchall()
    return dict(rows)


def _add_new_pairs(cur, writer: tantivy.IndexWriter, dataset_id: int) -> None:
    """Index the dataset's pairs the index does not hold. The ids stream in batches; each batch's
    texts are looked up by id (joining every text at once would hold them all in memory)."""
    reader = cur.sql("""
        SELECT dp.pair_id, p.rowid AS position, p.prompt_id, p.first_id, p.second_id
        FROM dataset_pairs dp JOIN pairs p ON p.id = dp.pair_id
        WHERE dp.dataset_id = $d AND dp.pair_id NOT IN (SELECT pair_id FROM search_index WHERE dataset_id = $d)
        """, params={"d": dataset_id}).to_arrow_reader(BATCH)
    lookup = cur.cursor()  # the stream above stays open on `cur`
    added = []
    try:
        for batch in reader:
            pair_ids, positions, prompt_ids, first_ids, second_ids = (batch.column(i).to_pylist() for i in range(5))
            prompts = _texts(lookup, "prompts", sorted(set(prompt_ids)))
            answers = _texts(lookup, "responses", sorted(set(first_ids) | set(second_ids)))
            for pair_id, position, prompt_id, first_id, second_id in zip(pair_ids, positions, prompt_ids, first_ids,
                                                                         second_ids):
                # No document of this pair can be in the index already: _write rebuilt an index that held
                # another count of documents than the table lists.
                text = " ".join(t for t in (prompts.get(prompt_id), answers.get(first_id), answers.get(second_id)) if t)
                writer.add_document(tantivy.Document(member=f"{dataset_id}:{pair_id}", pair_id=pair_id,
                                                     dataset=dataset_id, position=position, text=text))
            added += pair_ids
    finally:
        lookup.close()
    if added:
        cur.execute("INSERT INTO search_index SELECT ?, unnest(?::VARCHAR[])", [dataset_id, added])
