"""The job runner: pipelines run as subprocesses, their progress flows into the store.

A run's life: `start()` writes its input files and `config.json` into `runs/<id>/` and launches
`python -m <module> --config config.json` there with its output in `log.txt`; `sync()` tails the
run's `events.jsonl` into `run_metrics` and the run's status. When the pipeline reports success,
its outputs are recorded in the same transaction that marks the run succeeded, so the store never
holds half a result. `cancel()` sends SIGTERM (the pipeline checkpoints and exits); `resume()`
starts the same config again in the same folder; `rerun()` a new run with the same config and
inputs. A run whose process is gone without a final event (killed, or lost while the studio was
down) is marked failed, its log kept.

The runner knows no kind of job: each kind's module, config and recorded outputs are in
`studio.kinds.JOBS`, what each kind reads in `studio.service`, and every write in `store.runs`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.runlog import save_config
from store import Store
from store.queries import active_run_ids, oldest_waiting_run, run_row, running_run_other_than, runs_of_kinds
from store.runs import FINAL, create_run, mark_running, mark_waiting, record_events
from studio.kinds import JOBS, RunError
from studio.workspace import Workspace

__all__ = ["FINAL", "Runner", "RunError"]
PROJECT_ROOT = Path(__file__).resolve().parents[1]
MMAP_THRESHOLD = 8 * 1024 ** 2  # glibc's, for every job: see _launch


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
    return "--config" in cmdline and (folder is None or f"{folder}/config.json" in cmdline)


def event_problem(raw: bytes) -> tuple[dict | None, str | None]:
    """One line of an events file as an event, or why it is not one. A pipeline writes objects with a
    status (text), a step and total (numbers) and metrics (an object); a line that is not (a copied or
    edited file: a JSON array, NUL bytes, metrics that are text) is left out, never trusted."""
    try:
        event = json.loads(raw)
    except ValueError:  # not JSON, or not UTF-8
        return None, "not a JSON line"
    if not isinstance(event, dict):
        return None, f"a JSON {type(event).__name__}, not an event object"
    if "status" in event and not isinstance(event["status"], str):
        return None, "its status is not text"
    if not isinstance(event.get("metrics", {}), dict):
        return None, "its metrics are not an object"
    for key in ("step", "total", "eta_s"):
        if event.get(key) is not None and (isinstance(event[key], bool) or not isinstance(event[key], (int, float))):
            return None, f"its {key} is not a number"
    if event.get("message") is not None and not isinstance(event["message"], str):
        return None, "its message is not text"
    return event, None


def read_new_events(path: Path, offset: int) -> tuple[list[dict], int]:
    """The complete event lines after byte `offset` of an events file, and the new offset; a line
    that is no event (`event_problem`) is skipped."""
    events = []
    if path.exists():
        with open(path, "rb") as f:
            f.seek(offset)
            for raw in f:
                if not raw.endswith(b"\n"):
                    break  # a line still being written
                offset += len(raw)
                event, _ = event_problem(raw)
                if event is not None:
                    events.append(event)
    return events, offset


def gpu_present() -> bool:
    import torch

    return torch.cuda.is_available()


def one_gpu(environ: dict) -> dict:
    """What a single-process job's environment changes so that it sees one GPU (the first visible).
    With every GPU visible the Trainer would wrap the model in nn.DataParallel, whose replicas run
    the module's original forward, not the one TRL and Accelerate put on the instance: a device
    mismatch on any machine with two cards. A job of several processes (accelerate launch) gives
    each rank its own GPU instead. An empty CUDA_VISIBLE_DEVICES (no GPU on purpose) stays."""
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and not visible.strip():
        return {}
    return {"CUDA_VISIBLE_DEVICES": (visible or "0").split(",")[0].strip()}


def free_port() -> int:
    """A TCP port no one listens on now: the rendezvous port of a job of several processes. With
    Accelerate's fixed default (29500) a second such job on the machine (two CPU jobs, or a
    workspace beside another) fails to start: the address is in use."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Runner:
    def __init__(self, store: Store, workspace: Workspace, one_job_at_a_time: bool | None = None):
        """`one_job_at_a_time` (default: when there is a GPU): a job started while another runs
        waits, says for which, and starts when that one ends; two jobs on one card would run it
        out of memory."""
        self.store, self.workspace = store, workspace
        self._procs: dict[int, subprocess.Popen] = {}
        self._starting = threading.Lock()
        self._one_job_at_a_time = one_job_at_a_time
        # Nothing is written here: recover() (runs left running by a process that died) is the
        # caller's explicit first step where it starts up (the app, a CLI command that runs jobs).

    @functools.cached_property
    def one_job_at_a_time(self) -> bool:
        # Asked only when a run starts or waits: finding the GPU imports torch (seconds), which
        # `alignstudio runs`, `cancel` and the app's start need not pay.
        return gpu_present() if self._one_job_at_a_time is None else self._one_job_at_a_time

    # --- starting ---------------------------------------------------------------------------

    def start(self, kind: str, config, inputs: dict[str, list[dict]], dataset: str | None = None) -> int:
        """A new run of `kind`: its input files (name -> rows, written as Parquet) and config in
        its folder, then launched; its id. `dataset`: the one its inputs came from (its lineage)."""
        if kind not in JOBS:
            raise RunError(f"unknown kind of job {kind!r}")
        settings = dataclasses.asdict(config)
        with self._starting:  # a double click must not slip two identical runs past the check
            for other in runs_of_kinds(self.store, [kind], ("queued", "running")):
                if json.loads(other["config"]) == json.loads(json.dumps(settings)):
                    raise RunError(f"the same {kind} job is running already (run {other['id']}); "
                                   "follow it (the jobs bar above the tabs) or cancel it first (its Cancel there, or "
                                   f"alignstudio cancel {other['id']})")
            run_id, folder = create_run(self.store, kind, settings, self.workspace.runs_dir, dataset)
            folder.mkdir(parents=True, exist_ok=True)
            for name, rows in inputs.items():
                pq.write_table(pa.Table.from_pylist(rows), folder / name)
            save_config(config, folder / "config.json")
            self._launch_or_wait(run_id)
        return run_id

    def _busy_with(self, run_id: int) -> int | None:
        """The run that has the machine when jobs run one at a time (None: free, or no such rule)."""
        if not self.one_job_at_a_time:
            return None
        return running_run_other_than(self.store, run_id)

    def _launch_or_wait(self, run_id: int) -> None:
        """Launch now, or mark the run as waiting for the one that has the GPU (under _starting)."""
        busy = self._busy_with(run_id)
        if busy is None:
            self._launch(run_id)
        else:
            mark_waiting(self.store, run_id, f"waiting for run {busy} to end (one GPU job at a time)")

    def _is_waiting(self, run: dict) -> bool:
        return run["status"] == "queued" and run["pid"] is None and self.one_job_at_a_time

    def _launch_next(self) -> None:
        """Start the oldest waiting run when no run has the GPU."""
        with self._starting:
            waiting = oldest_waiting_run(self.store)
            if waiting is not None and self.one_job_at_a_time and self._busy_with(waiting) is None:
                self._launch(waiting)

    def _launch(self, run_id: int) -> None:
        run = self.get(run_id)
        if run["kind"] not in JOBS:
            raise RunError(f"run {run_id} has unknown kind {run['kind']!r}")
        folder = Path(run["folder"])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p))
        # glibc raises its mmap threshold as large blocks are freed, after which big tensors come from
        # a heap that fragments and is never given back (DPO on the default model: 5.1 GB). A fixed
        # threshold returns them when freed; 8 MiB, not lower, because every block above it costs a
        # fresh mmap and its page faults: 64 KiB made DPO and reward-model steps 1.5x slower on a CPU
        # (benchmarks/train.py --memory).
        env.setdefault("MALLOC_MMAP_THRESHOLD_", str(MMAP_THRESHOLD))
        module_and_config = ["-m", JOBS[run["kind"]].module, "--config", str(folder / "config.json")]
        processes = int(json.loads(run["config"]).get("num_processes") or 1)
        if processes == 1:
            env.update(one_gpu(env))
        if processes > 1:  # data-parallel through Accelerate's launcher: one rank per GPU
            command = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes",
                       str(processes), "--num_machines", "1", "--main_process_port", str(free_port()),
                       "--mixed_precision", "no", "--dynamo_backend", "no", *module_and_config]
        else:
            command = [sys.executable, *module_and_config]
        with open(folder / "log.txt", "ab") as log:
            proc = subprocess.Popen(
                command, cwd=folder, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True)  # a job outlives a Ctrl-C in the studio's terminal
        self._procs[run_id] = proc
        mark_running(self.store, run_id, proc.pid)

    def rerun(self, run_id: int) -> int:
        """A new run with the same kind, config and input files as `run_id` (which reproduces it)."""
        old = self.get(run_id)
        if old["kind"] not in JOBS:
            raise RunError(f"run {run_id} has unknown kind {old['kind']!r}")
        config = json.loads(old["config"])
        new_id, folder = create_run(self.store, old["kind"], config, self.workspace.runs_dir, old.get("dataset"))
        folder.mkdir(parents=True, exist_ok=True)
        for name in (config.get("inputs"), config.get("eval_inputs"), "config.json"):
            if name and (Path(old["folder"]) / name).exists():
                shutil.copy2(Path(old["folder"]) / name, folder / name)
        with self._starting:
            self._launch_or_wait(new_id)
        return new_id

    # --- following ------------------------------------------------------------------------------

    def get(self, run_id: int) -> dict:
        run = run_row(self.store, run_id)
        if run is None:
            raise RunError(f"no run {run_id}")
        return run

    def active(self) -> list[int]:
        return active_run_ids(self.store)

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
        if self._is_waiting(run):  # not started yet: perhaps its turn has come
            self._launch_next()
            return self.get(run_id)
        alive = self._is_alive(run)  # asked before reading, so no final event can slip between
        events, offset = read_new_events(Path(run["folder"]) / "events.jsonl", run["events_offset"])
        final = next((e for e in events if e.get("status") in FINAL), None)
        status, message = "running", (events[-1].get("message") if events else None) or run["message"]
        record_outputs = None
        if final is not None:
            status, message = final["status"], final.get("message")
            job = JOBS.get(run["kind"])
            if status == "succeeded" and job is not None and job.record is not None:
                config, folder = json.loads(run["config"]), Path(run["folder"])
                record_outputs = lambda cur: job.record(cur, run, config, final, folder)  # noqa: E731
        elif not alive:
            status = "failed"
            message = f"the job's process ended without reporting a result; see {run['folder']}/log.txt"
        try:
            record_events(self.store, run_id, events, offset, status, message, record_outputs)
        except Exception as e:  # noqa: BLE001 - outputs that cannot be recorded fail the run, not the studio
            if record_outputs is None:
                raise
            status = "failed"
            record_events(self.store, run_id, events, offset, status,
                          f"the run ended, but its outputs could not be recorded ({type(e).__name__}: "
                          f"{str(e)[:300]}); nothing of them was stored")
        if status in FINAL:
            proc = self._procs.pop(run_id, None)
            if proc is not None:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    pass
        return self.get(run_id)

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
        self._launch_next()

    # --- control --------------------------------------------------------------------------------

    def cancel(self, run_id: int) -> None:
        """Ask the pipeline to checkpoint and stop (SIGTERM); it reports 'cancelled' itself."""
        run = self.get(run_id)
        if run["status"] not in ("queued", "running"):
            raise RunError(f"run {run_id} is {run['status']}, not running")
        if self._is_waiting(run):  # never started: nothing to checkpoint
            record_events(self.store, run_id, [], run["events_offset"], "cancelled", "cancelled before it started")
            return
        if self._is_alive(run):
            for pid in self._pipeline_pids(run):
                os.kill(pid, signal.SIGTERM)
        else:
            self.sync(run_id)

    @staticmethod
    def _pipeline_pids(run: dict) -> list[int]:
        """The processes that run the pipeline: the run's own process, or under Accelerate's
        launcher its ranks (signalled themselves: they agree on the stop, checkpoint and exit, and
        the launcher ends with them; the launcher would SIGKILL ranks still saving after 30 s)."""
        import psutil

        module = JOBS[run["kind"]].module
        try:
            launched = psutil.Process(run["pid"])
            ranks = [p.pid for p in launched.children(recursive=True) if module in " ".join(p.cmdline())]
        except psutil.Error:
            return [run["pid"]]
        return ranks or [run["pid"]]

    def resume(self, run_id: int) -> None:
        """Start a cancelled or failed run again in its folder; it continues from its checkpoint."""
        run = self.get(run_id)
        if run["status"] not in ("cancelled", "failed"):
            raise RunError(f"run {run_id} is {run['status']}; only cancelled or failed runs resume")
        with self._starting:
            self._launch_or_wait(run_id)

    def recover(self) -> None:
        """At start-up: catch up on runs left 'running'; those whose process is gone and that
        reported no result are marked failed (their folder and log stay). One run that cannot be
        read (a damaged folder, outputs that cannot be recorded) is marked failed with the reason,
        and never keeps the workspace from opening."""
        for run_id in self.active():
            try:
                self.sync(run_id)
            except Exception as e:  # noqa: BLE001 - whatever went wrong is that run's, and is said on it
                run = self.get(run_id)
                record_events(self.store, run_id, [], run["events_offset"], "failed",
                              f"marked failed when the workspace opened: its events or outputs could not be "
                              f"recorded ({type(e).__name__}: {str(e)[:300]})")
