"""The workspace database: versioned schema, and files that are not ours are left alone."""

import duckdb
import pytest

from store import Store, StoreError
from store.db import MIGRATIONS
from studio.workspace import Workspace


def test_new_store_has_the_current_schema_and_reopens(tmp_path):
    with Store(tmp_path / "s.duckdb") as s:
        assert s.schema_version == len(MIGRATIONS)
        assert s.stats() == {"prompts": 0, "responses": 0, "pairs": 0, "labels": 0, "datasets": 0,
                             "runs": 0, "models": 0}
    with Store(tmp_path / "s.duckdb") as s:  # opening again migrates nothing and loses nothing
        assert s.schema_version == len(MIGRATIONS)


def test_a_failed_transaction_writes_nothing(tmp_path):
    with Store(tmp_path / "s.duckdb") as s:
        with pytest.raises(RuntimeError):
            with s.transaction() as cur:
                cur.execute("INSERT INTO datasets (name) VALUES ('x')")
                raise RuntimeError("boom")
        assert s.stats()["datasets"] == 0


def test_a_foreign_duckdb_file_is_refused_unchanged(tmp_path):
    path = tmp_path / "other.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE invoices (id INTEGER)")
    con.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match="another application"):
        Store(path)
    assert path.read_bytes() == before


def test_a_file_that_is_not_duckdb_is_refused_unchanged(tmp_path):
    path = tmp_path / "studio.duckdb"
    path.write_bytes(b"SQLite format 3\x00" + b"\x00" * 100)
    with pytest.raises(StoreError, match="not a DuckDB database"):
        Store(path)
    assert path.read_bytes() == b"SQLite format 3\x00" + b"\x00" * 100


def test_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "s.duckdb"
    Store(path).close()
    con = duckdb.connect(str(path))
    con.execute("UPDATE studio_meta SET version = 99")
    con.close()
    with pytest.raises(StoreError, match="newer than this studio understands"):
        Store(path)


def test_an_unwritable_workspace_says_so(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError, match="not writable|cannot create"):
        Workspace.at(blocker / "ws").open_store()


def test_a_workspace_held_by_another_process_is_named(tmp_path):
    import subprocess
    import sys
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; "
            f"c = duckdb.connect({str(tmp_path / 's.duckdb')!r}); print('ready', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        # the message says what the other process is, not a guess
        with pytest.raises(StoreError, match=f"open in another process \\(PID {holder.pid}: .*duckdb.connect"):
            Store(tmp_path / "s.duckdb")
    finally:
        holder.kill()
        holder.wait()
