"""Reads of the model registry (the `models` table): what each run trained or exported, and the
models the studio can score with, chat with or export. The writes are in `store.runs`."""

from __future__ import annotations

from store.db import Store

COLUMNS = "id, name, kind, purpose, base, run_id, parent_id, path, created_at"


def all_models(store: Store) -> list[dict]:
    """Every model, oldest first."""
    return store.query(f"SELECT {COLUMNS} FROM models ORDER BY id")


def model_path(store: Store, purpose: str, run_id: int | None = None, name: str | None = None) -> str | None:
    """The folder of the model of `purpose` (reward, policy) trained by a run, or named `name`."""
    column, value = ("run_id", run_id) if name is None else ("name", name)
    return store.scalar(f"SELECT path FROM models WHERE {column} = ? AND purpose = ?", [value, purpose])


def names_by_path(store: Store, run_id: int) -> dict[str, str]:
    """path -> name of every model a run left (an export's files)."""
    return {r["path"]: r["name"] for r in store.query("SELECT name, path FROM models WHERE run_id = ?", [run_id])}


def reward_models(store: Store) -> list[dict]:
    """The reward models (name, run_id, path), newest first."""
    return store.query("SELECT name, run_id, path FROM models WHERE purpose = 'reward' ORDER BY id DESC")


def reward_model_at(store: Store, path: str) -> dict | None:
    """The reward model (name, run_id) kept in folder `path`, if one is."""
    rows = store.query("SELECT name, run_id FROM models WHERE path = ? AND purpose = 'reward'", [path])
    return rows[0] if rows else None


def policy_adapters(store: Store) -> list[str]:
    """The names of the trained policies (LoRA adapters), newest first."""
    return [r["name"] for r in store.query(
        "SELECT name FROM models WHERE kind = 'adapter' AND purpose = 'policy' ORDER BY id DESC")]


def trained_adapter(store: Store, run_id: int) -> dict | None:
    """The adapter a training run left (name, kind, path, purpose, id, base), if any."""
    rows = store.query(f"SELECT {COLUMNS} FROM models WHERE run_id = ? AND kind = 'adapter'", [run_id])
    return rows[0] if rows else None


def model_named(store: Store, name: str) -> dict | None:
    rows = store.query(f"SELECT {COLUMNS} FROM models WHERE name = ?", [name])
    return rows[0] if rows else None


def gguf_files(store: Store, run_id: int | None = None, parent_id: int | None = None,
               base: str | None = None) -> list[dict]:
    """GGUF models (name, path), oldest first: all, those an export run wrote (`run_id`), those
    exported from one model (`parent_id`) or from a base alone (`base`: no parent)."""
    where, params = ["kind = 'gguf'"], []
    if run_id is not None:
        where.append("run_id = ?")
        params.append(run_id)
    if parent_id is not None:
        where.append("parent_id = ?")
        params.append(parent_id)
    if base is not None:
        where.append("parent_id IS NULL AND base = ?")
        params.append(base)
    return store.query(f"SELECT name, path FROM models WHERE {' AND '.join(where)} ORDER BY id", params)


def model_paths(store: Store) -> set[str]:
    """The folders and files of every model the workspace knows."""
    return {r["path"] for r in store.query("SELECT path FROM models")}


def exported_files(store: Store) -> list[dict]:
    """Every GGUF file an export run wrote: name, path and that run's folder."""
    return store.query("SELECT m.name, m.path, r.folder FROM models m JOIN runs r ON r.id = m.run_id "
                       "WHERE m.kind = 'gguf'")
