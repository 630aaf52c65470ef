"""What each kind of job reads and leaves. For every kind: its pipeline module and config, the
inputs the studio exports for it from the store (as Parquet files in the run folder), and what
its outputs become in the store when it succeeds (written by `store.runs`). The job runner
(`studio.runner`) knows none of this: it starts, follows, cancels and resumes any kind alike.

Training methods come from `studio.methods.METHODS`; the other kinds are listed here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pyarrow.parquet as pq

from common.errors import StudioError
from common.stats import wilson_interval, win_summary
from pipelines.compare import CompareConfig
from pipelines.evaluate import EvaluateConfig
from pipelines.export import QUANTS, REPORT as EXPORT_REPORT, ExportConfig
from pipelines.generate import GenerateConfig
from pipelines.judge_labels import JudgeLabelsConfig
from pipelines.judges import RULES, card_against_people, describe_card_against_people
from pipelines.llm_judge import DEFAULT_GUIDELINE, JudgeError, LlamaJudge, answer_text, check_guideline
from pipelines.bases import check_base, gguf_readiness
from pipelines.models import (DEFAULT_MODEL, ModelError, check_hub_id_available, check_model_name, default_gguf_path,
                              local_folder)
from pipelines.perplexity import ENGINE as PERPLEXITY_ENGINE, PerplexityConfig
from pipelines.reward import HELD_OUT_SCORES, REPORT_CARD, describe_card
from pipelines.reward_scoring import RewardScoringConfig
from pipelines.runlog import ConfigError, config_from
from pipelines.memory import MemoryPlan, base_config, free_gpu_gb, plan
from pipelines.training import placement_of
from store import Store
from store.arena import outcomes_between
from store.db import prompt_key
from store.exports import ExportError, preference_records, unpaired_records
from store.pairs import seeded_order
from store.queries import dataset_pair_texts, dataset_prompts, pair_verdicts, unscored_responses
from store.runs import (record_adapter, record_compared, record_export, record_generated, record_judge_labels,
                        record_perplexities, record_rewards)
from studio.methods import METHODS

EVAL_INPUTS = "eval_inputs.parquet"
JUDGE_PREFIX = "judge:"  # AI labels' annotator names: judge:<model file>
EVAL_PROMPTS = 64  # prompts an evaluation answers unless told otherwise
POLICY_METHODS = ", ".join(m.label for m in METHODS.values() if m.makes == "policy")


class RunError(StudioError, RuntimeError):
    """A job cannot start or be controlled as asked; the message says why."""


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
    "export": Job("pipelines.export", ExportConfig, _export),
    "compare": Job("pipelines.compare", CompareConfig, _compared),
    "judge-labels": Job("pipelines.judge_labels", JudgeLabelsConfig, _judge_labels),
    **{m.name: Job(m.module, m.config, _trained) for m in METHODS.values()},
}


def make_config(cls: type, what: str, **fields):
    """The config, or a RunError that names the setting at fault."""
    try:
        return config_from(cls, fields)
    except ConfigError as e:
        raise RunError(f"{what} settings: {e}") from None


# --- inputs --------------------------------------------------------------------------------------

def dataset_id(store: Store, name: str) -> int:
    found = store.dataset_id(name)
    if found is None:
        raise RunError(f"no dataset named '{name}'")
    return found


def prompts_of(store: Store, dataset: str, limit: int | None = None) -> list[dict]:
    rows = dataset_prompts(store, dataset_id(store, dataset), limit)
    if not rows:
        raise RunError(f"dataset '{dataset}' has no prompts")
    return rows


def training_records(store: Store, dataset: str, reads: str) -> list[dict]:
    """A dataset's labelled pairs as a method that learns from them reads them (`Method.reads`):
    "pairs" (prompt, chosen, rejected) or "verdicts" (prompt, completion, label: one row per answer),
    with pair_id and the message lists as JSON text."""
    read, what = (unpaired_records, "labelled answers") if reads == "verdicts" else \
        (preference_records, "pairs with a preference")
    try:
        records, left_out = read(store, dataset)
    except ExportError as e:
        raise RunError(str(e)) from None
    if not records:
        why = ", ".join(f"{n} {reason}" for reason, n in sorted(left_out.items())) or "it holds no pairs"
        raise RunError(f"dataset '{dataset}' has no {what} to train on ({why})")
    return [{k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()} for r in records]


def model_path(store: Store, purpose: str, run_id: int | None = None, name: str | None = None) -> str | None:
    """The folder of the model of `purpose` trained by a run, or named `name`."""
    column, value = ("run_id", run_id) if name is None else ("name", name)
    return store.scalar(f"SELECT path FROM models WHERE {column} = ? AND purpose = ?", [value, purpose])


# --- starting each kind --------------------------------------------------------------------------

def start_perplexity(runner, dataset: str, **settings) -> int:
    """Score every response of `dataset` not yet scored under the model (`model`, default `default`)."""
    config = make_config(PerplexityConfig, "perplexity", models_dir=str(runner.workspace.models_dir), **settings)
    rows = unscored_responses(runner.store, dataset_id(runner.store, dataset), "perplexities", config.model)
    if not rows:
        raise RunError(f"dataset '{dataset}' has no responses left to score under '{config.model}'")
    return runner.start("perplexity", config, {config.inputs: rows})


def start_generation(runner, dataset: str, **settings) -> int:
    """Sample `n` candidate responses for every prompt of `dataset`."""
    config = make_config(GenerateConfig, "generation", models_dir=str(runner.workspace.models_dir), **settings)
    try:
        engine = config.resolved_engine()  # an unknown engine is refused before the run exists
    except ValueError as e:
        raise RunError(str(e)) from None
    folder = local_folder(config.model, config.models_dir)
    if engine == "llama.cpp" and config.model != DEFAULT_MODEL and (folder / "config.json").is_file():
        refused = gguf_readiness(folder, config.models_dir)  # a folder llama.cpp's converter would refuse
        if refused:
            raise RunError(f"{folder} cannot answer in llama.cpp: {refused}; use the transformers engine")
    return runner.start("generate", config, {config.inputs: prompts_of(runner.store, dataset)})


def start_reward_scoring(runner, dataset: str, reward_model: str, **settings) -> int:
    """Score every response of `dataset` not yet scored by the reward model named `reward_model`."""
    path = model_path(runner.store, "reward", name=reward_model)
    if not path:
        raise RunError(f"no reward model named '{reward_model}' (train one: alignstudio train rm)")
    config = make_config(RewardScoringConfig, "reward scoring", adapter=path, **settings)
    rows = unscored_responses(runner.store, dataset_id(runner.store, dataset), "rewards", reward_model)
    if not rows:
        raise RunError(f"dataset '{dataset}' has no responses left to score with '{reward_model}'")
    return runner.start("reward-scoring", config, {config.inputs: rows})


def memory_plan(models_dir, method: str, settings: dict) -> MemoryPlan | None:
    """The estimated peak GPU memory of training `method` with these config fields (the method's
    defaults for the rest); None when the base's config is not on this machine."""
    m = METHODS[method]
    config = make_config(m.config, m.label, models_dir=str(models_dir),
                         **{k: v for k, v in settings.items() if k != "models_dir"})
    base = base_config(config.base, models_dir)
    if base is None:
        return None
    dtype = "bfloat16" if config.dtype == "auto" else config.dtype  # what a GPU of today picks
    length = getattr(config, "max_length", 512) if not m.online else getattr(config, "max_new_tokens", 256) + 256
    return plan(base, m.shape, dtype=dtype, load_in_4bit=config.load_in_4bit, lora_r=config.lora_r,
                lora_targets=config.lora_targets, batch_size=config.batch_size, max_length=length,
                gradient_checkpointing=config.gradient_checkpointing)


def check_memory(models_dir, method: str, settings: dict, force: bool) -> None:
    """Refuse a run that cannot fit this machine's GPU (none: nothing to check), unless forced."""
    free = free_gpu_gb()
    if free is None or force:
        return
    estimate = memory_plan(models_dir, method, settings)
    if estimate is not None and estimate.total_gb > free:
        raise RunError(f"{estimate.describe()}; the GPU has {free:.1f} GB free. Try --load-in-4bit, "
                       "--gradient-checkpointing or a smaller --batch-size (or try anyway: --force, or the Train "
                       "tab's Start anyway)")


def start_training(runner, method: str, dataset: str | None = None, eval_dataset: str | None = None,
                   prompts: str | None = None, reward_run: int | None = None, judge_run: int | None = None,
                   force: bool = False, **settings) -> int:
    """Train with a method of `METHODS`: on a dataset's preference pairs or verdicts (`dataset`, and
    `eval_dataset` or a held-out share), or on the prompts of `prompts` against the reward model
    trained by run `reward_run`, its over-optimisation watch judged by the reward model of
    `judge_run` (refused unless independent of the proxy). `settings` are the method's config fields."""
    if method not in METHODS:
        raise RunError(f"unknown training method {method!r}; one of {', '.join(METHODS)}")
    m = METHODS[method]
    fields = dict(settings, models_dir=str(runner.workspace.models_dir))
    check_memory(runner.workspace.models_dir, method, settings, force)
    if m.online:
        if not prompts or reward_run is None:
            raise RunError(f"{m.label} needs a dataset of prompts and a reward model (the run that trained it)")
        reward = model_path(runner.store, "reward", run_id=reward_run)
        if not reward:
            raise RunError(f"run {reward_run} did not train a reward model (train one: alignstudio train rm)")
        if judge_run is not None:
            judge = model_path(runner.store, "reward", run_id=judge_run)
            if not judge:
                raise RunError(f"run {judge_run} did not train a reward model")
            if judge_run == reward_run:
                raise RunError(f"run {judge_run} trained the reward model this run optimises: it cannot judge it")
            check_independent(runner, judge_run, "the proxy", reward_run)
            fields["judge_adapter"] = judge
        config = make_config(m.config, m.label, reward_adapter=reward, **fields)
        check_placement(config)
        return runner.start(method, config, {config.inputs: prompts_of(runner.store, prompts)})
    if judge_run is not None:
        raise RunError(f"{m.label} learns from pairs, not against a reward model: judge it afterwards (evaluate)")
    if not dataset:
        raise RunError(f"{m.label} needs a dataset of pairs")
    records = training_records(runner.store, dataset, m.reads)
    held_out = training_records(runner.store, eval_dataset, m.reads) if eval_dataset else None
    config = make_config(m.config, m.label, eval_inputs=EVAL_INPUTS if held_out else None, **fields)
    check_placement(config)
    return runner.start(method, config, {config.inputs: records, **({EVAL_INPUTS: held_out} if held_out else {})})


def check_placement(config) -> None:
    """The base model (a name that exists, a folder a pipeline can train: pipelines.bases), and the
    device, precision and 4-bit settings this machine can run, checked before a run exists."""
    try:
        check_base_model(config.base, config.models_dir)
        placement_of(config)
    except (ModelError, ValueError) as e:
        raise RunError(str(e)) from None


def check_base_model(base: str, models_dir) -> None:
    check_model_name(base)
    folder = local_folder(base, models_dir)
    if base != DEFAULT_MODEL and folder.is_dir():
        check_base(folder)
    else:
        check_hub_id_available(base)


def export_warning(base: str, models_dir) -> str | None:
    """A sentence when llama.cpp's converter would refuse this base (architecture or tokenizer),
    said when a run on it starts rather than after its training; None when it would export, or when
    the base is not on this machine yet (a hub id: the export checks it)."""
    folder = local_folder(base, models_dir)
    if not (folder / "config.json").is_file():
        return None
    try:
        verdict = gguf_readiness(folder, models_dir)
    except ModelError as e:
        verdict = str(e)
    return None if verdict is None else f"this base can be trained but not exported to GGUF: {verdict}"


def split_by_prompt(records: list[dict], seed: int) -> tuple[list[dict], list[dict]]:
    """Two halves of a dataset's records that share no prompt: the prompts ordered by a seeded hash
    and cut in half (every record of a prompt goes with it)."""
    by_prompt: dict[str, list[dict]] = {}
    for r in records:
        by_prompt.setdefault(prompt_key(json.loads(r["prompt"])), []).append(r)
    order = seeded_order(by_prompt, seed)
    half = len(order) // 2
    return ([r for k in order[:half] for r in by_prompt[k]], [r for k in order[half:] for r in by_prompt[k]])


def start_judge_split(runner, dataset: str, **settings) -> tuple[int, int]:
    """Two reward models from one dataset's labelled pairs, split by prompt: the proxy (for the
    online methods to optimise) on one half and the judge (to evaluate policies by) on the other.
    Returns the two run ids."""
    m = METHODS["rm"]
    records = training_records(runner.store, dataset, m.reads)
    proxy_half, judge_half = split_by_prompt(records, settings.get("seed", 0))
    if not proxy_half or not judge_half:
        raise RunError(f"dataset '{dataset}' has labelled pairs on only one prompt: a judge split needs two or more")
    runs = []
    for role, half in (("proxy", proxy_half), ("judge", judge_half)):
        config = make_config(m.config, m.label, judge_split=role, models_dir=str(runner.workspace.models_dir),
                             **settings)
        check_placement(config)
        runs.append(runner.start("rm", config, {config.inputs: half}))
    return runs[0], runs[1]


def trained_prompts(runner, run_id: int) -> set[str]:
    """The ids of every prompt a training run read (its pairs or prompts, held-out share included,
    and its eval dataset), from the input files in its folder."""
    folder = runner.workspace.runs_dir / str(run_id)
    config = json.loads((folder / "config.json").read_text())
    keys = set()
    for name in (config.get("inputs"), config.get("eval_inputs")):
        if name and (folder / name).is_file():
            table = pq.read_table(folder / name)
            if "prompt_id" in table.column_names:
                keys.update(table.column("prompt_id").to_pylist())
            else:
                keys.update(prompt_key(json.loads(p)) for p in table.column("prompt").to_pylist())
    return keys


def rm_report(runner, run_id: int) -> list[str]:
    """The report card of a reward-model run, as lines: accuracy with its interval, length bias and
    calibration (from the run), and agreement with each annotator of the held-out pairs (from the
    store: who labelled them which way, and the verdicts their file came with, as 'source')."""
    run = runner.get(run_id)
    if run is None or run["kind"] != "rm":
        raise RunError(f"run {run_id} is not a reward-model run")
    folder = runner.workspace.runs_dir / str(run_id)
    if not (folder / REPORT_CARD).is_file():
        raise RunError(f"run {run_id} has no report card ({'it has not finished' if run['status'] != 'succeeded' else 'it had no held-out pairs, or was trained before report cards existed'})")
    lines = describe_card(json.loads((folder / REPORT_CARD).read_text()))
    scored = pq.read_table(folder / HELD_OUT_SCORES).to_pylist()
    verdicts = pair_verdicts(runner.store, [r["pair_id"] for r in scored if r["pair_id"]])
    agree: dict[str, list[int]] = {}
    for r in scored:
        if r["reward_chosen"] == r["reward_rejected"]:
            continue
        rm_side = r["chosen_side"] if r["reward_chosen"] > r["reward_rejected"] else \
            {"first": "second", "second": "first"}.get(r["chosen_side"])
        for annotator, verdict in verdicts.get(r["pair_id"], {}).items():
            agree.setdefault(annotator, []).append(verdict == rm_side)
    for annotator, hits in sorted(agree.items()):
        low, high = wilson_interval(sum(hits), len(hits))
        lines.append(f"agrees with {'the file' if annotator == 'source' else annotator} on {sum(hits) / len(hits):.0%} of "
                     f"{len(hits)} held-out pairs (95% interval {low:.0%}-{high:.0%})")
    return lines


def people_verdict(store: Store, policy_run: int) -> str | None:
    """The fourth judge: blind votes (Compare tab) between the GGUF files exported from the policy of
    `policy_run` and its base (by its name, or a GGUF exported from the base alone), as one line
    with the win rate and its interval; a hint when there are none; None when the run trained no
    policy."""
    policy = store.query("SELECT id, name, base FROM models WHERE run_id = ? AND purpose = 'policy' "
                         "AND kind = 'adapter'", [policy_run])
    if not policy:
        return None
    policy = policy[0]
    exported = [r["name"] for r in store.query("SELECT name FROM models WHERE parent_id = ? AND kind = 'gguf' "
                                                "ORDER BY id", [policy["id"]])]
    base = [policy["base"]] + [r["name"] for r in store.query(
        "SELECT name FROM models WHERE parent_id IS NULL AND kind = 'gguf' AND base = ?", [policy["base"]])]
    if not exported:
        return (f"people: no votes yet; export the policy `{policy['name']}` (Export tab), then compare it with "
                f"`{policy['base']}` blind in the Compare tab")
    outcomes = outcomes_between(store, exported, base)
    if not outcomes:
        return (f"people: no votes yet between {', '.join(f'`{n}`' for n in exported)} and `{policy['base']}`: "
                "compare them blind in the Compare tab")
    result = win_summary(outcomes)
    return (f"people (blind votes in the Compare tab, {', '.join(exported)} against {', '.join(base)}): policy wins "
            f"{result['win_rate']:.0%} of {result['n']} votes (95% interval {result['win_low']:.0%}-"
            f"{result['win_high']:.0%}): {result['verdict']}")


def check_independent(runner, judge_run: int, what: str, taught_by: int) -> None:
    """Refuse the reward model of `judge_run` as a judge when it shares a prompt with the training
    data of run `taught_by` (`what`: the policy, its proxy, ...)."""
    shared = len(trained_prompts(runner, judge_run) & trained_prompts(runner, taught_by))
    if shared:
        raise RunError(f"the reward model of run {judge_run} is not an independent judge: it was trained on {shared} "
                       f"prompts that {what} (run {taught_by}) was trained on too. Train one on the other prompts "
                       "(alignstudio train rm --judge-split, or a dataset that shares no prompt with it), or judge by "
                       "a rule")


def _reward_model_of(store: Store, path: str) -> dict | None:
    rows = store.query("SELECT name, run_id FROM models WHERE path = ? AND purpose = 'reward'", [path])
    return rows[0] if rows else None


def start_evaluation(runner, policy_run: int, prompts: str, judge_run: int | None = None, rule: str = "",
                     limit: int = EVAL_PROMPTS, proxy_run: int | None = None, **settings) -> int:
    """Answer up to `limit` prompts of a dataset with the policy of `policy_run` and with its base,
    and judge the answers by the policy's proxy (the reward model it was trained against, if any;
    for a policy trained on pairs, the reward model of `proxy_run`, trained on the same pairs), by
    the reward model of `judge_run` (refused unless it was trained on prompts that neither the
    policy nor the proxy saw) and/or by a named `rule`. Reports per judge the win rate with its
    interval, and the KL and length change (stored as the evaluation run's metrics)."""
    store = runner.store
    policy = model_path(store, "policy", run_id=policy_run)
    if not policy:
        raise RunError(f"run {policy_run} did not train a policy (train one: alignstudio train "
                       f"{'|'.join(m.name for m in METHODS.values() if m.makes == 'policy')})")
    policy_config = json.loads(runner.get(policy_run)["config"])
    proxy = _reward_model_of(store, policy_config.get("reward_adapter") or "")
    fields = {"proxy_adapter": policy_config["reward_adapter"], "proxy_name": proxy["name"]} if proxy else {}
    if proxy_run is not None and not (proxy and proxy["run_id"] == proxy_run):
        if proxy:
            raise RunError(f"run {policy_run}'s policy optimised the reward model of run {proxy['run_id']}: that is "
                           "its proxy, reported anyway; give another reward model as a judge (judge run) instead")
        path = model_path(store, "reward", run_id=proxy_run)
        if not path:
            raise RunError(f"run {proxy_run} did not train a reward model")
        if not trained_prompts(runner, proxy_run) & trained_prompts(runner, policy_run):
            raise RunError(f"the reward model of run {proxy_run} shares no prompt with the pairs run {policy_run} "
                           "trained on: it is no proxy of them; give it as a judge (judge run) instead")
        proxy = _reward_model_of(store, path)
        fields = {"proxy_adapter": path, "proxy_name": proxy["name"], "proxy_of_pairs": True}
    if judge_run is not None:
        judge = model_path(store, "reward", run_id=judge_run)
        if not judge:
            raise RunError(f"run {judge_run} did not train a reward model")
        if proxy and proxy["run_id"] == judge_run:
            raise RunError(f"run {judge_run} trained the reward model this policy optimised (its proxy): it cannot "
                           "judge it independently; its verdict is shown as the proxy's anyway. Judge by a reward "
                           "model trained on other prompts (alignstudio train rm --judge-split) or by a rule")
        # Independent = no labelled pair in common by prompt with what taught the policy: its own
        # pairs (offline methods) or its proxy's (online methods, whose prompts carry no labels),
        # nor with the proxy reported beside it.
        if not proxy or fields.get("proxy_of_pairs"):
            check_independent(runner, judge_run, "the policy", policy_run)
        if proxy:
            check_independent(runner, judge_run, "its proxy", proxy["run_id"])
        fields.update(judge_adapter=judge, judge_name=_reward_model_of(store, judge)["name"])
    if settings.get("llm_judge"):
        settings["llm_judge"] = llm_judge_file(store, settings["llm_judge"])
    if settings.get("judge_guideline"):
        try:
            check_guideline(settings["judge_guideline"])
        except JudgeError as e:
            raise RunError(str(e)) from None
    if judge_run is None and not rule and not settings.get("llm_judge"):
        # never the proxy alone: it cannot tell improvement from reward hacking
        raise RunError(f"give an independent judge for run {policy_run}'s policy: a reward model trained on other "
                       "prompts (judge run; alignstudio train rm --judge-split makes one), an LLM judge (a GGUF chat "
                       "model) or a rule"
                       + (f"; its proxy ({proxy['name']}) is reported beside it, never alone" if proxy else ""))
    rows = prompts_of(store, prompts, limit)
    seen = len({r["prompt_id"] for r in rows} & trained_prompts(runner, policy_run))
    config = make_config(EvaluateConfig, "evaluation", policy_adapter=policy, rule=rule, seen_in_training=seen,
                         models_dir=str(runner.workspace.models_dir), **fields, **settings)
    return runner.start("evaluate", config, {config.inputs: rows})


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


def start_export(runner, run_id: int | None = None, model: str | None = None,
                 quants: list[str] | tuple[str, ...] = tuple(QUANTS)) -> int:
    """Export the policy trained by `run_id`, or the model named `model` (a policy adapter's name,
    `default`, or a model folder), to GGUF files of the given quants."""
    store, models_dir = runner.store, str(runner.workspace.models_dir)
    if (run_id is None) == (model is None):
        raise RunError("export either a run's policy (run id) or a model (name), not both")
    if run_id is not None:
        rows = store.query("SELECT name, kind, path, purpose FROM models WHERE run_id = ? AND kind = 'adapter'", [run_id])
    else:
        rows = store.query("SELECT name, kind, path, purpose FROM models WHERE name = ?", [model])
    if rows and rows[0]["purpose"] != "policy":
        raise RunError(f"{rows[0]['name']} is a {rows[0]['purpose']} model: it scores answers and does not chat; "
                       f"export a policy ({POLICY_METHODS} run)")
    if rows and rows[0]["kind"] == "gguf":
        raise RunError(f"{rows[0]['name']} is a GGUF file already ({rows[0]['path']}); export the policy it came from")
    if rows and rows[0]["kind"] == "merged":  # a merged folder converts as it is
        config = ExportConfig(name=rows[0]["name"], base=rows[0]["path"], quants=list(quants), models_dir=models_dir)
    elif rows:
        config = ExportConfig(name=rows[0]["name"], adapter=rows[0]["path"], quants=list(quants), models_dir=models_dir)
    elif run_id is not None:
        raise RunError(f"run {run_id} trained no policy to export")
    elif model == DEFAULT_MODEL or Path(model).expanduser().is_dir():
        config = ExportConfig(name=Path(model).name, base=model, quants=list(quants), models_dir=models_dir)
    else:
        raise RunError(f"no model named '{model}' (see: alignstudio models)")
    try:
        config.check()
    except ValueError as e:
        raise RunError(str(e)) from None
    return runner.start("export", config, {})


def gguf_models(store: Store) -> dict[str, str]:
    """The models llama.cpp can chat with, name -> GGUF file: the default model's own file and
    every exported GGUF still on disk."""
    found = {}
    try:
        found[DEFAULT_MODEL] = str(default_gguf_path())
    except ModelError:
        pass
    for row in store.query("SELECT name, path FROM models WHERE kind = 'gguf' ORDER BY id"):
        if Path(row["path"]).is_file():
            found[row["name"]] = row["path"]
    return found


def start_comparison(runner, model_a: str, model_b: str, prompts: str, into: str | None = None,
                     limit: int | None = None, **sampling) -> int:
    """Answer the prompts of a dataset with two GGUF models; the answers become unlabelled
    pairs (with both model names) of the dataset `into`."""
    available = gguf_models(runner.store)
    for name in (model_a, model_b):
        if name not in available and (Path(name).expanduser() / "config.json").is_file():
            available[name] = str(Path(name).expanduser())  # a model folder: converted once, in the run
        if name not in available:
            raise RunError(f"no GGUF model named '{name}', and no model folder there; known: "
                           f"{', '.join(available) or 'none'} (export one: alignstudio export-model)")
    into = into or f"{prompts}-{Path(model_a).name}-vs-{Path(model_b).name}"
    if runner.store.dataset_id(into) is not None:
        raise RunError(f"a dataset named '{into}' exists already; choose another name (--into)")
    rows = prompts_of(runner.store, prompts, limit)
    config = make_config(CompareConfig, "comparison", model_a=model_a, model_b=model_b, path_a=available[model_a],
                         path_b=available[model_b], into=into, models_dir=str(runner.workspace.models_dir),
                         **sampling)
    return runner.start("compare", config, {config.inputs: rows})


def judge_report(runner, dataset: str, llm_judge: str | None = None, rule: str | None = None,
                 reward_run: int | None = None, limit: int = 200, guideline: str = "", say=None) -> list[str]:
    """Judges set side by side against people's labels on a dataset's labelled pairs (at most
    `limit`): a rule, the reward model of `reward_run` (on the pairs whose prompts it was not trained
    on) and/or an LLM judge (a GGUF file or model name), each with the same report card. AI labels
    (annotators named judge:...) are not people's and are left out. `say` is told the progress."""
    store = runner.store
    if not (llm_judge or rule or reward_run is not None):
        raise RunError("name at least one judge: an LLM judge (a GGUF chat model), a rule or a reward-model run")
    if rule and rule not in RULES:
        raise RunError(f"unknown rule {rule!r}; one of {', '.join(RULES)}")
    judge_file = llm_judge_file(store, llm_judge) if llm_judge else None
    if guideline:
        try:
            check_guideline(guideline)
        except JudgeError as e:
            raise RunError(str(e)) from None
    pairs = dataset_pair_texts(store, dataset_id(store, dataset))
    people = {p: {a: v for a, v in labels.items() if not a.startswith(JUDGE_PREFIX)}
              for p, labels in pair_verdicts(store, [p["id"] for p in pairs]).items()}
    people = {p: labels for p, labels in people.items() if labels}
    if not people:
        return [f"dataset '{dataset}' has no pair with a person's label (nor verdicts from its file): there is nothing "
                "to compare a judge against; label some pairs in the Label tab first"]
    picked = [p for p in pairs if p["id"] in people][:limit]
    people = {p["id"]: people[p["id"]] for p in picked}
    texts = {p["id"]: (answer_text(p["first"]), answer_text(p["second"])) for p in picked}
    lengths = {pid: (len(a.split()), len(b.split())) for pid, (a, b) in texts.items()}
    longer = {pid: None if a == b else "first" if a > b else "second" for pid, (a, b) in lengths.items()}
    lines = [f"{len(picked)} pairs of '{dataset}' with people's labels"]
    if rule:
        verdicts = {pid: RULES[rule].verdict({"text": a, "finish": "stop"}, {"text": b, "finish": "stop"})
                    for pid, (a, b) in texts.items()}
        lines += describe_card_against_people(f"rule '{rule}'", card_against_people(verdicts, people, longer))
    if reward_run is not None:
        lines += _reward_model_card(runner, reward_run, picked, texts, people, longer)
    if judge_file:
        judge = LlamaJudge(judge_file, guideline or DEFAULT_GUIDELINE)
        verdicts, disagree = {}, 0
        try:
            for i, p in enumerate(picked):
                result = judge.compare(p["prompt"], *texts[p["id"]])
                verdicts[p["id"]] = result["verdict"]
                disagree += bool(result["orders_disagree"])
                if say and (i + 1) % 10 == 0:
                    say(f"LLM judge: {i + 1} of {len(picked)} pairs")
        finally:
            judge.close()
        name = f"LLM judge {Path(judge_file).name}"
        decided = sum(v is not None for v in verdicts.values())
        lines += describe_card_against_people(name, card_against_people(verdicts, people, longer))
        if decided:
            lines.append(f"{name}: its two orders disagreed on {disagree / decided:.0%} of the {decided} pairs it "
                         "answered (position bias; those count as ties)")
    return lines


def _reward_model_card(runner, reward_run: int, picked, texts, people, longer) -> list[str]:
    from pipelines.models import choose_placement
    from pipelines.reward_model import load_reward_model, score

    path = model_path(runner.store, "reward", run_id=reward_run)
    if not path:
        raise RunError(f"run {reward_run} did not train a reward model")
    seen = trained_prompts(runner, reward_run)
    fresh = [p for p in picked if p["prompt_id"] not in seen]
    name = f"reward model of run {reward_run}"
    if not fresh:
        return [f"{name}: every labelled pair's prompt was in its training data; judge it on other pairs"]
    tokenizer, model = load_reward_model(path, choose_placement())
    conversations = [p["prompt"] + side for p in fresh for side in (p["first"], p["second"])]
    rewards = score(tokenizer, model, conversations)
    verdicts = {p["id"]: "first" if a > b else "second" if b > a else "tie"
                for p, a, b in zip(fresh, rewards[::2], rewards[1::2])}
    lines = describe_card_against_people(name, card_against_people(
        verdicts, {p["id"]: people[p["id"]] for p in fresh}, longer))
    if len(fresh) < len(picked):
        lines.append(f"{name}: {len(picked) - len(fresh)} pairs left out, their prompts were in its training data")
    return lines


def judge_annotator(judge_file: str) -> str:
    """The annotator name of an LLM judge's labels: judge:<its file name>."""
    return f"{JUDGE_PREFIX}{Path(judge_file).name}"


def start_judge_labels(runner, dataset: str, judge: str, guideline: str = "", limit: int | None = None) -> int:
    """Label a dataset's pairs (at most `limit`, in id order) with an LLM judge (a GGUF model's name
    or file); its verdicts become labels of judge:<file>, never a person's."""
    path = llm_judge_file(runner.store, judge)
    if guideline:
        try:
            check_guideline(guideline)
        except JudgeError as e:
            raise RunError(str(e)) from None
    pairs = dataset_pair_texts(runner.store, dataset_id(runner.store, dataset), limit)
    if not pairs:
        raise RunError(f"dataset '{dataset}' has no pairs to label")
    config = make_config(JudgeLabelsConfig, "judge labelling", judge=path, guideline=guideline)
    rows = [{"pair_id": p["id"], "prompt": json.dumps(p["prompt"]), "first": json.dumps(p["first"]),
             "second": json.dumps(p["second"])} for p in pairs]
    return runner.start("judge-labels", config, {config.inputs: rows})
