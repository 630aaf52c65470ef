"""The job runner: pipelines run as subprocesses, their progress flows into the store.

A run's life: the runner writes its inputs (exported from the store) and `config.json` into
`runs/<id>/`, starts `python -m pipelines.<module> --config config.json` there with its output in
`log.txt`, and `sync()` tails the run's `events.jsonl` into `run_metrics` and the run's status.
When the pipeline reports success, its outputs are ingested in the same transaction that marks
the run succeeded, so the store never holds half a result. `cancel()` sends SIGTERM (the
pipeline checkpoints and exits); `resume()` starts the same config again in the same folder.
A run whose process is gone without a final event (killed, or lost while the studio was down)
is marked failed, its log kept.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.compare import CompareConfig
from pipelines.dpo import DPOTrainConfig
from pipelines.evaluate import EvaluateConfig
from pipelines.export import QUANTS, REPORT as EXPORT_REPORT, ExportConfig
from pipelines.generate import GenerateConfig
from pipelines.perplexity import ENGINE as PERPLEXITY_ENGINE
from pipelines.grpo import OnlineTrainConfig
from pipelines.models import DEFAULT_MODEL, ModelError, default_gguf_path
from pipelines.perplexity import PerplexityConfig
from pipelines.ppo import PPOTrainConfig
from pipelines.reward import RewardTrainConfig
from pipelines.reward_scoring import RewardScoringConfig
from pipelines.runlog import save_config
from store import Store
from store.arena import add_compared_pair
from store.db import fetch_one, is_empty_response, response_key
from store.exports import ExportError, preference_records
from studio.workspace import Workspace

FINAL = ("succeeded", "failed", "cancelled")
MODULES = {"perplexity": "pipelines.perplexity", "generate": "pipelines.generate", "reward": "pipelines.reward",
           "dpo": "pipelines.dpo", "reward-scoring": "pipelines.reward_scoring", "ppo": "pipelines.ppo",
           "grpo": "pipelines.grpo", "rloo": "pipelines.rloo", "evaluate": "pipelines.evaluate",
           "export": "pipelines.export", "compare": "pipelines.compare"}
TRAIN_CONFIGS = {"reward": RewardTrainConfig, "dpo": DPOTrainConfig, "ppo": PPOTrainConfig,
                 "grpo": OnlineTrainConfig, "rloo": OnlineTrainConfig}
ONLINE_KINDS = ("ppo", "grpo", "rloo")  # trained on prompts against a reward model, not on pairs
EVAL_INPUTS = "eval_inputs.parquet"
# The ids of a dataset's responses (parameter $d): both sides of its pairs and its prompts' candidates.
DATASET_RESPONSES = """
    SELECT first_id AS id FROM pairs WHERE id IN (SELECT pair_id FROM dataset_pairs WHERE dataset_id = $d)
    UNION SELECT second_id FROM pairs WHERE id IN (SELECT pair_id FROM dataset_pairs WHERE dataset_id = $d)
    UNION SELECT id FROM responses WHERE prompt_id IN (SELECT prompt_id FROM dataset_prompts WHERE dataset_id = $d)"""
PROJECT_ROOT = Path(__file__).resolve().parents[1]


class RunError(RuntimeError):
    pass


def _pid_is_our_pipeline(pid: int | None, folder: str | None) -> bool:
    """True if `pid` is alive and is a pipeline of this run (pids get reused)."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    if Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z"):
        return False  # a zombie: exited, not yet reaped
    return "pipelines." in cmdline and (folder is None or f"{folder}/config.json" in cmdline)


class Runner:
    def __init__(self, store: Store, workspace: Workspace):
        self.store, self.workspace = store, workspace
        self._procs: dict[int, subprocess.Popen] = {}
        self.recover()

    # --- starting ---------------------------------------------------------------------------

    def _new_run(self, kind: str, config) -> tuple[int, Path]:
        """`config`: a pipeline's config dataclass, or its fields as a dict."""
        fields = config if isinstance(config, dict) else dataclasses.asdict(config)
        with self.store.transaction() as cur:
            run_id = fetch_one(cur, "INSERT INTO runs (kind, config, status) VALUES (?, ?, 'queued') RETURNING id",
                               [kind, json.dumps(fields)])[0]
            folder = self.workspace.runs_dir / str(run_id)
            cur.execute("UPDATE runs SET folder = ? WHERE id = ?", [str(folder), run_id])
        folder.mkdir(parents=True, exist_ok=True)
        return run_id, folder

    def _launch(self, run_id: int) -> None:
        run = self.get(run_id)
        folder = Path(run["folder"])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p))
        with open(folder / "log.txt", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", MODULES[run["kind"]], "--config", str(folder / "config.json")],
                cwd=folder, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True)  # a job outlives a Ctrl-C in the studio's terminal
        self._procs[run_id] = proc
        with self.store.transaction() as cur:
            cur.execute("UPDATE runs SET status = 'running', pid = ?, message = NULL, finished_at = NULL, "
                        "started_at = coalesce(started_at, current_timestamp) WHERE id = ?", [proc.pid, run_id])

    def _dataset_id(self, name: str) -> int:
        dataset_id = self.store.dataset_id(name)
        if dataset_id is None:
            raise RunError(f"no dataset named '{name}'")
        return dataset_id

    def _start(self, kind: str, config, inputs: list[dict] | None,
               more_inputs: dict[str, list[dict]] | None = None) -> int:
        """Create the run, write its inputs (if it reads any; and any other input files) and
        config into its folder, and launch it."""
        run_id, folder = self._new_run(kind, config)
        if inputs is not None:
            pq.write_table(pa.Table.from_pylist(inputs), folder / config.inputs)
        for name, rows in (more_inputs or {}).items():
            pq.write_table(pa.Table.from_pylist(rows), folder / name)
        save_config(config, folder / "config.json")
        self._launch(run_id)
        return run_id

    def start_perplexity(self, dataset: str, model: str = "default", batch_size: int = 8,
                         max_length: int = 2048, device: str = "auto", dtype: str = "auto") -> int:
        """Score every response of `dataset` not yet scored under `model`."""
        dataset_id = self._dataset_id(dataset)
        rows = self.store.query(f"""
            WITH members AS ({DATASET_RESPONSES})
            SELECT r.id AS response_id, pr.messages::VARCHAR AS prompt, r.messages::VARCHAR AS response
            FROM members JOIN responses r USING (id) JOIN prompts pr ON pr.id = r.prompt_id
            WHERE r.id NOT IN (SELECT response_id FROM perplexities WHERE model = $m)
            ORDER BY r.id""", {"d": dataset_id, "m": model})
        if not rows:
            raise RunError(f"dataset '{dataset}' has no responses left to score under '{model}'")
        config = PerplexityConfig(model=model, models_dir=str(self.workspace.models_dir),
                                  batch_size=batch_size, max_length=max_length, device=device, dtype=dtype)
        return self._start("perplexity", config, rows)

    def start_generation(self, dataset: str, model: str = "default", n: int = 4, temperature: float = 0.8,
                         top_p: float = 0.95, max_new_tokens: int = 256, seed: int = 0, engine: str = "auto",
                         device: str = "auto", dtype: str = "auto") -> int:
        """Sample `n` candidate responses for every prompt of `dataset`."""
        dataset_id = self._dataset_id(dataset)
        rows = self.store.query("""
            SELECT p.id AS prompt_id, p.messages::VARCHAR AS prompt FROM prompts p
            WHERE p.id IN (SELECT prompt_id FROM dataset_prompts WHERE dataset_id = ?) ORDER BY p.rowid""",
                                [dataset_id])
        if not rows:
            raise RunError(f"dataset '{dataset}' has no prompts")
        config = GenerateConfig(model=model, models_dir=str(self.workspace.models_dir), n=n, temperature=temperature,
                                top_p=top_p, max_new_tokens=max_new_tokens, seed=seed, engine=engine,
                                device=device, dtype=dtype)
        config.resolved_engine()  # an unknown engine is refused before the run exists
        return self._start("generate", config, rows)

    def start_reward_scoring(self, dataset: str, reward_model: str, batch_size: int = 8, device: str = "auto",
                             dtype: str = "auto") -> int:
        """Score every response of `dataset` not yet scored by the reward model named `reward_model`."""
        dataset_id = self._dataset_id(dataset)
        model = self.store.query("SELECT path FROM models WHERE name = ? AND purpose = 'reward'", [reward_model])
        if not model:
            raise RunError(f"no reward model named '{reward_model}' (train one: alignstudio train rm)")
        rows = self.store.query(f"""
            WITH members AS ({DATASET_RESPONSES})
            SELECT r.id AS response_id, pr.messages::VARCHAR AS prompt, r.messages::VARCHAR AS response
            FROM members JOIN responses r USING (id) JOIN prompts pr ON pr.id = r.prompt_id
            WHERE r.id NOT IN (SELECT response_id FROM rewards WHERE model = $m)
            ORDER BY r.id""", {"d": dataset_id, "m": reward_model})
        if not rows:
            raise RunError(f"dataset '{dataset}' has no responses left to score with '{reward_model}'")
        config = RewardScoringConfig(adapter=model[0]["path"], batch_size=batch_size, device=device, dtype=dtype)
        return self._start("reward-scoring", config, rows)

    def _pairs_input(self, dataset: str) -> list[dict]:
        """A dataset's pairs with a preference, as the training pipelines read them."""
        try:
            records, left_out = preference_records(self.store, dataset)
        except ExportError as e:
            raise RunError(str(e)) from None
        if not records:
            why = ", ".join(f"{n} {reason}" for reason, n in sorted(left_out.items())) or "it holds no pairs"
            raise RunError(f"dataset '{dataset}' has no pairs with a preference to train on ({why})")
        return [{"pair_id": r["pair_id"], "prompt": json.dumps(r["prompt"]), "chosen": json.dumps(r["chosen"]),
                 "rejected": json.dumps(r["rejected"])} for r in records]

    def start_training(self, kind: str, dataset: str, eval_dataset: str | None = None, **settings) -> int:
        """Train a reward model ('reward') or a DPO policy ('dpo') on a dataset's preference pairs;
        `settings` are the pipeline's config fields (base, learning_rate, max_steps, ...)."""
        if kind not in TRAIN_CONFIGS or kind in ONLINE_KINDS:
            raise RunError(f"unknown training kind {kind!r}; one of reward, dpo")
        inputs = self._pairs_input(dataset)
        more = {EVAL_INPUTS: self._pairs_input(eval_dataset)} if eval_dataset else {}
        try:
            config = TRAIN_CONFIGS[kind](models_dir=str(self.workspace.models_dir),
                                         eval_inputs=EVAL_INPUTS if eval_dataset else None, **settings)
        except (TypeError, ValueError) as e:
            raise RunError(f"{kind} settings: {e}") from None
        return self._start(kind, config, inputs, more)

    def rerun(self, run_id: int) -> int:
        """A new run with the same kind, config and input files as `run_id` (which reproduces it)."""
        old = self.get(run_id)
        if old["kind"] not in MODULES:
            raise RunError(f"run {run_id} has unknown kind {old['kind']!r}")
        config = json.loads(old["config"])
        new_id, folder = self._new_run(old["kind"], config)
        for name in (config.get("inputs"), config.get("eval_inputs"), "config.json"):
            if name:
                shutil.copy2(Path(old["folder"]) / name, folder / name)
        self._launch(new_id)
        return new_id

    def start_online(self, kind: str, prompts: str, reward_run: int, **settings) -> int:
        """Fine-tune a policy with PPO, GRPO or RLOO on the prompts of a dataset, against the reward model
        trained by run `reward_run`; `settings` are the pipeline's config fields."""
        if kind not in ONLINE_KINDS:
            raise RunError(f"unknown online kind {kind!r}; one of {', '.join(ONLINE_KINDS)}")
        dataset_id = self._dataset_id(prompts)
        reward = self.store.query("SELECT path FROM models WHERE run_id = ? AND purpose = 'reward'", [reward_run])
        if not reward:
            raise RunError(f"run {reward_run} did not train a reward model (train one: alignstudio train rm)")
        rows = self.store.query("""
            SELECT id AS prompt_id, messages::VARCHAR AS prompt FROM prompts
            WHERE id IN (SELECT prompt_id FROM dataset_prompts WHERE dataset_id = ?) ORDER BY rowid""", [dataset_id])
        if not rows:
            raise RunError(f"dataset '{prompts}' has no prompts")
        try:
            config = TRAIN_CONFIGS[kind](models_dir=str(self.workspace.models_dir), reward_adapter=reward[0]["path"],
                                         **settings)
        except (TypeError, ValueError) as e:
            raise RunError(f"{kind} settings: {e}") from None
        return self._start(kind, config, rows)

    def start_evaluation(self, policy_run: int, reward_run: int, prompts: str, limit: int = 64, **settings) -> int:
        """Answer up to `limit` prompts of a dataset with the policy of `policy_run` and with its
        base, score both with the reward model of `reward_run`, and report win rate, reward gain,
        KL and length change (stored as the evaluation run's metrics)."""
        policy = self.store.query("SELECT path FROM models WHERE run_id = ? AND purpose = 'policy'", [policy_run])
        if not policy:
            raise RunError(f"run {policy_run} did not train a policy (train one: alignstudio train dpo|ppo|grpo|rloo)")
        reward = self.store.query("SELECT path FROM models WHERE run_id = ? AND purpose = 'reward'", [reward_run])
        if not reward:
            raise RunError(f"run {reward_run} did not train a reward model")
        dataset_id = self._dataset_id(prompts)
        rows = self.store.query("""
            SELECT messages::VARCHAR AS prompt FROM prompts
            WHERE id IN (SELECT prompt_id FROM dataset_prompts WHERE dataset_id = ?) ORDER BY id LIMIT ?""",
                                [dataset_id, limit])
        if not rows:
            raise RunError(f"dataset '{prompts}' has no prompts")
        try:
            config = EvaluateConfig(policy_adapter=policy[0]["path"], reward_adapter=reward[0]["path"],
                                    models_dir=str(self.workspace.models_dir), **settings)
        except TypeError as e:
            raise RunError(f"evaluation settings: {e}") from None
        return self._start("evaluate", config, rows)

    def start_export(self, run_id: int | None = None, model: str | None = None,
                     quants: list[str] | tuple[str, ...] = tuple(QUANTS)) -> int:
        """Export the policy trained by `run_id`, or the model named `model` (a policy adapter's name,
        `default`, or a model folder), to GGUF files of the given quants."""
        if (run_id is None) == (model is None):
            raise RunError("export either a run's policy (run id) or a model (name), not both")
        if run_id is not None:
            rows = self.store.query("SELECT name, kind, path, purpose FROM models WHERE run_id = ? AND kind = 'adapter'", [run_id])
        else:
            rows = self.store.query("SELECT name, kind, path, purpose FROM models WHERE name = ?", [model])
        if rows and rows[0]["purpose"] != "policy":
            raise RunError(f"{rows[0]['name']} is a {rows[0]['purpose']} model: it scores answers and does not chat; "
                           "export a policy (DPO, PPO, GRPO or RLOO run)")
        if rows and rows[0]["kind"] == "gguf":
            raise RunError(f"{rows[0]['name']} is a GGUF file already ({rows[0]['path']}); export the policy it came from")
        if rows and rows[0]["kind"] == "merged":  # a merged folder converts as it is
            config = ExportConfig(name=rows[0]["name"], base=rows[0]["path"], quants=list(quants),
                                  models_dir=str(self.workspace.models_dir))
        elif rows:
            config = ExportConfig(name=rows[0]["name"], adapter=rows[0]["path"], quants=list(quants),
                                  models_dir=str(self.workspace.models_dir))
        elif run_id is not None:
            raise RunError(f"run {run_id} trained no policy to export")
        elif model == DEFAULT_MODEL or Path(model).expanduser().is_dir():
            config = ExportConfig(name=Path(model).name, base=model, quants=list(quants),
                                  models_dir=str(self.workspace.models_dir))
        else:
            raise RunError(f"no model named '{model}' (see: alignstudio models)")
        try:
            config.check()
        except ValueError as e:
            raise RunError(str(e)) from None
        return self._start("export", config, None)

    def gguf_models(self) -> dict[str, str]:
        """The models llama.cpp can chat with, name -> GGUF file: the default model's own file and
        every exported GGUF still on disk."""
        found = {}
        try:
            found[DEFAULT_MODEL] = str(default_gguf_path())
        except ModelError:
            pass
        for row in self.store.query("SELECT name, path FROM models WHERE kind = 'gguf' ORDER BY id"):
            if Path(row["path"]).is_file():
                found[row["name"]] = row["path"]
        return found

    def start_comparison(self, model_a: str, model_b: str, prompts: str, into: str | None = None,
                         limit: int | None = None, **sampling) -> int:
        """Answer the prompts of a dataset with two GGUF models; the answers become unlabelled
        pairs (with both model names) of the dataset `into`."""
        available = self.gguf_models()
        for name in (model_a, model_b):
            if name not in available:
                raise RunError(f"no GGUF model named '{name}'; known: {', '.join(available) or 'none'} "
                               "(export one: alignstudio export-model)")
        dataset_id = self._dataset_id(prompts)
        into = into or f"{prompts}-{model_a}-vs-{model_b}"
        if self.store.dataset_id(into) is not None:
            raise RunError(f"a dataset named '{into}' exists already; choose another name (--into)")
        rows = self.store.query("""
            SELECT id AS prompt_id, messages::VARCHAR AS prompt FROM prompts
            WHERE id IN (SELECT prompt_id FROM dataset_prompts WHERE dataset_id = ?) ORDER BY rowid
            LIMIT ?""", [dataset_id, limit if limit is not None else 2**62])
        if not rows:
            raise RunError(f"dataset '{prompts}' has no prompts")
        try:
            config = CompareConfig(model_a=model_a, model_b=model_b, path_a=available[model_a],
                                   path_b=available[model_b], into=into, **sampling)
        except TypeError as e:
            raise RunError(f"comparison settings: {e}") from None
        return self._start("compare", config, rows)

    # --- following ------------------------------------------------------------------------------

    def get(self, run_id: int) -> dict:
        rows = self.store.query("SELECT * FROM runs WHERE id = ?", [run_id])
        if not rows:
            raise RunError(f"no run {run_id}")
        return rows[0]

    def active(self) -> list[int]:
        return [r["id"] for r in self.store.query(
            "SELECT id FROM runs WHERE status IN ('queued', 'running') ORDER BY id")]

    def _is_alive(self, run: dict) -> bool:
        proc = self._procs.get(run["id"])
        if proc is not None:
            return proc.poll() is None
        return _pid_is_our_pipeline(run["pid"], run["folder"])

    def sync(self, run_id: int) -> dict:
        """Read new events of one run into the store; returns the run as stored afterwards."""
        run = self.get(run_id)
        if run["status"] not in ("queued", "running") or not run["folder"]:
            return run
        alive = self._is_alive(run)  # asked before reading, so no final event can slip between
        events_path = Path(run["folder"]) / "events.jsonl"
        offset, events = run["events_offset"], []
        if events_path.exists():
            with open(events_path, "rb") as f:
                f.seek(offset)
                for raw in f:
                    if not raw.endswith(b"\n"):
                        break  # a line still being written
                    offset += len(raw)
                    try:
                        events.append(json.loads(raw))
                    except json.JSONDecodeError:
                        continue
        final = next((e for e in events if e.get("status") in FINAL), None)
        with self.store.transaction() as cur:
            for e in events:
                step = e.get("step")
                for name, value in (e.get("metrics") or {}).items():
                    if isinstance(value, (int, float)) and step is not None:
                        cur.execute("INSERT INTO run_metrics (run_id, step, name, value) VALUES (?, ?, ?, ?)",
                                    [run_id, step, name, float(value)])
                if step is not None and e.get("total"):
                    for name, value in (("progress", step / e["total"]), ("eta_s", e.get("eta_s"))):
                        if value is not None:
                            cur.execute("INSERT INTO run_metrics (run_id, step, name, value) VALUES (?, ?, ?, ?)",
                                        [run_id, step, name, float(value)])
            status, message = "running", (events[-1].get("message") if events else None) or run["message"]
            if final is not None:
                status, message = final["status"], final.get("message")
                if status == "succeeded":
                    self._ingest(cur, run, final)
            elif not alive:
                status = "failed"
                message = f"the job's process ended without reporting a result; see {run['folder']}/log.txt"
            cur.execute("UPDATE runs SET events_offset = ?, status = ?, message = ?, finished_at = "
                        "CASE WHEN ? IN ('succeeded', 'failed', 'cancelled') THEN current_timestamp END "
                        "WHERE id = ?", [offset, status, message, status, run_id])
        if status in FINAL:
            proc = self._procs.pop(run_id, None)
            if proc is not None:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    pass
        return self.get(run_id)

    def _ingest(self, cur, run: dict, final: dict) -> None:
        """Load a finished run's outputs into the store (inside the run's final transaction)."""
        folder = Path(run["folder"])
        if run["kind"] == "perplexity":
            config = json.loads(run["config"])
            cur.execute("""
                INSERT OR REPLACE INTO perplexities (response_id, model, ppl, mean_logprob, n_tokens, engine, run_id)
                SELECT response_id, ?, ppl, mean_logprob, n_tokens, ?, ?
                FROM read_parquet(?) WHERE ppl IS NOT NULL""",
                        [config["model"], final.get("engine", PERPLEXITY_ENGINE), run["id"],
                         str(folder / config["output"])])
        elif run["kind"] == "generate":
            config = json.loads(run["config"])
            settings = {k: config[k] for k in ("temperature", "top_p", "max_new_tokens", "seed")}
            settings["engine"] = final.get("engine")
            rows = pq.read_table(folder / config["output"]).to_pylist()
            batch = {}
            for r in rows:
                messages = json.loads(r["response"])
                batch[response_key(r["prompt_id"], messages)] = {
                    "prompt_id": r["prompt_id"], "messages": r["response"],
                    "is_empty": is_empty_response(messages),
                    "generation": json.dumps({**settings, "sample": r["sample"], "finish": r["finish"]})}
            cur.register("generated", pa.Table.from_pylist([{"id": k, **v} for k, v in batch.items()]))
            cur.execute("""INSERT INTO responses (id, prompt_id, messages, is_empty, model, generation, source)
                           SELECT id, prompt_id, messages, is_empty, ?, generation, 'generated' FROM generated
                           WHERE id NOT IN (SELECT id FROM responses)""", [config["model"]])
            cur.unregister("generated")
        elif run["kind"] == "reward-scoring":
            config = json.loads(run["config"])
            name = fetch_one(cur, "SELECT name FROM models WHERE path = ? AND purpose = 'reward'", [config["adapter"]])[0]
            cur.execute("""INSERT OR REPLACE INTO rewards (response_id, model, reward, run_id)
                           SELECT response_id, ?, reward, ? FROM read_parquet(?)""",
                        [name, run["id"], str(folder / config["output"])])
        elif run["kind"] == "export":
            self._ingest_export(cur, run)
        elif run["kind"] == "compare":
            config = json.loads(run["config"])
            generation = {k: config[k] for k in ("temperature", "top_p", "max_tokens", "seed")}
            recipe = {"source": "compare", "models": [config["model_a"], config["model_b"]], "run": run["id"],
                      **generation}
            for r in pq.read_table(folder / config["output"]).to_pylist():
                add_compared_pair(cur, config["into"], json.loads(r["prompt"]),
                                  (config["model_a"], [{"role": "assistant", "content": r["answer_a"]}]),
                                  (config["model_b"], [{"role": "assistant", "content": r["answer_b"]}]),
                                  source="compare", recipe=recipe, generation={**generation, "engine": "llama.cpp"})
        elif run["kind"] in TRAIN_CONFIGS:
            config = json.loads(run["config"])
            purpose = "reward" if run["kind"] == "reward" else "policy"
            cur.execute("INSERT INTO models (name, kind, path, run_id, base, purpose) VALUES (?, 'adapter', ?, ?, ?, ?)",
                        [f"{run['kind']}-run{run['id']}", str(folder / config["output"]), run["id"], config["base"],
                         purpose])

    def _ingest_export(self, cur, run: dict) -> None:
        """Register an export's merged model and GGUF files, each with its parent (the exported
        adapter) and run; a name already taken gets the run id added."""
        config = json.loads(run["config"])
        report = json.loads((Path(run["folder"]) / EXPORT_REPORT).read_text())
        parent = fetch_one(cur, "SELECT id, base FROM models WHERE path = ?", [config["adapter"]]) if config["adapter"] else None
        parent_id, base = (parent[0], parent[1]) if parent else (None, config["base"])

        def register(name: str, kind: str, path: str) -> None:
            if fetch_one(cur, "SELECT 1 FROM models WHERE name = ?", [name]):
                name = f"{name}-run{run['id']}"
            cur.execute("INSERT INTO models (name, kind, path, parent_id, run_id, base, purpose) "
                        "VALUES (?, ?, ?, ?, ?, ?, 'policy')", [name, kind, path, parent_id, run["id"], base])

        if report["merged"]:
            register(f"{config['name']}-merged", "merged", report["model_dir"])
        for f in report["files"]:
            register(f"{config['name']}-{f['quant']}", "gguf", f["path"])

    def wait(self, run_id: int, poll_s: float = 0.5, on_update=None) -> dict:
        """Follow a run until it ends; `on_update(run)` is called after every sync."""
        while True:
            run = self.sync(run_id)
            if on_update:
                on_update(run)
            if run["status"] in FINAL:
                return run
            time.sleep(poll_s)

    def sync_all(self) -> None:
        for run_id in self.active():
            self.sync(run_id)

    # --- control --------------------------------------------------------------------------------

    def cancel(self, run_id: int) -> None:
        """Ask the pipeline to checkpoint and stop (SIGTERM); it reports 'cancelled' itself."""
        run = self.get(run_id)
        if run["status"] not in ("queued", "running"):
            raise RunError(f"run {run_id} is {run['status']}, not running")
        if self._is_alive(run):
            os.kill(run["pid"], signal.SIGTERM)
        else:
            self.sync(run_id)

    def resume(self, run_id: int) -> None:
        """Start a cancelled or failed run again in its folder; it continues from its checkpoint."""
        run = self.get(run_id)
        if run["status"] not in ("cancelled", "failed"):
            raise RunError(f"run {run_id} is {run['status']}; only cancelled or failed runs resume")
        self._launch(run_id)

    def recover(self) -> None:
        """At start-up: catch up on runs left 'running'; those whose process is gone and that
        reported no result are marked failed (their folder and log stay)."""
        for run_id in self.active():
            self.sync(run_id)
