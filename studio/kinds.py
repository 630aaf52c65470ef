"""The kinds of job: for every kind, its pipeline module, its config, and what its outputs become in
the store when it succeeds (written by `store.runs`). The job runner (`studio.runner`) knows none of
this: it starts, follows, cancels and resumes any kind alike. What each kind reads from the store is
exported by `studio.service` when it starts one.

Training methods come from `studio.methods.METHODS`; the other kinds are listed here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common.errors import StudioError
from pipelines.benchmark import BenchmarkConfig
from pipelines.best_of_n import BestOfNConfig
from pipelines.compare import CompareConfig
from pipelines.evaluate import EvaluateConfig
from pipelines.export import REPORT as EXPORT_REPORT
from pipelines.export import ExportConfig
from pipelines.generate import GenerateConfig
from pipelines.judge_labels import JudgeLabelsConfig
from pipelines.perplexity import ENGINE as PERPLEXITY_ENGINE
from pipelines.perplexity import PerplexityConfig
from pipelines.reward_scoring import RewardScoringConfig
from pipelines.runlog import ConfigError, config_from
from store.runs import (
    record_adapter,
    record_compared,
    record_export,
    record_generated,
    record_judge_labels,
    record_perplexities,
    record_rewards,
)
from studio.methods import METHODS

JUDGE_PREFIX = "judge:"  # AI labels' annotator names: judge:<model file>


class RunError(StudioError, RuntimeError):
    """A job cannot start or be controlled as asked; the message says why."""


def judge_annotator(judge_file: str) -> str:
    """The annotator name of an LLM judge's labels: judge:<its file name>."""
    return f"{JUDGE_PREFIX}{Path(judge_file).name}"


def make_config(cls: type, what: str, **fields):
    """The config, or a RunError that names the setting at fault."""
    try:
        return config_from(cls, fields)
    except ConfigError as e:
        raise RunError(f"{what} settings: {e}") from None


# What a succeeded run leaves: record(cur, run, config, final event, run folder).
Recorder = Callable[[object, dict, dict, dict, Path], None]


def _perplexities(cur, run, config, final, folder):
    record_perplexities(cur, run["id"], config["model"], final.get("engine", PERPLEXITY_ENGINE),
                        folder / config["output"])


def _generated(cur, run, config, final, folder):
    settings = {k: config[k] for k in ("temperature", "top_p", "max_new_tokens", "seed")}
    record_generated(cur, config["model"], {**settings, "engine": final.get("engine")}, folder / config["output"])


def _rewards(cur, run, config, final, folder):
    record_rewards(cur, run["id"], config["adapter"], folder / config["output"])


def _export(cur, run, config, final, folder):
    report = json.loads((folder / EXPORT_REPORT).read_text())
    record_export(cur, run["id"], config["name"], config["adapter"] or None, config["base"], report)


def _compared(cur, run, config, final, folder):
    generation = {k: config[k] for k in ("temperature", "top_p", "max_tokens", "seed")}
    record_compared(cur, run["id"], config["into"], (config["model_a"], config["model_b"]), generation,
                    folder / config["output"])


def _judge_labels(cur, run, config, final, folder):
    record_judge_labels(cur, judge_annotator(config["judge"]), folder / config["output"])


def _trained(cur, run, config, final, folder):
    record_adapter(cur, run["id"], f"{run['kind']}-run{run['id']}", folder / config["output"], config["base"],
                   METHODS[run["kind"]].makes)


@dataclass(frozen=True)
class Job:
    module: str
    config: type
    record: Recorder | None = None    # None: the run leaves only its metrics


JOBS: dict[str, Job] = {
    "perplexity": Job("pipelines.perplexity", PerplexityConfig, _perplexities),
    "generate": Job("pipelines.generate", GenerateConfig, _generated),
    "reward-scoring": Job("pipelines.reward_scoring", RewardScoringConfig, _rewards),
    "evaluate": Job("pipelines.evaluate", EvaluateConfig),
    "best-of-n": Job("pipelines.best_of_n", BestOfNConfig),
    "benchmark": Job("pipelines.benchmark", BenchmarkConfig),
    "export": Job("pipelines.export", ExportConfig, _export),
    "compare": Job("pipelines.compare", CompareConfig, _compared),
    "judge-labels": Job("pipelines.judge_labels", JudgeLabelsConfig, _judge_labels),
    **{m.name: Job(m.module, m.config, _trained) for m in METHODS.values()},
}
