"""The workspace database: one DuckDB file, schema versioned by numbered migrations.

DuckDB allows one writing process per file, so the studio process owns the `Store`; threads in it
each take their own cursor. Every write goes through `transaction()`, which commits all or nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from common.errors import StudioError

APP_ID = "alignment-studio"

# Each entry is one schema version; append, never edit a released one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE prompts (
        id VARCHAR PRIMARY KEY,             -- hash of the messages
        messages JSON NOT NULL,
        created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
    );
    CREATE TABLE responses (
        id VARCHAR PRIMARY KEY,             -- hash of (prompt, messages)
        prompt_id VARCHAR NOT NULL,
        messages JSON NOT NULL,
        is_empty BOOLEAN NOT NULL,          -- kept: an empty answer can be the preferred one
        model VARCHAR,                      -- the model that wrote it, when known
        generation JSON,                    -- sampling settings, when generated here
        source VARCHAR,
        created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
    );
    CREATE TABLE pairs (
        id VARCHAR PRIMARY KEY,             -- hash of (prompt, first, second)
        prompt_id VARCHAR NOT NULL,
        first_id VARCHAR NOT NULL,
        second_id VARCHAR NOT NULL,
        source_verdict VARCHAR CHECK (source_verdict IN ('first', 'second')),  -- NULL: unlabelled
        source VARCHAR,
        created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
    );
    CREATE SEQUENCE dataset_ids;
    CREATE TABLE datasets (
        id INTEGER PRIMARY KEY DEFAULT nextval('dataset_ids'),
        name VARCHAR NOT NULL UNIQUE,
        recipe JSON,                        -- how it was made: source file, filter rule, ...
        created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
    );
    CREATE TABLE dataset_pairs (dataset_id INTEGER, pair_id VARCHAR, PRIMARY KEY (dataset_id, pair_id));
    CREATE TABLE dataset_prompts (dataset_id INTEGER, prompt_id VARCHAR, PRIMARY KEY (dataset_id, prompt_id));
    CREATE SEQUENCE label_ids;
    CREATE TABLE labels (
        id INTEGER PRIMARY KEY DEFAULT nextval('label_ids'),
        pair_id VARCHAR NOT NULL,
        annotator VARCHAR NOT NULL,
        verdict VARCHAR NOT NULL CHECK (verdict IN ('first', 'second', 'tie', 'both-bad', 'skip')),
        swapped BOOLEAN NOT NULL DEFAULT false,  -- shown with second on the left
        created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
    );
    CREATE INDEX labels_pair ON labels (pair_id);
    CREATE SEQUENCE run_ids;
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY DEFAULT nextval('run_ids'),
        kind VARCHAR NOT NULL,
        config JSON NOT NULL,
        status VARCHAR NOT NULL
            CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
        folder VARCHAR,
        pid INTEGER,
        message VARCHAR,
        events_offset BIGINT NOT NULL DEFAULT 0,  -- bytes of events.jsonl already read
        created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
        started_at TIMESTAMP,
        finished_at TIMESTAMP
    );
    CREATE TABLE run_metrics (
        run_id INTEGER NOT NULL,
        step INTEGER NOT NULL,
        name VARCHAR NOT NULL,
        value DOUBLE,
        logged_at TIMESTAMP NOT NULL DEFAULT current_timestamp
    );
    CREATE INDEX run_metrics_run ON run_metrics (run_id);
    CREATE SEQUENCE model_ids;
    CREATE TABLE models (
        id INTEGER PRIMARY KEY DEFAULT nextval('model_ids'),
        name VARCHAR NOT NULL UNIQUE,
        kind VARCHAR NOT NULL CHECK (kind IN ('base', 'adapter', 'merged', 'gguf')),
        path VARCHAR NOT NULL,
        parent_id INTEGER,
        run_id INTEGER,
        created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
    );
    CREATE TABLE perplexities (
        response_id VARCHAR NOT NULL,
        model VARCHAR NOT NULL,
        ppl DOUBLE,
        mean_logprob DOUBLE,
        n_tokens INTEGER NOT NULL,
        engine VARCHAR NOT NULL,
        run_id INTEGER,
        PRIMARY KEY (response_id, model)
    );
    """,
    """
    ALTER TABLE models ADD COLUMN base VARCHAR;     -- the base model an adapter applies to
    ALTER TABLE models ADD COLUMN purpose VARCHAR;  -- 'reward' or 'policy'
    CREATE TABLE rewards (
        response_id VARCHAR NOT NULL,
        model VARCHAR NOT NULL,                     -- the reward model's name
        reward DOUBLE NOT NULL,
        run_id INTEGER,
        PRIMARY KEY (response_id, model)
    );
    """,
    """
    -- The models that wrote a pair's two sides, for pairs made by comparing two models (arena
    -- votes, batch comparisons): kept on the pair because two models can write the same text.
    ALTER TABLE pairs ADD COLUMN first_model VARCHAR;
    ALTER TABLE pairs ADD COLUMN second_model VARCHAR;
    """,
    """
    -- An import writes its rows in committed chunks, so that a large file never sits in memory
    -- as one open transaction. The ids it wrote are staged here: its dataset links are made from
    -- them in one last small transaction, and a failed or killed import's new rows are removed.
    CREATE TABLE import_staging (
        import_id VARCHAR NOT NULL,
        tbl VARCHAR NOT NULL CHECK (tbl IN ('prompts', 'responses', 'pairs')),
        id VARCHAR NOT NULL,
        is_new BOOLEAN NOT NULL             -- added by this import (else it was stored already)
    );
    """,
    """
    -- One name per training method everywhere: the reward model's runs are 'rm', as on the CLI.
    UPDATE runs SET kind = 'rm' WHERE kind = 'reward';
    """,
    """
    -- The dataset a run read (its pairs, prompts or answers), for the lineage of what it made
    -- (the Home tab's map of the loop). NULL for runs made before, and for exports.
    ALTER TABLE runs ADD COLUMN dataset VARCHAR;
    """,
    """
    -- What the search index (store/search.py, a tantivy index beside the database) holds: a
    -- document per pair of a dataset. Compared with dataset_pairs before a search.
    CREATE TABLE search_index (
        dataset_id INTEGER NOT NULL,
        pair_id VARCHAR NOT NULL
    );
    """,
    """
    -- A reward-model ensemble's disagreement about a response: the standard deviation of its
    -- members' rewards (its `reward` is the conservative score, mean - lambda * spread). NULL for
    -- one reward model. The label queue's uncertain order reads it.
    ALTER TABLE rewards ADD COLUMN spread DOUBLE;
    """,
]


COUNTED_TABLES = ("prompts", "responses", "pairs", "labels", "datasets", "runs", "models")


class StoreError(StudioError, RuntimeError):
    """The workspace database cannot be used; the message says why."""


class BadName(StudioError, ValueError):
    """A dataset name the studio will not create."""


RESERVED_DATASETS = ("arena", "demo-prompts")  # made and filled by the studio itself
MAX_NAME_CHARS = 80


def check_dataset_name(name: str, internal: bool = False) -> str:
    """The name, trimmed, if a new dataset may take it: 1-80 characters, no control characters (tabs,
    new lines), at least one letter or digit, not one the studio reserves for its own datasets."""
    trimmed = (name or "").strip()
    if not trimmed:
        raise BadName("give the dataset a name")
    if len(trimmed) > MAX_NAME_CHARS:
        raise BadName(f"a dataset name is at most {MAX_NAME_CHARS} characters (this one has {len(trimmed):,})")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in trimmed):
        raise BadName("a dataset name cannot hold tabs, new lines or other control characters")
    if not any(ch.isalnum() for ch in trimmed):
        raise BadName(f"a dataset name needs a letter or a digit, not only {trimmed!r}")
    if not internal and trimmed.lower() in RESERVED_DATASETS:
        raise BadName(f"'{trimmed}' is the studio's own dataset; pick another name")
    return trimmed


def create_dataset(cur, name: str, recipe: dict, internal: bool = False) -> int:
    """A new dataset `name` made by `recipe`, inside the caller's transaction; its id. The one
    place datasets are created, so every new name passes `check_dataset_name` (`internal`: the
    studio's own, which may use the reserved names)."""
    check_dataset_name(name, internal)
    return fetch_one(cur, "INSERT INTO datasets (name, recipe) VALUES (?, ?) RETURNING id",
                     [name, json.dumps(recipe)])[0]


def canonical_json(value: object) -> str:
    """The JSON text content hashes are taken over: sorted keys, no spaces, text as it is."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def _digest(canonical: str) -> str:
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]


def content_hash(*parts: object) -> str:
    """Stable id for content: sha256 over canonical JSON, 32 hex characters."""
    return _digest(canonical_json(parts))


def prompt_key(messages: list[dict]) -> str:
    return content_hash("prompt", messages)


def response_key(prompt_id: str, messages: list[dict]) -> str:
    return content_hash("response", prompt_id, messages)


# The same keys from messages already in canonical JSON (what a bulk import stores), so that a
# conversation is encoded once, not once for its key and again for the store. Equal to
# prompt_key / response_key: a JSON array's text is its items' texts joined by commas.
def prompt_key_of_json(canonical_messages: str) -> str:
    return _digest(f'["prompt",{canonical_messages}]')


def response_key_of_json(prompt_id: str, canonical_messages: str) -> str:
    return _digest(f'["response",{canonical_json(prompt_id)},{canonical_messages}]')


def is_empty_response(messages: list[dict]) -> bool:
    """No text at all: kept in the store (an empty answer can be the preferred one) but flagged."""
    return not any(m["content"].strip() for m in messages)


def fetch_one(cur: duckdb.DuckDBPyConnection, sql: str, params=None) -> tuple | None:
    """The first row of a query, with the result consumed (DuckDB 2 refuses new work on a
    connection whose last result was only partly fetched)."""
    rows = cur.execute(sql, params or []).fetchall()
    return rows[0] if rows else None


def discard_import(cur: duckdb.DuckDBPyConnection, import_id: str) -> None:
    """Undo an import that did not finish: remove the rows it added, except those that something
    else (a dataset, a label, a score, another import under way) has come to use meanwhile."""
    def new(table: str) -> str:
        return f"SELECT id FROM import_staging WHERE import_id = $import AND tbl = '{table}' AND is_new"

    others = "SELECT id FROM import_staging WHERE import_id <> $import"
    params = {"import": import_id}
    cur.execute(f"""DELETE FROM pairs WHERE id IN ({new('pairs')}) AND id NOT IN ({others})
                    AND id NOT IN (SELECT pair_id FROM dataset_pairs) AND id NOT IN (SELECT pair_id FROM labels)""",
                params)
    cur.execute(f"""DELETE FROM responses WHERE id IN ({new('responses')}) AND id NOT IN ({others})
                    AND id NOT IN (SELECT first_id FROM pairs UNION ALL SELECT second_id FROM pairs)
                    AND id NOT IN (SELECT response_id FROM perplexities UNION ALL SELECT response_id FROM rewards)""",
                params)
    cur.execute(f"""DELETE FROM prompts WHERE id IN ({new('prompts')}) AND id NOT IN ({others})
                    AND id NOT IN (SELECT prompt_id FROM dataset_prompts UNION ALL SELECT prompt_id FROM responses
                                   UNION ALL SELECT prompt_id FROM pairs)""", params)
    cur.execute("DELETE FROM import_staging WHERE import_id = $import", params)


def damaged(path: Path, why: str) -> str:
    return (f"{path}: the workspace database is damaged ({why}). Restore studio.duckdb from a backup, or move "
            "the workspace folder aside and start a new one; the studio never repairs a workspace in place")


def _describe_process(pid: int) -> str:
    """'PID 123: alignstudio import pairs.jsonl', as far as this system tells."""
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return f"PID {pid}"
    words = [w.decode(errors="replace") for w in words if w]
    # python .../alignstudio import x  ->  alignstudio import x
    start = next((i for i, w in enumerate(words) if Path(w).name == "alignstudio" or w == "studio.cli"), None)
    shown = ["alignstudio"] + words[start + 1:] if start is not None else words
    return f"PID {pid}: {' '.join(' '.join(shown).split())[:120]}" if shown else f"PID {pid}"


def _is_duckdb_file(path: Path) -> bool:
    # DuckDB's file header has the magic "DUCK" at byte 8.
    with open(path, "rb") as f:
        return f.read(12)[8:12] == b"DUCK"


class Store:
    def __init__(self, path: str | Path, read_only: bool = False):
        self.path = Path(path)
        self.read_only = read_only
        if self.path.is_dir():
            raise StoreError(f"{self.path}: is a folder, not a workspace database; move it aside")
        exists = self.path.exists() and self.path.stat().st_size > 0
        if exists and not _is_duckdb_file(self.path):
            raise StoreError(f"{self.path}: not a DuckDB database; refusing to open it")
        if not exists and read_only:
            raise StoreError(f"{self.path}: no such workspace database")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._con = duckdb.connect(str(self.path), read_only=read_only)
        except duckdb.IOException as e:
            held = re.search(r"Conflicting lock is held in .*? \(PID (\d+)\)", str(e))
            if held:
                pid = int(held.group(1))
                raise StoreError(f"{self.path}: the workspace is open in another process ({_describe_process(pid)}); "
                                 "wait for it to finish, use the app if it is `alignstudio serve`, or stop it first"
                                 ) from None
            raise StoreError(f"{self.path}: cannot open the workspace database: {e}") from None
        except OSError as e:
            raise StoreError(f"{self.path.parent}: cannot create the workspace: {e.strerror}") from None
        self._lock = threading.Lock()
        try:
            if exists:
                self._check_whole()
            self._check_and_migrate(exists, read_only)
            if not read_only:
                for (import_id,) in self._con.execute("SELECT DISTINCT import_id FROM import_staging").fetchall():
                    with self.transaction() as cur:
                        discard_import(cur, import_id)
        except BaseException:
            self._con.close()
            raise

    def _check_whole(self) -> None:
        """Refuse a database file cut short (by a copy, a full disk or a crash) before any of it is
        used: DuckDB opens such a file, reports every count as healthy, and fails only on the first
        read of a missing block. The check: the last block that holds a table's data lies inside
        the file (free blocks may lie past its end, DuckDB trims them)."""
        if self.path.with_name(self.path.name + ".wal").exists():
            return  # blocks replayed from the log are not on disk yet: no check then
        block_size = self._con.execute("PRAGMA database_size").fetchone()[2]
        tables = [r[0] for r in self._con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'").fetchall()]
        last = max((self._con.execute("SELECT max(block_id) FROM pragma_storage_info(?)", [t]).fetchone()[0] or -1
                    for t in tables), default=-1)
        size = self.path.stat().st_size
        if (last + 1) * block_size > size:
            raise StoreError(damaged(self.path, f"the file is {size:,} bytes, but its data goes on to block {last:,} "
                                                f"of {block_size:,} bytes"))

    def _check_and_migrate(self, existed: bool, read_only: bool) -> None:
        tables = {r[0] for r in self._con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'").fetchall()}
        if "studio_meta" not in tables:
            if tables:
                raise StoreError(f"{self.path}: a DuckDB file of another application "
                                 f"(tables {', '.join(sorted(tables)[:5])}); refusing to change it")
            version = 0
        else:
            row = fetch_one(self._con, "SELECT app, version FROM studio_meta")
            if row is None or row[0] != APP_ID:
                raise StoreError(f"{self.path}: not an Alignment Studio workspace database")
            version = row[1]
        if version > len(MIGRATIONS):
            raise StoreError(f"{self.path}: schema version {version} is newer than this studio "
                             f"understands ({len(MIGRATIONS)}); upgrade alignment-studio")
        if version == len(MIGRATIONS):
            return
        if read_only:
            raise StoreError(f"{self.path}: schema version {version} needs migrating; open it read-write")
        with self.transaction() as cur:
            if version == 0:
                cur.execute("CREATE TABLE studio_meta (app VARCHAR NOT NULL, version INTEGER NOT NULL)")
                cur.execute("INSERT INTO studio_meta VALUES (?, 0)", [APP_ID])
            for sql in MIGRATIONS[version:]:
                cur.execute(sql)
            cur.execute("UPDATE studio_meta SET version = ?", [len(MIGRATIONS)])

    @property
    def schema_version(self) -> int:
        return self.scalar("SELECT version FROM studio_meta")

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor inside one transaction: committed if the block ends normally, else rolled back.

        Writers are serialised by a lock so that two threads never conflict on the same rows."""
        with self._lock:
            cur = self._con.cursor()
            cur.begin()
            try:
                yield cur
                cur.commit()
            except duckdb.OutOfMemoryException as e:
                self._rollback(cur)
                raise StoreError(f"{self.path}: out of memory while writing ({str(e).splitlines()[0]}). "
                                 "Nothing of this change was written") from None
            except (duckdb.IOException, duckdb.TransactionException, OSError) as e:
                self._rollback(cur)
                raise StoreError(f"{self.path}: cannot write the workspace database ({e}); is the disk full or the "
                                 "folder read-only? Nothing of this change was written") from None
            except BaseException:
                self._rollback(cur)
                raise
            finally:
                cur.close()

    @contextmanager
    def memory_limit(self, limit: str) -> Iterator[None]:
        """DuckDB's memory limit (for the whole database) while the block runs, then its default
        (80% of RAM) again. DuckDB keeps the blocks it wrote cached up to that limit, so without
        a lower one a long import grows with its file."""
        self.set_memory_limit(limit)
        try:
            yield
        finally:
            self._con.execute("RESET memory_limit")

    def set_memory_limit(self, limit: str) -> None:
        self._con.execute(f"SET memory_limit = '{limit}'")

    @staticmethod
    def _rollback(cur: duckdb.DuckDBPyConnection) -> None:
        try:
            cur.rollback()
        except duckdb.Error:
            pass  # a failed commit has ended the transaction already

    @contextmanager
    def _reading(self) -> Iterator[duckdb.DuckDBPyConnection]:
        cur = self._con.cursor()
        try:
            yield cur
        except duckdb.IOException as e:  # a block that cannot be read: the file is damaged
            raise StoreError(damaged(self.path, str(e).splitlines()[0])) from None
        finally:
            cur.close()

    def query(self, sql: str, params: list | None = None) -> list[dict]:
        with self._reading() as cur:
            result = cur.execute(sql, params or [])
            names = [d[0] for d in result.description]
            return [dict(zip(names, row)) for row in result.fetchall()]

    def scalar(self, sql: str, params: list | None = None):
        with self._reading() as cur:
            row = fetch_one(cur, sql, params)
            return None if row is None else row[0]

    def column(self, sql: str, params: list | None = None):
        """The first column of a query as a numpy array: for long lists (a million ids) that
        would be slow as Python rows."""
        with self._reading() as cur:
            return next(iter(cur.execute(sql, params or []).fetchnumpy().values()))

    def stats(self) -> dict[str, int]:
        return {t: self.scalar(f"SELECT count(*) FROM {t}") for t in COUNTED_TABLES}

    def dataset_id(self, name: str) -> int | None:
        return self.scalar("SELECT id FROM datasets WHERE name = ?", [name])

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
