"""What every pipeline shares: its config file, its `events.jsonl` progress log, and cancel.

The job runner tails `events.jsonl` (one JSON object a line: time, status, step, total, eta_s,
metrics, message) into the store. SIGTERM does not kill a pipeline: it sets `cancel_requested`,
and the pipeline saves its checkpoint at the next step boundary and exits with status
"cancelled", so the run can be resumed later.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from common.errors import StudioError

C = TypeVar("C")


class ConfigError(StudioError, ValueError):
    pass


def config_from(cls: type[C], fields: dict) -> C:
    """A config of `cls` from its fields by name; a ConfigError that names an unknown setting, or
    says why a value is refused (a wrong type, or the config's own check)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ConfigError(f"unknown setting {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    for f in dataclasses.fields(cls):
        check_range(f, fields.get(f.name))
    try:
        return cls(**fields)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None


# Counts that must be at least 1 (a batch of 0, no tokens, rank 0 cannot run).
AT_LEAST_ONE = {"batch_size", "mini_batch_size", "grad_accum", "max_new_tokens", "max_tokens", "n",
                "num_generations", "num_iterations", "lora_r", "lora_alpha", "ppo_epochs", "max_length",
                "num_processes"}


def check_range(f: dataclasses.Field, value) -> None:
    """Numbers a config cannot mean: a negative size, rate or weight (below a negative default,
    which is a sentinel such as -1 for "off"), or 0 of what must be counted from 1."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    default = f.default if f.default is not dataclasses.MISSING else 0
    floor = 1 if f.name in AT_LEAST_ONE else min(0, default if isinstance(default, (int, float)) else 0)
    if value < floor:
        raise ConfigError(f"{f.name} must be at least {floor}, not {value}")


def load_config(cls: type[C], path: str | Path) -> C:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the config: {e}") from None
    try:
        return config_from(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def save_config(config, path: str | Path) -> None:
    Path(path).write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n", encoding="utf-8")


def read_partial(path: str | Path) -> list[dict]:
    """The rows a pipeline checkpointed to a JSONL file, one a line. A line cut short by a crash
    is skipped, so its item is simply done again on resume."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


class Partial:
    """The items a pipeline has finished, appended one a line to `partial.jsonl` in its run folder
    as they are done, so that a cancelled or crashed run resumes with the next one.

        with Partial(run_dir, key="response_id") as partial:
            for row in todo:
                if row["response_id"] not in partial.done: partial.add({...})
    """

    def __init__(self, run_dir: str | Path, key: str):
        self.path, self.key = Path(run_dir) / "partial.jsonl", key
        self.done: dict = {row[key]: row for row in read_partial(self.path)}
        self._file = None

    def __enter__(self) -> Partial:
        self._file = open(self.path, "a", encoding="utf-8")
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()

    def add(self, row: dict, flush: bool = True) -> None:
        self.done[row[self.key]] = row
        self._file.write(json.dumps(row) + "\n")
        if flush:
            self._file.flush()

    def flush(self) -> None:
        self._file.flush()


def peak_gpu_gb() -> float | None:
    """The most GPU memory this process has reserved, in GB; None where it used no GPU."""
    torch = sys.modules.get("torch")  # not imported for it: a job without torch used no GPU
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    # Reserved, not allocated: what the card had to hold (the allocator's cache included), which is
    # what runs out, and what the memory plan is checked against.
    return round(torch.cuda.max_memory_reserved() / 1024 ** 3, 2)


class RunLog:
    """Appends events to `<run_dir>/events.jsonl` and turns SIGTERM into a cancel request."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / "events.jsonl"
        # Under `accelerate launch` every rank runs the pipeline; only the main one writes the log,
        # so that the studio reads one started, one line per step and one final event.
        self.is_main = int(os.environ.get("RANK", "0")) == 0
        self.cancel_requested = False
        self._started = time.monotonic()
        self._first_step: int | None = None
        self._last_step = 0

    def cancel_on_sigterm(self) -> None:
        """The runner cancels a run with SIGTERM: the pipeline sees `cancel_requested`, checkpoints
        and exits. Installed by run_main only, so that a RunLog made elsewhere (a test) leaves the
        process's signal handling alone."""
        signal.signal(signal.SIGTERM, lambda signum, frame: setattr(self, "cancel_requested", True))

    def event(self, status: str, **fields) -> None:
        if not self.is_main:
            return
        if status in ("succeeded", "failed", "cancelled"):
            peak = peak_gpu_gb()
            if peak is not None:  # what the run took of its GPU at the most (the Train tab shows it)
                fields["metrics"] = {**(fields.get("metrics") or {}), "peak_gpu_gb": peak}
                fields.setdefault("step", self._last_step)  # a metric is stored at a step
        if fields.get("step") is not None:
            self._last_step = fields["step"]
        record = {"time": time.time(), "status": status, **fields}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def progress(self, step: int, total: int, metrics: dict | None = None, message: str | None = None) -> None:
        """Report `step` of `total` done; the ETA is from the rate since this process started
        (a resumed run does not count the steps an earlier process did)."""
        if self._first_step is None:
            self._first_step = step
        done_here = step - self._first_step
        elapsed = time.monotonic() - self._started
        eta = elapsed / done_here * (total - step) if done_here > 0 else None
        self.event("running", step=step, total=total, eta_s=eta, metrics=metrics or {}, message=message)


def run_main(config_cls: type[C], run: Callable[[C, RunLog], None], argv: list[str] | None = None) -> int:
    """`python -m pipelines.<name> --config run.json`: run it, and record how it ended.

    The run folder is the config file's folder. An exception becomes a "failed" event with the
    error as its message (the traceback goes to stderr, which the runner keeps as the log)."""
    parser = argparse.ArgumentParser(description=(config_cls.__doc__ or "").strip().splitlines()[0])
    parser.add_argument("--config", required=True, help="JSON file with the pipeline's config")
    args = parser.parse_args(argv)
    log = RunLog(Path(args.config).resolve().parent)
    log.cancel_on_sigterm()
    try:
        config = load_config(config_cls, args.config)
        ranks = int(os.environ.get("WORLD_SIZE", "1"))
        log.event("started", message=f"{config_cls.__name__} from {args.config}"
                  + (f" on {ranks} processes" if ranks > 1 else ""))
        run(config, log)
    except Exception as e:  # the run fails; the error is its message
        traceback.print_exc()
        # The studio's own errors are sentences for the user; anything else keeps its type's name.
        log.event("failed", message=str(e) if isinstance(e, StudioError) else f"{type(e).__name__}: {e}")
        return 1
    return 0

