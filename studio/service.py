"""The studio's one way to start a job, shared by the CLI and the tabs: each start validates the
request, reads its inputs from the store, refuses what would fail (a missing model, a judge that is
not independent, a run that cannot fit the GPU) before a run exists, and returns what it started.
The front ends only turn input into a call and the result into words."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from pipelines.bases import check_base, gguf_readiness
from pipelines.compare import CompareConfig
from pipelines.evaluate import EvaluateConfig
from pipelines.export import QUANTS, ExportConfig
from pipelines.generate import GenerateConfig
from pipelines.judge_labels import JudgeLabelsConfig
from pipelines.memory import MemoryPlan, base_config, free_gpu_gb, plan
from pipelines.models import (
    DEFAULT_MODEL,
    ModelError,
    adapter_meta,
    check_hub_id_available,
    check_model_name,
    local_folder,
)
from pipelines.perplexity import PerplexityConfig
from pipelines.reward_scoring import RewardScoringConfig
from pipelines.training import parameter_count, placement_of, suggested_settings
from store.models import model_named, model_path, reward_model_at, trained_adapter
from store.queries import dataset_pair_texts, run_row, unscored_responses
from studio.bundles import write_bundle
from studio.inputs import (
    EVAL_INPUTS,
    dataset_id,
    prompts_of,
    sft_records,
    split_by_prompt,
    trained_prompts,
    training_records,
)
from studio.judging import check_independent, checked_guideline, gguf_models, llm_judge_file
from studio.kinds import RunError, make_config
from studio.methods import METHODS, Method
from studio.runner import Runner

EVAL_PROMPTS = 64  # prompts an evaluation answers unless told otherwise
POLICY_METHODS = ", ".join(m.label for m in METHODS.values() if m.makes == "policy")


# --- training ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainingStart:
    """What a training start began: its runs (a judge split's proxy, then its judge) and the memory
    plan of each (None when the base's config is not on this machine)."""
    run_ids: tuple[int, ...]
    plan: MemoryPlan | None
    roles: tuple[str, ...] = ("",)   # a judge split's: ("proxy", "judge")
    bundle: Path | None = None       # with `bundle`: the folder written, and no run started
    free_gb: float | None = None     # this machine's free GPU memory when it started (None: no GPU)

    @property
    def run_id(self) -> int:
        return self.run_ids[0]


def training_settings(method: Method, given: dict, models_dir, free_gb: float | None) -> dict:
    """The settings a run gets: those given, and for the others the method's defaults adjusted to
    the base's size (and the GPU's free memory: pipelines.training.suggested_settings)."""
    billions = parameter_count(given.get("base") or DEFAULT_MODEL, models_dir)
    return {**suggested_settings(method.config(), billions, free_gb), **given}


def memory_plan_of(method: Method, config) -> MemoryPlan | None:
    """The estimated peak GPU memory of training `method` with `config`; None when the base's
    config is not on this machine."""
    base = base_config(config.base, config.models_dir)
    if base is None:
        return None
    dtype = "bfloat16" if config.dtype == "auto" else config.dtype  # what a GPU of today picks
    length = getattr(config, "max_new_tokens", 256) + 256 if method.online else getattr(config, "max_length", 512)
    return plan(base, method.shape, dtype=dtype, load_in_4bit=config.load_in_4bit, lora_r=config.lora_r,
                lora_targets=config.lora_targets, batch_size=config.batch_size, max_length=length,
                gradient_checkpointing=config.gradient_checkpointing, lora_dropout=config.lora_dropout,
                shards=config.num_processes if getattr(config, "shard", "none") == "fsdp" else 1)


def plan_words(estimate: MemoryPlan, free_gb: float | None) -> str:
    """The memory plan in a sentence for this machine (`free_gb`: its free GPU memory, None without a
    GPU): a machine without a GPU trains on its CPU, and the plan says what a GPU would need."""
    if free_gb is None:
        return f"This machine has no GPU: the run trains on its CPU (on a GPU, {estimate.describe()})"
    return estimate.describe()[0].upper() + estimate.describe()[1:]


def check_memory(estimate: MemoryPlan | None, force: bool, free: float | None) -> None:
    """Refuse a run that cannot fit this machine's GPU (`free` GB free; None: no GPU, nothing to
    check), unless forced."""
    if free is None or force or estimate is None or estimate.total_gb <= free:
        return
    raise RunError(f"{estimate.describe()}; the GPU has {free:.1f} GB free. Try --load-in-4bit, "
                   "--gradient-checkpointing or a smaller --batch-size (or try anyway: --force, or the Train "
                   "tab's Start anyway)")


def _reward_model_of_run(runner: Runner, run_id: int) -> str:
    path = model_path(runner.store, "reward", run_id=run_id)
    if not path:
        raise RunError(f"run {run_id} did not train a reward model (train one: alignstudio train rm)")
    return path


def _online_inputs(runner: Runner, m: Method, prompts, reward_run, judge_run) -> tuple[dict, dict]:
    """The config fields and input files of a method that answers prompts against a reward model."""
    if not prompts or reward_run is None:
        raise RunError(f"{m.label} needs a dataset of prompts and a reward model (the run that trained it)")
    fields = {"reward_adapter": _reward_model_of_run(runner, reward_run)}
    if judge_run is not None:
        fields["judge_adapter"] = _reward_model_of_run(runner, judge_run)
        if judge_run == reward_run:
            raise RunError(f"run {judge_run} trained the reward model this run optimises: it cannot judge it")
        check_independent(runner, judge_run, "the proxy", reward_run)
    return fields, {"inputs": prompts_of(runner.store, prompts)}


def _pair_inputs(runner: Runner, m: Method, dataset, eval_dataset, judge_run, judge_split) -> tuple[dict, dict]:
    """The config fields and input files of a method that learns from labelled pairs."""
    if judge_run is not None:
        raise RunError(f"{m.label} learns from pairs, not against a reward model: judge it afterwards (evaluate)")
    if not dataset:
        raise RunError(f"{m.label} needs a dataset of pairs")
    if judge_split and eval_dataset:
        raise RunError("a judge split holds out a share of each half: leave the eval dataset out")
    def records(name):
        return sft_records(runner.store, name) if m.name == "sft" else training_records(runner.store, name, m.reads)

    files = {"inputs": records(dataset)}
    if eval_dataset:
        files[EVAL_INPUTS] = records(eval_dataset)
        trained = {r.get("pair_id") for r in files["inputs"]} - {None}
        shared = sum(r.get("pair_id") in trained for r in files[EVAL_INPUTS])
        if shared:
            raise RunError(f"{shared} of the {len(files[EVAL_INPUTS])} eval pairs of '{eval_dataset}' are training "
                           f"pairs of '{dataset}': the evaluation would score what the run learned from; give pairs "
                           "it does not train on (alignstudio split), or leave eval out to hold out a share")
        return {"eval_inputs": EVAL_INPUTS}, files
    return {}, files


def base_named(store, name: str) -> str:
    """The base a run starts from: a trained policy's name (`sft-run3`, a previous round's policy)
    becomes its adapter's folder, which the pipeline merges into its base once and trains on, as
    its reference too; any other name (default, a folder, a hub id) is kept as it is."""
    import re

    model = model_named(store, name)
    if model is None:
        run = re.fullmatch(r"([a-z]+)-run(\d+)", name)
        if run and run.group(1) in METHODS:
            found = run_row(store, int(run.group(2)))
            status = found["status"] if found else None
            why = f"run {run.group(2)} {status}" if status else f"there is no run {run.group(2)}"
            raise RunError(f"no trained model named '{name}' ({why}); start from a policy a run has trained")
        return name
    if model["purpose"] == "reward":
        raise RunError(f"'{name}' is a reward model: it scores answers and cannot be trained on as a base; start "
                       "from a base model or a trained policy")
    if model["kind"] == "gguf":
        raise RunError(f"'{name}' is a GGUF file for llama.cpp; start from the policy it was exported from")
    return model["path"]


def start_training(runner: Runner, method: str, dataset: str | None = None, eval_dataset: str | None = None,
                   prompts: str | None = None, reward_run: int | None = None, judge_run: int | None = None,
                   judge_split: bool = False, force: bool = False, bundle: str | Path | None = None,
                   **settings) -> TrainingStart:
    """Train with a method of `METHODS`: on a dataset's preference pairs or verdicts (`dataset`, and
    `eval_dataset` or a held-out share), or on the prompts of `prompts` against the reward model
    trained by run `reward_run`, its over-optimisation watch judged by the reward model of
    `judge_run` (refused unless independent of the proxy). With `judge_split` (reward models), two
    runs on the two prompt-disjoint halves of the pairs: the proxy, then the judge. `settings` are
    the method's config fields; those not given are suggested for the base's size. The config is
    built once and its memory plan made once. With `bundle`, the job is written to that folder to
    run on another machine (studio.bundles) instead of started here."""
    if method not in METHODS:
        raise RunError(f"unknown training method {method!r}; one of {', '.join(METHODS)}")
    m = METHODS[method]
    if judge_split and not m.judge_split:
        raise RunError(
            f"{m.label} has no judge split (only {', '.join(x.label for x in METHODS.values() if x.judge_split)})"
        )
    if m.online:
        fields, files = _online_inputs(runner, m, prompts, reward_run, judge_run)
    else:
        fields, files = _pair_inputs(runner, m, dataset, eval_dataset, judge_run, judge_split)
    models_dir = str(runner.workspace.models_dir)
    free = free_gpu_gb()  # once per start (nvidia-smi in a process of its own)
    given = {k: v for k, v in settings.items() if k != "models_dir"}
    if given.get("base"):
        given["base"] = base_named(runner.store, given["base"])
    config = make_config(m.config, m.label, models_dir=models_dir, **fields,
                         **({"judge_split": "proxy"} if judge_split else {}),
                         **training_settings(m, given, models_dir, free))
    estimate = memory_plan_of(m, config)  # from the base's config.json alone: the first refusal, and the cheapest
    inputs = files.pop("inputs")
    if bundle is not None:  # it runs elsewhere: this machine's GPU and devices are not its
        if judge_split:
            raise RunError("a judge split is two runs: bundle each half's dataset instead (alignstudio split)")
        written = write_bundle(runner, bundle, method, config, {config.inputs: inputs, **files}, dataset or prompts)
        return TrainingStart((), estimate, bundle=written)
    check_memory(estimate, force, free)
    check_placement(config)
    if not judge_split:
        return TrainingStart((runner.start(method, config, {config.inputs: inputs, **files}, dataset or prompts),),
                             estimate, free_gb=free)
    proxy_half, judge_half = split_by_prompt(inputs, config.seed)
    if not proxy_half or not judge_half:
        raise RunError(f"dataset '{dataset}' has labelled pairs on only one prompt: a judge split needs two or more")
    runs = tuple(runner.start(method, dataclasses.replace(config, judge_split=role), {config.inputs: half}, dataset)
                 for role, half in (("proxy", proxy_half), ("judge", judge_half)))
    return TrainingStart(runs, estimate, ("proxy", "judge"), free_gb=free)


# --- the other kinds ----------------------------------------------------------------------------

def start_perplexity(runner: Runner, dataset: str, **settings) -> int:
    """Score every response of `dataset` not yet scored under the model (`model`, default `default`)."""
    config = make_config(PerplexityConfig, "perplexity", models_dir=str(runner.workspace.models_dir), **settings)
    checked_model(config.model)
    rows = unscored_responses(runner.store, dataset_id(runner.store, dataset), "perplexities", config.model)
    if not rows:
        raise RunError(f"dataset '{dataset}' has no responses left to score under '{config.model}'")
    return runner.start("perplexity", config, {config.inputs: rows}, dataset)


def start_generation(runner: Runner, dataset: str, limit: int | None = None, **settings) -> int:
    """Sample `n` candidate responses for every prompt of `dataset` (its first `limit`, if given)."""
    config = make_config(GenerateConfig, "generation", models_dir=str(runner.workspace.models_dir), **settings)
    try:
        engine = config.resolved_engine()  # an unknown engine is refused before the run exists
    except ValueError as e:
        raise RunError(str(e)) from None
    checked_model(config.model, gguf=True)
    folder = local_folder(config.model, config.models_dir)
    if engine == "llama.cpp" and config.model != DEFAULT_MODEL and (folder / "config.json").is_file():
        refused = gguf_readiness(folder, config.models_dir)  # a folder llama.cpp's converter would refuse
        if refused:
            raise RunError(f"{folder} cannot answer in llama.cpp: {refused}; use the transformers engine")
    return runner.start("generate", config, {config.inputs: prompts_of(runner.store, dataset, limit)}, dataset)


def checked_model(name: str, gguf: bool = False) -> None:
    """A model a job reads, refused before its run exists: the default model, a model folder, a hub
    id, or (where `gguf`) a .gguf file."""
    if gguf and name.endswith(".gguf"):
        if not Path(name).expanduser().is_file():
            raise RunError(f"{name}: no such GGUF file")
        return
    try:
        check_model_name(name)
    except ModelError as e:
        raise RunError(str(e)) from None


def start_reward_scoring(runner: Runner, dataset: str, reward_model: str, **settings) -> int:
    """Score every response of `dataset` not yet scored by the reward model named `reward_model`."""
    path = model_path(runner.store, "reward", name=reward_model)
    if not path:
        raise RunError(f"no reward model named '{reward_model}' (train one: alignstudio train rm)")
    config = make_config(RewardScoringConfig, "reward scoring", adapter=path, **settings)
    rows = unscored_responses(runner.store, dataset_id(runner.store, dataset), "rewards", reward_model)
    if not rows:
        raise RunError(f"dataset '{dataset}' has no responses left to score with '{reward_model}'")
    return runner.start("reward-scoring", config, {config.inputs: rows}, dataset)


def check_placement(config) -> None:
    """The base model (a name that exists, a folder a pipeline can train: pipelines.bases), and the
    device, precision and 4-bit settings this machine can run, checked before a run exists."""
    try:
        check_base_model(config.base, config.models_dir, getattr(config, "chat_format", "auto") != "auto")
        placement_of(config)
    except (ModelError, ValueError) as e:
        raise RunError(str(e)) from None


def check_base_model(base: str, models_dir, template_given: bool = False) -> None:
    check_model_name(base)
    folder = local_folder(base, models_dir)
    if adapter_meta(base) is not None:  # a trained policy: its tokenizer (and chat template) is beside its adapter
        return
    if base != DEFAULT_MODEL and folder.is_dir():
        check_base(folder, template_given)
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


def start_evaluation(runner: Runner, policy_run: int, prompts: str, judge_run: int | None = None, rule: str = "",
                     limit: int = EVAL_PROMPTS, proxy_run: int | None = None, proxy_picked_the_pairs: bool = False,
                     reference_file: str | None = None, against: str | None = None, **settings) -> int:
    """Answer up to `limit` prompts of a dataset with the policy of `policy_run` and with its base,
    and judge the answers by the policy's proxy (the reward model it was trained against, if any;
    for a policy trained on pairs, the reward model of `proxy_run`, trained on the same pairs), by
    the reward model of `judge_run` (refused unless it was trained on prompts that neither the
    policy nor the proxy saw) and/or by a named `rule`. Reports per judge the win rate with its
    interval, and the KL and length change (stored as the evaluation run's metrics).
    `proxy_picked_the_pairs`: the reward model of `proxy_run` chose the policy's pairs (a round's
    best against worst), so it is the policy's proxy though it was trained on other prompts.
    `against`: another trained policy of the same base (its name) to judge it against instead of
    its base (the control: DPO against SFT on the chosen answers)."""
    store = runner.store
    policy = model_path(store, "policy", run_id=policy_run)
    if not policy:
        raise RunError(f"run {policy_run} did not train a policy (train one: alignstudio train "
                       f"{'|'.join(m.name for m in METHODS.values() if m.makes == 'policy')})")
    if against:
        settings.update(against_policy(store, policy, against))
    policy_config = json.loads(runner.get(policy_run)["config"])
    proxy = reward_model_at(store, policy_config.get("reward_adapter") or "")
    fields = {"proxy_adapter": policy_config["reward_adapter"], "proxy_name": proxy["name"]} if proxy else {}
    if proxy_run is not None and not (proxy and proxy["run_id"] == proxy_run):
        if proxy:
            raise RunError(f"run {policy_run}'s policy optimised the reward model of run {proxy['run_id']}: that is "
                           "its proxy, reported anyway; give another reward model as a judge (judge run) instead")
        path = model_path(store, "reward", run_id=proxy_run)
        if not path:
            raise RunError(f"run {proxy_run} did not train a reward model")
        if not proxy_picked_the_pairs and not trained_prompts(runner, proxy_run) & trained_prompts(runner, policy_run):
            raise RunError(f"the reward model of run {proxy_run} shares no prompt with the pairs run {policy_run} "
                           "trained on: it is no proxy of them; give it as a judge (judge run) instead")
        proxy = reward_model_at(store, path)
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
        fields.update(judge_adapter=judge, judge_name=reward_model_at(store, judge)["name"])
    if settings.get("llm_judge"):
        settings["llm_judge"] = llm_judge_file(store, settings["llm_judge"])
    checked_guideline(settings.get("judge_guideline") or "")
    if judge_run is None and not rule and not settings.get("llm_judge"):
        # never the proxy alone: it cannot tell improvement from reward hacking
        raise RunError(f"give an independent judge for run {policy_run}'s policy: a reward model trained on other "
                       "prompts (judge run; alignstudio train rm --judge-split makes one), an LLM judge (a GGUF chat "
                       "model) or a rule"
                       + (f"; its proxy ({proxy['name']}) is reported beside it, never alone" if proxy else ""))
    rows = prompts_of(store, prompts, limit)
    trained = trained_prompts(runner, policy_run)
    seen = len({r["prompt_id"] for r in rows} & trained)
    # The cost card in proportion to the evaluation: a quick one (a few prompts) stays quick.
    references = reference_answers(store, reference_file or prompts, trained, min(REFERENCE_ANSWERS, len(rows)),
                                   from_file=bool(reference_file))
    settings.setdefault("refusal_limit", min(EvaluateConfig.refusal_limit, len(rows)))
    files = {"references.parquet": references} if references else {}
    config = make_config(EvaluateConfig, "evaluation", policy_adapter=policy, rule=rule, seen_in_training=seen,
                         models_dir=str(runner.workspace.models_dir),
                         reference_inputs="references.parquet" if references else "", **fields, **settings)
    return runner.start("evaluate", config, {config.inputs: rows, **files}, prompts)


REFERENCE_ANSWERS = 64  # held-out reference answers the cost card's perplexity is measured on


def against_policy(store, policy: str, against: str) -> dict:
    """The evaluation's fields for judging the policy in folder `policy` against the trained policy
    named `against`: refused unless it is another policy of the same base, loadable beside it."""
    from pipelines.chat_formats import NEW_TOKENS

    found = model_named(store, against)
    if found is None or found["kind"] != "adapter" or found["purpose"] != "policy":
        raise RunError(f"'{against}' is not a trained policy (see alignstudio models); to judge against the base, "
                       "leave --against out")
    if found["path"] == policy:
        raise RunError(f"'{against}' is the policy itself: judge it against another policy, or its base")
    bases = {path: (adapter_meta(path) or {}).get("base") for path in (policy, found["path"])}
    if bases[policy] == found["path"]:
        raise RunError(f"the policy was trained from '{against}': that is its base already; leave --against out")
    if bases[policy] != bases[found["path"]]:
        raise RunError(f"'{against}' was trained from {bases[found['path']]}, the policy from {bases[policy]}: only "
                       "policies of one base can be compared this way (each can be judged against its own base)")
    if any((Path(path) / NEW_TOKENS).is_file() for path in bases):
        raise RunError("a policy trained with a chat format added (new tokens) is judged against its own base only")
    return {"against_adapter": found["path"], "against_name": against}


def reference_answers(store, source: str, trained: set[str], limit: int, from_file: bool = False) -> list[dict]:
    """Reference answers the policy never trained on, for the cost card's held-out perplexity: the
    preferred answers of a dataset's pairs whose prompts are not among `trained`, or the records
    of a JSONL file (prompt and completion, or a conversation ending on an answer); [] for a
    dataset without pairs. A file that gives none is refused in a sentence."""
    from store.db import prompt_key
    from store.exports import preference_records
    from store.formats import BadRecord, parse_demonstration_record

    if not from_file:
        try:
            pairs, _ = preference_records(store, source)
        except Exception:  # noqa: BLE001 - no pairs: no reference text from this dataset
            return []
        rows = [(p["prompt"], p["chosen"]) for p in pairs]
    else:
        path = Path(source)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise RunError(f"{path}: cannot read the reference answers ({e})") from None
        rows = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                item = parse_demonstration_record(json.loads(line))
            except (ValueError, BadRecord) as e:
                raise RunError(f"{path}:{number}: {e}; a reference is a JSON line with a prompt and a completion") \
                    from None
            rows.append((item.prompt, item.reference))
        if not rows:
            raise RunError(f"{path}: no reference answers in the file")
    kept = [{"prompt": json.dumps(p), "answer": json.dumps(a)} for p, a in rows if prompt_key(p) not in trained]
    if from_file and not kept:
        raise RunError(f"{source}: every reference answer's prompt was in the policy's training data; give answers "
                       "to prompts it never saw")
    return kept[:limit]


def start_export(runner: Runner, run_id: int | None = None, model: str | None = None,
                 quants: list[str] | tuple[str, ...] = tuple(QUANTS)) -> int:
    """Export the policy trained by `run_id`, or the model named `model` (a policy adapter's name,
    `default`, or a model folder), to GGUF files of the given quants."""
    store, models_dir = runner.store, str(runner.workspace.models_dir)
    if (run_id is None) == (model is None):
        raise RunError("export either a run's policy (run id) or a model (name), not both")
    found = trained_adapter(store, run_id) if run_id is not None else model_named(store, model)
    rows = [found] if found else []
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


def start_comparison(runner: Runner, model_a: str, model_b: str, prompts: str, into: str | None = None,
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
    return runner.start("compare", config, {config.inputs: rows}, prompts)


def start_judge_labels(runner: Runner, dataset: str, judge: str, guideline: str = "", limit: int | None = None) -> int:
    """Label a dataset's pairs (at most `limit`, in id order) with an LLM judge (a GGUF model's name
    or file); its verdicts become labels of judge:<file>, never a person's."""
    path = llm_judge_file(runner.store, judge)
    checked_guideline(guideline)
    pairs = dataset_pair_texts(runner.store, dataset_id(runner.store, dataset), limit)
    if not pairs:
        raise RunError(f"dataset '{dataset}' has no pairs to label")
    config = make_config(JudgeLabelsConfig, "judge labelling", judge=path, guideline=guideline)
    rows = [{"pair_id": p["id"], "prompt": json.dumps(p["prompt"]), "first": json.dumps(p["first"]),
             "second": json.dumps(p["second"])} for p in pairs]
    return runner.start("judge-labels", config, {config.inputs: rows}, dataset)


def start_benchmark(runner: Runner, model: str, tasks: list[str] | None = None, against: str | None = None,
                    **settings) -> int:
    """lm-evaluation-harness on a model (a trained policy's name, default, a folder) and on what it
    is compared with: `against`, else a policy's own base (a model that is no policy runs alone)."""
    import importlib.util

    from pipelines.benchmark import BenchmarkConfig, check_tasks

    if importlib.util.find_spec("lm_eval") is None:
        raise RunError("benchmarks run lm-evaluation-harness: pip install -e '.[bench]'")
    found = model_named(runner.store, model)
    if found is not None and found["purpose"] == "reward":
        raise RunError(f"'{model}' is a reward model: it scores answers; benchmark a policy or a base")
    if found is not None and found["kind"] == "gguf":
        raise RunError(f"'{model}' is a GGUF file; benchmark the policy it was exported from")
    path = base_named(runner.store, model)
    if against is None and found is not None and found["kind"] == "adapter":
        against = found["base"] or DEFAULT_MODEL
    fields = {"model": path, "against": base_named(runner.store, against) if against else "",
              "models_dir": str(runner.workspace.models_dir), **({"tasks": tasks} if tasks else {})}
    config = make_config(BenchmarkConfig, "benchmark", **fields, **settings)
    check_tasks(config.tasks)  # a BenchmarkError: a sentence before the run exists
    for name in (config.model, config.against):
        if name:
            try:
                check_model_name(name)
            except ModelError as e:
                raise RunError(str(e)) from None
    return runner.start("benchmark", config, {}, None)
