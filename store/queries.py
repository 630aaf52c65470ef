"""Read-only queries: what the studio shows (dataset and run summaries) and what its jobs read."""

from __future__ import annotations

import json

from store.db import Store


def dataset_summaries(store: Store) -> list[dict]:
    return store.query("""
        SELECT d.name,
               (SELECT count(*) FROM dataset_pairs dp WHERE dp.dataset_id = d.id) AS pairs,
               (SELECT count(*) FROM dataset_prompts dq WHERE dq.dataset_id = d.id) AS prompts,
               d.recipe, d.created_at
        FROM datasets d ORDER BY d.id""")


def dataset_names(store: Store, with_pairs: bool = False) -> list[str]:
    """Dataset names in creation order; with_pairs: only those holding pairs (to label or compare)."""
    return [d["name"] for d in dataset_summaries(store) if d["pairs"] or not with_pairs]


def run_summaries(store: Store, limit: int | None = None) -> list[dict]:
    """Each run with its kind, status and final metrics (the last value of each metric)."""
    rows = store.query(f"""
        SELECT id, kind, status, message, folder, created_at, started_at, finished_at, config
        FROM runs ORDER BY id DESC {'LIMIT ' + str(int(limit)) if limit else ''}""")
    finals = store.query("""
        SELECT run_id, name, arg_max(value, rowid) AS value
        FROM run_metrics GROUP BY run_id, name""")
    by_run: dict[int, dict] = {}
    for m in finals:
        by_run.setdefault(m["run_id"], {})[m["name"]] = m["value"]
    for r in rows:
        r["config"] = json.loads(r["config"])
        r["metrics"] = by_run.get(r["id"], {})
    return rows


def latest_metrics(store: Store, run_id: int) -> dict[str, float]:
    """The last value logged of each metric of one run (progress, eta_s, loss, ...)."""
    return {m["name"]: m["value"] for m in store.query(
        "SELECT name, arg_max(value, rowid) AS value FROM run_metrics WHERE run_id = ? GROUP BY name", [run_id])}


def dataset_prompts(store: Store, dataset_id: int, limit: int | None = None) -> list[dict]:
    """A dataset's prompts (prompt_id, prompt as JSON text) in the order they were stored."""
    return store.query("""
        SELECT id AS prompt_id, messages::VARCHAR AS prompt FROM prompts
        WHERE id IN (SELECT prompt_id FROM dataset_prompts WHERE dataset_id = ?) ORDER BY rowid LIMIT ?""",
                       [dataset_id, limit if limit is not None else 2**62])


def prompt_ids_by_dataset(store: Store) -> dict[str, set[str]]:
    """Each dataset's prompt ids, by dataset name (datasets without prompts left out)."""
    found: dict[str, set[str]] = {}
    for row in store.query("""SELECT d.name, dp.prompt_id FROM dataset_prompts dp JOIN datasets d
                              ON d.id = dp.dataset_id"""):
        found.setdefault(row["name"], set()).add(row["prompt_id"])
    return found


# The ids of a dataset's responses (parameter $d): both sides of its pairs and its prompts' candidates.
DATASET_RESPONSES = """
    SELECT first_id AS id FROM pairs WHERE id IN (SELECT pair_id FROM dataset_pairs WHERE dataset_id = $d)
    UNION SELECT second_id FROM pairs WHERE id IN (SELECT pair_id FROM dataset_pairs WHERE dataset_id = $d)
    UNION SELECT id FROM responses WHERE prompt_id IN (SELECT prompt_id FROM dataset_prompts WHERE dataset_id = $d)"""


def unscored_responses(store: Store, dataset_id: int, scores: str, model: str) -> list[dict]:
    """A dataset's responses (response_id, prompt, response as JSON text) without a score of
    `model` in the table `scores` ('perplexities' or 'rewards')."""
    if scores not in ("perplexities", "rewards"):
        raise ValueError(f"no score table {scores!r}")
    return store.query(f"""
        WITH members AS ({DATASET_RESPONSES})
        SELECT r.id AS response_id, pr.messages::VARCHAR AS prompt, r.messages::VARCHAR AS response
        FROM members JOIN responses r USING (id) JOIN prompts pr ON pr.id = r.prompt_id
        WHERE r.id NOT IN (SELECT response_id FROM {scores} WHERE model = $m)
        ORDER BY r.id""", {"d": dataset_id, "m": model})


def pair_verdicts(store: Store, pair_ids: list[str]) -> dict[str, dict[str, str]]:
    """pair_id -> {annotator: 'first' or 'second'} for the given pairs: every label with a side
    (ties, both-bad and skips left out), and the verdict the pair was imported with as annotator
    'source'."""
    if not pair_ids:
        return {}
    rows = store.query(
        """
        SELECT pair_id, annotator, verdict FROM labels
        WHERE verdict IN ('first', 'second') AND pair_id IN (SELECT unnest($ids))
        UNION ALL
        SELECT id, 'source', source_verdict FROM pairs
        WHERE source_verdict IN ('first', 'second') AND id IN (SELECT unnest($ids))""",
        {"ids": list(pair_ids)},
    )
    found: dict[str, dict[str, str]] = {}
    for r in rows:
        found.setdefault(r["pair_id"], {})[r["annotator"]] = r["verdict"]
    return found


def dataset_pair_texts(store: Store, dataset_id: int, limit: int | None = None) -> list[dict]:
    """id, prompt_id, prompt, first and second (message lists) of a dataset's pairs, in id order."""
    rows = store.query("""
        SELECT p.id, pr.id AS prompt_id, pr.messages AS prompt, a.messages AS first, b.messages AS second
        FROM dataset_pairs dp JOIN pairs p ON p.id = dp.pair_id JOIN prompts pr ON pr.id = p.prompt_id
        JOIN responses a ON a.id = p.first_id JOIN responses b ON b.id = p.second_id
        WHERE dp.dataset_id = ? ORDER BY p.id""" + (f" LIMIT {int(limit)}" if limit else ""), [dataset_id])
    for r in rows:
        for key in ("prompt", "first", "second"):
            r[key] = json.loads(r[key])
    return rows


# --- runs, as the runner and the tabs follow them -----------------------------------------------

def run_row(store: Store, run_id: int) -> dict | None:
    """One run's row (id, kind, status, config as JSON text, message, folder, pid, ...)."""
    rows = store.query("SELECT * FROM runs WHERE id = ?", [run_id])
    return rows[0] if rows else None


def runs_of_kinds(store: Store, kinds, statuses=None, limit: int | None = None) -> list[dict]:
    """Runs (id, kind, status, config, message, dataset, folder) of these kinds (None: any), in these
    statuses (None: any), newest first."""
    where, params = [], []
    if kinds is not None:
        where.append(f"kind IN ({', '.join('?' * len(kinds))})")
        params += list(kinds)
    if statuses is not None:
        where.append(f"status IN ({', '.join('?' * len(statuses))})")
        params += list(statuses)
    return store.query(f"""SELECT id, kind, status, config, message, dataset, folder FROM runs
                           {'WHERE ' + ' AND '.join(where) if where else ''} ORDER BY id DESC
                           {'LIMIT ' + str(int(limit)) if limit else ''}""", params)


def active_run_ids(store: Store) -> list[int]:
    """Runs queued or running, oldest first."""
    return [r["id"] for r in reversed(runs_of_kinds(store, None, ("queued", "running")))]


def running_run_other_than(store: Store, run_id: int) -> int | None:
    """The oldest running run but `run_id` (the one that has the GPU), if any."""
    return store.scalar("SELECT min(id) FROM runs WHERE status = 'running' AND id <> ?", [run_id])


def oldest_waiting_run(store: Store) -> int | None:
    """The oldest run queued and not launched (waiting for the GPU), if any."""
    return store.scalar("SELECT min(id) FROM runs WHERE status = 'queued' AND pid IS NULL")


def metric_series(store: Store, run_id: int, names) -> list[dict]:
    """The logged values (step, metric, value) of `names`, by step."""
    return store.query(f"""SELECT step, name AS metric, value FROM run_metrics
                           WHERE run_id = ? AND name IN ({', '.join('?' * len(names))}) ORDER BY step, rowid""",
                       [run_id, *names])


def metric_by_kl(store: Store, run_id: int, names) -> list[dict]:
    """The values (kl, metric, value) of `names` at each step that logged `watch/kl`, by KL."""
    return store.query(f"""SELECT k.value AS kl, m.name AS metric, m.value FROM run_metrics m
                           JOIN run_metrics k ON k.run_id = m.run_id AND k.step = m.step AND k.name = 'watch/kl'
                           WHERE m.run_id = ? AND m.name IN ({', '.join('?' * len(names))}) ORDER BY k.value""",
                       [run_id, *names])


def evaluations_of(store: Store, policy_path: str) -> list[dict]:
    """The succeeded evaluation runs (id, message) of the policy in folder `policy_path`."""
    return store.query("""SELECT id, message FROM runs WHERE kind = 'evaluate' AND status = 'succeeded'
                          AND json_extract_string(config, '$.policy_adapter') = ? ORDER BY id""", [policy_path])


def benchmarks_of(store: Store, model_path: str) -> list[dict]:
    """The succeeded benchmark runs (id, message, and each task's change against the base, from
    their metrics: {task: (change, low, high)}) of the model in folder `model_path`."""
    rows = store.query("""SELECT id, message FROM runs WHERE kind = 'benchmark' AND status = 'succeeded'
                          AND json_extract_string(config, '$.model') = ? ORDER BY id""", [model_path])
    for row in rows:
        metrics = latest_metrics(store, row["id"])
        row["changes"] = {name.split("/")[1]: (metrics[name], metrics[name.replace("/change", "/low")],
                                               metrics[name.replace("/change", "/high")])
                          for name in metrics if name.startswith("bench/") and name.endswith("/change")}
    return rows


def run_view_state(store: Store, run_id: int) -> dict:
    """What a view of a run depends on: its status, its count of metrics, and how many runs have
    ended (an evaluation of it, say); equal states show the same."""
    return store.query("""SELECT (SELECT status FROM runs WHERE id = ?) AS status,
                                 (SELECT count(*) FROM run_metrics WHERE run_id = ?) AS metrics,
                                 (SELECT count(*) FROM runs WHERE status NOT IN ('queued', 'running')) AS ended""",
                       [run_id, run_id])[0] | {"run": run_id}


def latest_candidate_job(store: Store, model: str) -> dict | None:
    """The newest run that made candidates or scored them under `model` (id, kind, status, message)."""
    rows = store.query("""SELECT id, kind, status, message FROM runs
                          WHERE (kind = 'perplexity' AND json_extract_string(config, '$.model') = ?)
                             OR kind = 'generate' ORDER BY id DESC LIMIT 1""", [model])
    return rows[0] if rows else None


# --- what the Build tab, the demo and the arena read -------------------------------------------

def pair_sides(store: Store, pair_ids) -> dict[str, dict]:
    """pair id -> its first response's id and the verdict its file came with."""
    return {r["id"]: r for r in store.query(
        "SELECT id, first_id, source_verdict FROM pairs WHERE id IN (SELECT unnest(?))", [list(pair_ids)])}


def response_texts(store: Store, response_ids) -> dict[str, dict]:
    """response id -> its prompt and its messages, as JSON text."""
    return {r["id"]: r for r in store.query(
        "SELECT r.id, p.messages::VARCHAR AS prompt, r.messages::VARCHAR AS response FROM responses r "
        "JOIN prompts p ON p.id = r.prompt_id WHERE r.id IN (SELECT unnest(?))", [list(response_ids)])}


def responses_of_model(store: Store, model: str) -> int:
    return store.scalar("SELECT count(*) FROM responses WHERE model = ?", [model])


def pairs_with_a_preference(store: Store, dataset_id: int) -> int:
    """How many pairs of a dataset someone labelled first or second."""
    return store.scalar("""SELECT count(DISTINCT pair_id) FROM labels WHERE verdict IN ('first', 'second')
                           AND pair_id IN (SELECT pair_id FROM dataset_pairs WHERE dataset_id = ?)""", [dataset_id])


def pairs_not_labelled_by(store: Store, dataset_id: int, annotator: str) -> list[dict]:
    """A dataset's pairs `annotator` has not labelled: id, both sides' messages and generation."""
    return store.query("""
        SELECT p.id, a.messages AS a, b.messages AS b, a.generation AS ga, b.generation AS gb
        FROM pairs p JOIN responses a ON a.id = p.first_id JOIN responses b ON b.id = p.second_id
        WHERE p.id IN (SELECT pair_id FROM dataset_pairs WHERE dataset_id = ?)
          AND p.id NOT IN (SELECT pair_id FROM labels WHERE annotator = ?)""", [dataset_id, annotator])


def random_prompt(store: Store, dataset: str) -> list[dict] | None:
    """One prompt of a dataset picked at random (its messages), None if it has none."""
    rows = store.query("""SELECT messages::VARCHAR AS m FROM prompts WHERE id IN
                          (SELECT prompt_id FROM dataset_prompts WHERE dataset_id =
                           (SELECT id FROM datasets WHERE name = ?)) ORDER BY random() LIMIT 1""", [dataset])
    return json.loads(rows[0]["m"]) if rows else None


def active_jobs(store: Store) -> list[dict]:
    """The runs queued or running (id, kind, status, message, dataset), oldest first, each with its
    progress and estimate (None until it has logged them)."""
    rows = store.query("SELECT id, kind, status, message, dataset FROM runs WHERE status IN ('queued', 'running') "
                       "ORDER BY id")
    for r in rows:
        latest = latest_metrics(store, r["id"])
        r["progress"], r["eta_s"] = latest.get("progress"), latest.get("eta_s")
    return rows


def pair_count(store: Store, dataset: str) -> int:
    return store.scalar("SELECT count(*) FROM dataset_pairs dp JOIN datasets d ON d.id = dp.dataset_id "
                        "WHERE d.name = ?", [dataset])


def succeeded_runs(store: Store, kind: str, dataset: str) -> list[dict]:
    """The succeeded runs (id, config) of `kind` that read `dataset`, newest first."""
    return store.query("SELECT id, config FROM runs WHERE kind = ? AND dataset = ? AND status = 'succeeded' "
                       "ORDER BY id DESC", [kind, dataset])
