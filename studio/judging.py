"""Who may judge what: a reward model judges a policy only when it shares no prompt with what
taught the policy (its pairs, or its proxy's), and an LLM judge is a GGUF chat model with a
guideline that names both answers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipelines.llm_judge import JudgeError, check_guideline
from pipelines.models import DEFAULT_MODEL, ModelError, default_gguf_path
from store import Store
from store.models import exported_files, gguf_files, reward_model_at, reward_models
from store.queries import dataset_names, prompt_ids_by_dataset
from studio.inputs import trained_prompts
from studio.kinds import RunError
from studio.runner import Runner


def reward_runs(store: Store) -> list[tuple[str, int]]:
    """The trained reward models as a menu offers them: (their name and run, their run)."""
    return [(f"{r['name']} (run {r['run_id']})", r["run_id"]) for r in reward_models(store)]


def check_independent(runner: Runner, judge_run: int, what: str, taught_by: int) -> None:
    """Refuse the reward model of `judge_run` as a judge when it shares a prompt with the training
    data of run `taught_by` (`what`: the policy, its proxy, ...)."""
    shared = len(trained_prompts(runner, judge_run) & trained_prompts(runner, taught_by))
    if shared:
        raise RunError(f"the reward model of run {judge_run} is not an independent judge: it was trained on {shared} "
                       f"prompts that {what} (run {taught_by}) was trained on too. Train one on the other prompts "
                       "(alignstudio train rm --judge-split, or a dataset that shares no prompt with it), or judge by "
                       "a rule")


@dataclass
class EvaluationChoices:
    """What the evaluation of a policy can be judged by, as its form offers it: `prompts`, the
    dataset with the most prompts the policy never trained on, or when every dataset shares some,
    the one it trained on (`held_out` False: the evaluation then says how many it saw); `judges`,
    the reward models independent of what taught it; `proxies`, for a policy trained on pairs, the
    reward models of those same pairs (one trained against a reward model has that one as its
    proxy, reported by itself)."""
    prompts: str | None
    held_out: bool
    judges: list[int]
    proxies: list[int]


def evaluation_choices(runner: Runner, policy_run: int) -> EvaluationChoices:
    import json

    store = runner.store
    trained = trained_prompts(runner, policy_run)
    run = runner.get(policy_run)
    proxy = reward_model_at(store, json.loads(run["config"]).get("reward_adapter") or "")
    # Independent of the labels that taught it: its own pairs', or its proxy's (an online policy's
    # prompts carry no labels), as start_evaluation checks.
    taught = trained_prompts(runner, proxy["run_id"]) if proxy else trained
    by_dataset = prompt_ids_by_dataset(store)
    unseen = {name: len(by_dataset[name]) for name in dataset_names(store)
              if name in by_dataset and not by_dataset[name] & trained}
    judges, proxies = [], []
    for model in reward_models(store):
        if proxy and model["run_id"] == proxy["run_id"]:
            continue
        read = trained_prompts(runner, model["run_id"])
        if not read & taught:
            judges.append(model["run_id"])
        elif not proxy and read & trained:
            proxies.append(model["run_id"])
    if unseen:
        return EvaluationChoices(max(unseen, key=unseen.get), True, judges, proxies)
    return EvaluationChoices(run["dataset"] if run["dataset"] in by_dataset else None, False, judges, proxies)


def gguf_models(store: Store) -> dict[str, str]:
    """The models llama.cpp can chat with, name -> GGUF file: the default model's own file and
    every exported GGUF still on disk."""
    found = {}
    try:
        found[DEFAULT_MODEL] = str(default_gguf_path())
    except ModelError:
        pass  # the default model's package is missing: the exported files are still there
    for row in gguf_files(store):
        if Path(row["path"]).is_file():
            found[row["name"]] = row["path"]
    return found


def gguf_choices(store: Store) -> list[tuple[str, str]]:
    """The GGUF models as a menu shows them: (label, name), an exported file's label saying what its
    quantisation cost against the f16 file ("dpo-run3-q4_k_m · 3.2x smaller, perplexity +4.1%")."""
    import json

    costs = {}
    for row in exported_files(store):
        report = Path(row["folder"]) / "export.json"
        try:
            files = json.loads(report.read_text())["files"] if report.is_file() else []
        except (OSError, ValueError, KeyError):
            files = []
        for f in files:
            if f.get("path") == row["path"] and "ppl_change" in f:
                costs[row["name"]] = f"{f['smaller']:.1f}x smaller, perplexity {f['ppl_change']:+.1%}"
    return [(f"{name} · {costs[name]}" if name in costs else name, name) for name in gguf_models(store)]


def llm_judge_file(store: Store, judge: str) -> str:
    """The GGUF file of an LLM judge named by a GGUF model's name (alignstudio models) or a path."""
    known = gguf_models(store)
    if judge in known:
        return known[judge]
    path = Path(judge).expanduser()
    if path.suffix != ".gguf" or not path.is_file():
        raise RunError(f"{judge}: no GGUF model of that name and no .gguf file there; the LLM judge is a chat model's "
                       f"GGUF file (known: {', '.join(known) or 'none'})")
    return str(path)


def checked_guideline(guideline: str) -> str:
    """The judge's prompt as given (empty: the studio's), refused unless it names both answers."""
    if guideline:
        try:
            check_guideline(guideline)
        except JudgeError as e:
            raise RunError(str(e)) from None
    return guideline
