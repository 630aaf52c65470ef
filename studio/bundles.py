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


def import_bundle(runner: Runner, folder: str | Path) -> int:
    """A bundle that has run (its events.jsonl ends in success or failure) as a run of this
    workspace: copied into the run's folder, its model folders and models_dir made this
    workspace's, and its outputs recorded as a local run's would be. Returns the run id."""
    folder = Path(folder).expanduser().resolve()
    try:
        bundle = json.loads((folder / BUNDLE).read_text())
        config = json.loads((folder / "config.json").read_text())
    except FileNotFoundError as e:
        raise RunError(f"{folder} is not a bundle ({Path(e.filename).name} is missing): make one with "
                       "alignstudio train METHOD ... --bundle DIR") from None
    except json.JSONDecodeError as e:
        raise RunError(f"{folder}: its {BUNDLE} or config.json is not JSON ({e})") from None
    kind = bundle.get("kind")
    if kind not in JOBS:
        raise RunError(f"{folder}: a bundle of an unknown kind of job ({kind!r})")
    events = folder / "events.jsonl"
    if not events.is_file() or not events.read_text().strip():
        raise RunError(f"{folder} has not run yet (no events.jsonl): run its launch.sh, or sbatch job.sbatch, first")
    run_id, run_folder = create_run(runner.store, kind, config, runner.workspace.runs_dir, bundle.get("dataset"))
    shutil.copytree(folder, run_folder)
    workspace_models = bundle.get("workspace_models") or {}
    config["models_dir"] = str(runner.workspace.models_dir)
    for name, copy in CARRIED_MODELS.items():
        if config.get(name):  # the workspace's own model where it still is, else the bundle's copy
            original = workspace_models.get(name)
            config[name] = original if original and Path(original).is_dir() else str(run_folder / copy)
    (run_folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    set_run_config(runner.store, run_id, config)
    mark_running(runner.store, run_id, None)  # no process: the next sync reads its events to the end
    run = runner.sync(run_id)
    if run["status"] not in ("succeeded", "failed", "cancelled"):
        raise RunError(f"run {run_id}: the bundle's events end without a result")
    return run_id
