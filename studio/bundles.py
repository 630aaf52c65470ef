"""A training job as a folder that runs somewhere else (a cluster, a bigger machine) and comes back.

A bundle holds the job contract as it is (config.json, the input files, `python -m pipelines.<name>`,
events.jsonl and outputs), plus what another machine needs to run it: `launch.sh` (Accelerate's
launcher: one process per GPU, or several machines with a machine rank and the main machine's
address), `job.sbatch` for Slurm, the reward models an online method is trained against, and a
README of three lines. Paths in its config are relative to the bundle, so it runs wherever it is
copied. `import_bundle` brings a finished (or failed) bundle back as a run of the workspace: its
events, metrics, adapter and report card, recorded as a local run's are.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.runlog import save_config
from store.models import model_paths
from store.queries import runs_of_kinds
from store.runs import create_run, mark_running, set_run_config
from studio.kinds import JOBS, RunError
from studio.runner import Runner

BUNDLE = "bundle.json"
# Config fields naming a model folder of the workspace that the job reads: copied into the bundle.
CARRIED_MODELS = {"reward_adapter": "reward_model", "judge_adapter": "judge_model"}

LAUNCH = """#!/usr/bin/env bash
# Runs this job with Accelerate: NUM_PROCESSES in all (default {processes}: one per GPU), on
# NUM_MACHINES machines (default 1; for several, run it on each with its MACHINE_RANK and the
# MAIN_PROCESS_IP of rank 0). Needs the studio installed (pip install -e <its folder>) or on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${{PYTHON:-python}}
NUM_PROCESSES=${{NUM_PROCESSES:-{processes}}}
NUM_MACHINES=${{NUM_MACHINES:-1}}
export MALLOC_MMAP_THRESHOLD_=${{MALLOC_MMAP_THRESHOLD_:-8388608}}  # as the studio's runner starts every job
if [ "$NUM_PROCESSES" -gt 1 ] || [ "$NUM_MACHINES" -gt 1 ]; then
  exec "$PYTHON" -m accelerate.commands.launch --multi_gpu --num_processes "$NUM_PROCESSES" \\
    --num_machines "$NUM_MACHINES" --machine_rank "${{MACHINE_RANK:-0}}" \\
    --main_process_ip "${{MAIN_PROCESS_IP:-127.0.0.1}}" --main_process_port "${{MAIN_PROCESS_PORT:-29500}}" \\
    --mixed_precision no --dynamo_backend no -m {module} --config config.json
fi
exec "$PYTHON" -m {module} --config config.json
"""

SBATCH = """#!/usr/bin/env bash
#SBATCH --job-name=alignstudio-{kind}
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node={processes}
#SBATCH --time=24:00:00
#SBATCH --output=log.txt
# sbatch job.sbatch from this folder; for several nodes raise --nodes: each node runs launch.sh once,
# with its rank, and every node's GPUs take part.
set -euo pipefail
cd "$SLURM_SUBMIT_DIR"
export NUM_MACHINES=$SLURM_NNODES
export MAIN_PROCESS_IP=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export NUM_PROCESSES=$(( ${{SLURM_GPUS_ON_NODE:-{processes}}} * SLURM_NNODES ))
srun bash -c 'MACHINE_RANK=$SLURM_NODEID ./launch.sh'
"""

README = """{kind} on {base}, made by Alignment Studio from its workspace {workspace}.
Run it: ./launch.sh (this machine's GPUs; NUM_PROCESSES=N for N), or sbatch job.sbatch on a Slurm cluster.
Bring it back: alignstudio runs import {folder} (events.jsonl and the outputs come with it).
"""


def write_bundle(runner: Runner, folder: str | Path, kind: str, config, inputs: dict[str, list[dict]],
                 dataset: str | None = None) -> Path:
    """The job of `kind` with this config and input files (name -> rows) read from `dataset`, as a
    folder that runs elsewhere; refused if the folder holds anything already."""
    folder = Path(folder).expanduser().resolve()
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise RunError(f"{folder}: a bundle goes into a new or empty folder")
    folder.mkdir(parents=True, exist_ok=True)
    fields = {"models_dir": "models"}  # the default model is converted there on first use, as in a workspace
    carried = {}
    for name, copy in CARRIED_MODELS.items():
        source = getattr(config, name, "")
        if source:
            shutil.copytree(source, folder / copy)
            fields[name], carried[name] = copy, str(Path(source).resolve())
    config = dataclasses.replace(config, **fields)
    for name, rows in inputs.items():
        pq.write_table(pa.Table.from_pylist(rows), folder / name)
    save_config(config, folder / "config.json")
    processes = max(int(getattr(config, "num_processes", 1) or 1), 1)
    (folder / "launch.sh").write_text(LAUNCH.format(processes=processes, module=JOBS[kind].module))
    (folder / "job.sbatch").write_text(SBATCH.format(kind=kind, processes=processes))
    (folder / "launch.sh").chmod(0o755)
    (folder / "README.txt").write_text(README.format(kind=kind, base=config.base, folder=folder,
                                                     workspace=runner.workspace.root))
    # Where the carried models are in the workspace: an imported run names them again (its proxy is known).
    (folder / BUNDLE).write_text(json.dumps({"kind": kind, "base": config.base, "num_processes": processes,
                                             "dataset": dataset,
                                             "made": time.strftime("%Y-%m-%d %H:%M:%S"), "workspace_models": carried},
                                            indent=2) + "\n")
    return folder


def bundle_problems(folder: Path) -> list[str]:
    """What keeps a bundle out, each naming the file: a link anywhere in it (never followed: it could
    copy in any file of this machine, or loop), and a path in its config that leaves the bundle."""
    import os

    problems = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in dirs + files:
            path = Path(root) / name
            if path.is_symlink():
                problems.append(f"{path}: a link ({os.readlink(path)}); a bundle holds files, not links")
    return problems


def inside(folder: Path, relative: object) -> bool:
    if not isinstance(relative, str) or not relative or Path(relative).is_absolute():
        return False
    return (folder / relative).resolve().is_relative_to(folder)


def checked_events(folder: Path) -> tuple[dict, list[str]]:
    """The bundle's final event, and each line that is no event, named by its number."""
    from studio.runner import event_problem

    final, bad = None, []
    with open(folder / "events.jsonl", "rb") as f:
        for number, raw in enumerate(f, 1):
            event, problem = event_problem(raw)
            if problem:
                bad.append(f"events.jsonl:{number}: {problem}")
            elif event.get("status") in ("succeeded", "failed", "cancelled"):
                final = event
    return final, bad


def import_bundle(runner: Runner, folder: str | Path) -> int:
    """A bundle that has run (its events.jsonl ends in success or failure) as a run of this
    workspace: checked whole before anything is copied (no links, every path inside it, a known
    kind whose config it holds, events read line by line, not imported before), copied into the
    run's folder, its model folders and models_dir made this workspace's, and its outputs recorded
    as a local run's would be. Returns the run id."""
    folder = Path(folder).expanduser().resolve()
    try:
        bundle = json.loads((folder / BUNDLE).read_text())
        config = json.loads((folder / "config.json").read_text())
    except FileNotFoundError as e:
        raise RunError(f"{folder} is not a bundle ({Path(e.filename).name} is missing): make one with "
                       "alignstudio train METHOD ... --bundle DIR") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{folder}: its {BUNDLE} or config.json is not JSON ({e})") from None
    if not isinstance(bundle, dict) or not isinstance(config, dict):
        raise RunError(f"{folder}: its {BUNDLE} and config.json must each be a JSON object")
    kind = bundle.get("kind")
    if kind not in JOBS:
        raise RunError(f"{folder}: a bundle of an unknown kind of job ({kind!r})")
    from studio.kinds import make_config

    settings = {k: v for k, v in config.items() if k in {f.name for f in dataclasses.fields(JOBS[kind].config)}}
    if set(config) - set(settings):
        raise RunError(f"{folder}/config.json: settings a {kind} job does not have "
                       f"({', '.join(sorted(set(config) - set(settings)))}); was the bundle's kind changed?")
    make_config(JOBS[kind].config, f"{folder}/config.json", **settings)
    problems = bundle_problems(folder)
    for key in ("inputs", "eval_inputs", "output"):
        if config.get(key) and not inside(folder, config[key]):
            problems.append(f"{folder}/config.json: '{key}' ({config[key]!r}) is not a path inside the bundle")
    for name, original in (bundle.get("workspace_models") or {}).items():
        if name not in CARRIED_MODELS or not isinstance(original, str):
            problems.append(f"{folder}/{BUNDLE}: workspace_models holds {name!r}, which no job reads")
    if problems:
        raise RunError("the bundle is not imported (nothing was copied): " + "; ".join(problems[:5])
                       + (f"; and {len(problems) - 5} more" if len(problems) > 5 else ""))
    events = folder / "events.jsonl"
    if not events.is_file() or not events.read_bytes().strip():
        raise RunError(f"{folder} has not run yet (no events.jsonl): run its launch.sh, or sbatch job.sbatch, first")
    final, bad = checked_events(folder)
    if final is None:
        raise RunError(f"{folder}/events.jsonl ends without a result (succeeded, failed or cancelled)"
                       + (f"; {len(bad)} lines are no events ({bad[0]})" if bad else "") + ": nothing was imported")
    for run in runs_of_kinds(runner.store, [kind]):
        earlier = Path(run["folder"] or "")
        if (earlier / BUNDLE).is_file() and (earlier / BUNDLE).read_bytes() == (folder / BUNDLE).read_bytes() \
                and (earlier / "events.jsonl").is_file() and \
                (earlier / "events.jsonl").read_bytes() == events.read_bytes():
            raise RunError(f"{folder} was imported already, as run {run['id']}: nothing was imported again")
    run_id, run_folder = create_run(runner.store, kind, config, runner.workspace.runs_dir, bundle.get("dataset"))
    shutil.copytree(folder, run_folder, symlinks=True)
    workspace_models = bundle.get("workspace_models") or {}
    known = model_paths(runner.store)
    config["models_dir"] = str(runner.workspace.models_dir)
    for name, copy in CARRIED_MODELS.items():
        if config.get(name):  # this workspace's own model where it still is (a registered model), else the copy
            original = workspace_models.get(name)
            config[name] = original if original in known and Path(original).is_dir() else str(run_folder / copy)
    (run_folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    set_run_config(runner.store, run_id, config)
    mark_running(runner.store, run_id, None)  # no process: the next sync reads its events to the end
    run = runner.sync(run_id)
    if run["status"] not in ("succeeded", "failed", "cancelled"):
        raise RunError(f"run {run_id}: the bundle's events end without a result")
    if bad:
        from store.runs import set_run_message

        set_run_message(runner.store, run_id, f"{run['message'] or ''} ({len(bad)} lines of its events.jsonl were "
                        f"no events and were left out: {'; '.join(bad[:3])})".strip())
    return run_id
