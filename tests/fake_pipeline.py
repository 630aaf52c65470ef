"""A stand-in pipeline for the runner's lifecycle tests: it counts steps (sleeping between them),
reports each, checkpoints after each, stops on cancel, fails on request, and writes an output.
It keeps the job contract of every real pipeline (config.json in, events.jsonl out) and trains
nothing, so that the runner is tested in seconds.

    python -m fake_pipeline --config runs/<id>/config.json
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import pyarrow.parquet as pq

from common.errors import StudioError
from pipelines.runlog import RunLog, run_main
from pipelines.settings import setting


@dataclass
class FakeConfig:
    """Count steps, checkpointing each."""
    steps: int = setting(10, "steps to count")
    sleep_s: float = setting(0.05, "seconds per step")
    fail_at: int = setting(-1, "raise an error at this step (-1: never)")
    fail_with_a_sentence: bool = setting(False, "fail with one of the studio's own errors, not a RuntimeError")
    inputs: str = setting("inputs.parquet", "rows to read", internal=True)
    output: str = setting("out.json", "what it leaves", internal=True)


def run(config: FakeConfig, log: RunLog) -> None:
    run_dir = log.path.parent
    checkpoint = run_dir / "checkpoint.json"
    rows = pq.read_table(run_dir / config.inputs).num_rows
    step = json.loads(checkpoint.read_text())["step"] if checkpoint.exists() else 0
    if step:
        log.event("running", step=step, total=config.steps, message=f"resuming from step {step}")
    while step < config.steps:
        if log.cancel_requested:
            log.event("cancelled", step=step, total=config.steps, message=f"cancelled at step {step}")
            return
        time.sleep(config.sleep_s)
        step += 1
        if step == config.fail_at:
            raise (StudioError if config.fail_with_a_sentence else RuntimeError)(f"failed at step {step} as asked")
        log.progress(step, config.steps, metrics={"loss": 1.0 / step})
        checkpoint.write_text(json.dumps({"step": step}))
    (run_dir / config.output).write_text(json.dumps({"rows": rows, "steps": step,
                                                     "gpus": os.environ.get("CUDA_VISIBLE_DEVICES")}))
    log.event("succeeded", step=step, total=config.steps, message=f"counted {step} steps over {rows} rows")


if __name__ == "__main__":
    raise SystemExit(run_main(FakeConfig, run))
