"""Benchmarks users already run, on a policy and on its base: lm-evaluation-harness (`lm-eval`, the
`bench` extra), each task's metric with its standard error for both, the difference with a paired
bootstrap interval over the task's items, and a verdict.

    python -m pipelines.benchmark --config runs/<id>/config.json

Two small tasks ship with the studio so that it works with no hub (assets/benchmarks: 300
arithmetic word problems and 100 everyday-knowledge questions, four choices each, scored by the
likelihood of each choice, lm-eval's multiple_choice); any task lm-eval knows whose data this
machine has cached works too. The policy is its adapter merged into its base (the studio's cached
merge), the base as it is: two plain model folders, as lm-eval's Hugging Face model loads them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from common.errors import StudioError
from common.stats import mean_and_se, paired_difference
from pipelines.models import choose_placement, resolve_model
from pipelines.runlog import RunLog, run_main
from pipelines.settings import DEVICE_HELP, MODELS_DIR_HELP, setting

LOCAL_TASKS = Path(__file__).resolve().parents[1] / "assets" / "benchmarks"
LOCAL = {"studio_arithmetic": "arithmetic.jsonl", "studio_everyday": "everyday.jsonl"}


class BenchmarkError(StudioError):
    pass


@dataclass
class BenchmarkConfig:
    """lm-evaluation-harness tasks on a policy and on the model it is compared with."""
    model: str = setting("", "the policy (its adapter's folder) or a model to benchmark", internal=True)
    against: str = setting("", "the model it is compared with (default: the policy's base); empty for a model alone",
                           internal=True)
    models_dir: str = setting("models", MODELS_DIR_HELP, internal=True)
    tasks: list[str] = setting(list(LOCAL), "lm-eval task names: the studio's own (studio_arithmetic, "
                               "studio_everyday) or any task whose data this machine has")
    limit: int = setting(0, "items per task at most (0: all)")
    batch_size: int = setting(8, "items scored at once")
    device: str = setting("auto", DEVICE_HELP)
    output: str = setting("benchmark.json", "the results", internal=True)


def local_task_folder(run_dir: Path) -> Path:
    """The studio's task YAMLs, their data paths made this machine's, in the run's folder."""
    folder = run_dir / "tasks"
    folder.mkdir(exist_ok=True)
    for task, data in LOCAL.items():
        text = (LOCAL_TASKS / f"{task}.yaml").read_text().replace("{data}", str(LOCAL_TASKS / data))
        (folder / f"{task}.yaml").write_text(text)
    return folder


def check_tasks(tasks: list[str], manager=None) -> None:
    """A BenchmarkError naming the tasks lm-eval does not know. The studio's own need no look-up;
    any other costs lm-eval's index of every task (seconds)."""
    if all(t in LOCAL for t in tasks):
        return
    if manager is None:
        from lm_eval.tasks import TaskManager

        manager = TaskManager()
    unknown = [t for t in tasks if t not in LOCAL and t not in manager.all_tasks]
    if unknown:
        raise BenchmarkError(f"unknown lm-eval task {', '.join(unknown)}; the studio's own are "
                             f"{', '.join(LOCAL)} (lm-eval --tasks list shows the others)")


def evaluate_model(folder: str, tasks: list[str], manager, config: BenchmarkConfig) -> dict:
    """lm-eval on one model folder: per task, its metric, standard error and each item's score."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    placement = choose_placement(config.device, "auto")
    model = HFLM(pretrained=folder, device=placement.device, dtype=placement.dtype, batch_size=config.batch_size)
    out = lm_eval.simple_evaluate(model=model, tasks=tasks, task_manager=manager, log_samples=True,
                                  limit=config.limit or None, bootstrap_iters=0)
    found = {}
    for task in tasks:
        result = out["results"][task]
        metric = next(k for k in result if k.endswith(",none") and not k.endswith("_stderr,none")
                      and k != "alias")
        name = metric.split(",")[0]
        items = {s["doc_id"]: float(s[name]) for s in out["samples"][task]}
        _, stderr = mean_and_se(list(items.values()))  # of the items' scores (lm-eval's own needs its bootstrap)
        found[task] = {"metric": name, "value": float(result[metric]), "stderr": stderr, "items": items}
    return found


def run(config: BenchmarkConfig, log: RunLog) -> None:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # the studio never downloads at run time
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lm_eval.tasks import TaskManager

    run_dir = log.path.parent
    manager = TaskManager(include_path=str(local_task_folder(run_dir)))
    check_tasks(config.tasks, manager)
    models = {"policy": resolve_model(config.model, config.models_dir)}
    if config.against:
        models["base"] = resolve_model(config.against, config.models_dir)
    results = {}
    for step, (role, folder) in enumerate(models.items()):
        log.progress(step, len(models), message=f"lm-eval on the {role} ({', '.join(config.tasks)})")
        try:
            results[role] = evaluate_model(folder, config.tasks, manager, config)
        except (ConnectionError, OSError) as e:
            if "offline" in str(e).lower() or "connect" in str(e).lower() or "hub" in str(e).lower():
                raise BenchmarkError(f"a task of {', '.join(config.tasks)} needs its data downloaded, and the "
                                     "studio does not download at run time: cache it once on a machine that is "
                                     "online (lm-eval --tasks TASK), or run the studio's own tasks") from None
            raise
    metrics, lines, report = {}, [], {}
    for task in config.tasks:
        policy = results["policy"][task]
        entry = {"metric": policy["metric"], "policy": policy["value"], "policy_stderr": policy["stderr"],
                 "items": len(policy["items"])}
        metrics.update({f"bench/{task}/policy": policy["value"], f"bench/{task}/policy_stderr": policy["stderr"]})
        line = f"{task}: {policy['metric']} {policy['value']:.3f} (± {policy['stderr']:.3f})"
        if "base" in results:
            base = results["base"][task]
            shared = sorted(set(policy["items"]) & set(base["items"]))
            change = paired_difference([policy["items"][i] for i in shared], [base["items"][i] for i in shared])
            entry.update(base=base["value"], base_stderr=base["stderr"], change=change["diff"], low=change["low"],
                         high=change["high"], verdict=change["change"])
            metrics.update({f"bench/{task}/base": base["value"], f"bench/{task}/change": change["diff"],
                            f"bench/{task}/low": change["low"], f"bench/{task}/high": change["high"]})
            words = {"higher": "better", "lower": "worse"}.get(change["change"], change["change"])
            line = (f"{task} ({policy['metric']}, {len(shared)} items): base {base['value']:.3f} -> policy "
                    f"{policy['value']:.3f} ({change['diff']:+.3f}, 95% interval {change['low']:+.3f} to "
                    f"{change['high']:+.3f}: {words})")
        report[task] = entry
        lines.append(line)
    (run_dir / config.output).write_text(json.dumps(report, indent=2))
    log.event("succeeded", step=len(models), total=len(models), metrics=metrics, message="\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(run_main(BenchmarkConfig, run))
