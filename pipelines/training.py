"""What the training pipelines share: their common settings, the pairs they read, the LoRA and
trainer arguments chosen for the device, and a callback that reports progress to the run log and
turns a cancel request into a checkpoint.

Every trainer writes checkpoints into `<run>/checkpoints/`; a resumed run continues from the last
one (model, optimizer, scheduler, data order), so cancel + resume gives the same steps as one run.
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from pipelines.models import (
    ROUTER_PATTERN,
    ModelError,
    Placement,
    choose_placement,
    load_kwargs,
    load_tokenizer,
    resolve_model,
)
from pipelines.reward_model import write_meta
from pipelines.runlog import RunLog
from pipelines.settings import DEVICE_HELP, DTYPE_HELP, MODELS_DIR_HELP, setting

CHECKPOINTS = "checkpoints"
SHARDS = ("none", "fsdp")


@dataclass
class TrainSettings:
    """Settings every training run has (the pipelines' configs extend it)."""
    base: str = setting("default", "the model to train: default, a model folder or a hub id", label="Base model")
    models_dir: str = setting("", MODELS_DIR_HELP, internal=True)
    inputs: str = setting("inputs.parquet", "what the runner wrote: pairs or prompts", internal=True)
    output: str = setting("model", "the trained adapter's folder, inside the run folder", internal=True)
    learning_rate: float = setting(5e-5, "peak learning rate of the LoRA weights", label="Learning rate")
    batch_size: int = setting(4, "examples per device per optimizer step", label="Batch size")
    grad_accum: int = setting(1, "batches summed into one optimizer step", label="Gradient accumulation")
    max_length: int = setting(512, "tokens of prompt + answer; longer pairs are left out (reward model) or cut "
                              "(DPO)", label="Max tokens")
    epochs: float = setting(1.0, "passes over the data (when max_steps is not set)", label="Epochs")
    max_steps: int = setting(-1, "optimizer steps; a positive value overrides epochs", label="Max steps")
    seed: int = setting(0, "seed of the data order, the LoRA initialisation and sampling", label="Seed")
    lora_r: int = setting(16, "LoRA rank", label="LoRA r")
    lora_alpha: int = setting(32, "LoRA scaling (alpha / r multiplies the update)", label="LoRA alpha")
    lora_dropout: float = setting(0.05, "dropout on the LoRA path", label="LoRA dropout", advanced=True)
    lora_targets: list[str] = setting(["all-linear"], "modules that get LoRA: all-linear, or module names",
                                      label="LoRA modules", advanced=True)
    save_every: int = setting(50, "checkpoint every N optimizer steps (and on cancel)", label="Checkpoint every",
                              advanced=True)
    device: str = setting("auto", DEVICE_HELP, label="Device", advanced=True)
    dtype: str = setting("auto", DTYPE_HELP, label="Precision", advanced=True)
    load_in_4bit: bool = setting(False, "QLoRA: load the base in 4 bits (needs bitsandbytes; on a CPU it saves "
                                 "memory, not time)", label="4-bit base (QLoRA)", advanced=True)
    gradient_checkpointing: bool = setting(False, "recompute activations in the backward pass: less memory, "
                                           "about 30% slower", label="Gradient checkpointing", advanced=True)
    num_processes: int = setting(1, "processes to train in, one per GPU; more than 1 runs through accelerate "
                                 "launch (data-parallel)", label="Processes (GPUs)", advanced=True)
    shard: str = setting("none", "none: every process holds the whole base; fsdp: the base's weights, the LoRA "
                         "and its optimizer state are divided between the processes (FSDP2, through Accelerate), "
                         "for a base that does not fit one GPU; needs CUDA GPUs and 2 or more processes",
                         choices=SHARDS, label="Shard the base", advanced=True)

    def __post_init__(self):
        if self.shard not in SHARDS:
            raise ValueError(f"shard must be one of {', '.join(SHARDS)}, not {self.shard!r}")
        if self.shard == "fsdp" and self.num_processes < 2:
            raise ValueError("shard fsdp divides the base between processes: give num_processes 2 or more")


@dataclass
class PairTrainSettings(TrainSettings):
    """Settings of the methods that learn from preference pairs (they also evaluate on some)."""
    eval_inputs: str | None = setting(None, "pairs to evaluate on, written by the runner; else a held-out share",
                                      internal=True)
    eval_share: float = setting(0.1, "share of the pairs held out for evaluation when no eval dataset is given",
                                label="Held-out share")
    group_by_length: bool = setting(True, "batch examples of similar length together, so that little of a step is "
                                    "padding (the order is still shuffled, by the seed)", label="Group by length",
                                    advanced=True)


def read_pairs(path: str | Path) -> list[dict]:
    """Preference records {prompt, chosen, rejected} (message lists) from the runner's Parquet file."""
    rows = pq.read_table(path).to_pylist()
    # pair_id and chosen_side (when the store wrote them) let a report find each pair's labels;
    # chosen_cut and rejected_cut say which answers were cut by a length limit.
    return [{"prompt": json.loads(r["prompt"]), "chosen": json.loads(r["chosen"]),
             "rejected": json.loads(r["rejected"]),
             **{k: r[k] for k in ("pair_id", "chosen_side", "chosen_cut", "rejected_cut") if r.get(k) is not None}}
            for r in rows]


CUT_FLAGS = ("chosen_cut", "rejected_cut")


def pair_dataset(records: list[dict], cut_flags: bool = False):
    """A datasets.Dataset of the records' prompt, chosen and rejected (what TRL reads), and with
    `cut_flags` whether each answer was cut by a length limit (for `unfinish_cut_answers`)."""
    from datasets import Dataset

    return Dataset.from_list([{**{k: r[k] for k in ("prompt", "chosen", "rejected")},
                               **({k: bool(r.get(k)) for k in CUT_FLAGS} if cut_flags else {})} for r in records])


def end_of_turn_ids(tokenizer) -> list[int]:
    """The tokens a chat template writes after an assistant's text (SmolLM2: `<|im_end|>`, newline)."""
    prompt, text = [{"role": "user", "content": "Hello"}], "Hello to you"
    head = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False) + text
    whole = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": text}], tokenize=False)
    return tokenizer(whole[len(head):], add_special_tokens=False)["input_ids"] if whole.startswith(head) else []


def unfinish_cut_answers(trainer, tokenizer) -> int:
    """Train an answer that a length limit cut as unfinished: without the end-of-turn tokens the chat
    template gave it. Otherwise every cut answer teaches the model to end its turn mid-sentence,
    and a pair of an ended answer against a cut one cannot teach it to end. Works on a TRL trainer's
    tokenized datasets: each `<side>_ids` (chosen, rejected; KTO's completion) with its `<side>_cut`
    flag (`pair_dataset(..., cut_flags=True)`, `unpaired_records`); returns how many answers of the
    training set it changed."""
    end = end_of_turn_ids(tokenizer)
    flags = [c for c in trainer.train_dataset.column_names if c.endswith("_cut")]

    def unfinish(example):
        changed = 0
        for flag in flags:
            key = flag.removesuffix("_cut") + "_ids"
            ids = example[key]
            if end and example[flag] and len(ids) > len(end) and ids[-len(end):] == end:
                example[key] = ids[:-len(end)]
                changed += 1
        return {**example, "unfinished": changed}

    trainer.train_dataset = trainer.train_dataset.map(unfinish)
    changed = sum(trainer.train_dataset["unfinished"])
    trainer.train_dataset = trainer.train_dataset.remove_columns([*flags, "unfinished"])
    if trainer.eval_dataset is not None:
        trainer.eval_dataset = trainer.eval_dataset.map(unfinish).remove_columns([*flags, "unfinished"])
    return changed


def split(records: list, eval_share: float, seed: int) -> tuple[list, list]:
    """A seeded shuffle cut into train and eval parts; eval gets at least one record when the
    share is positive and there are two or more."""
    if not 0 <= eval_share < 1:
        raise ValueError(f"eval_share must be in [0, 1), got {eval_share}")
    order = list(records)
    random.Random(seed).shuffle(order)
    n_eval = math.ceil(len(order) * eval_share) if eval_share and len(order) > 1 else 0
    return order[n_eval:], order[:n_eval]


def placement_of(settings: TrainSettings) -> Placement:
    """Where and in what precision to train; a 4-bit base is checked here, before anything loads."""
    placement = choose_placement(settings.device, settings.dtype)
    if settings.load_in_4bit:
        check_4bit(placement.device)
    if getattr(settings, "shard", "none") == "fsdp" and placement.device != "cuda":
        # Measured: on CPU ranks Accelerate leaves its FSDP plugin aside and trains unsharded (DDP).
        raise ModelError("sharding (shard fsdp) needs CUDA GPUs: Accelerate shards only GPU ranks, and on this "
                         "machine's CPU the run would train unsharded; leave shard at none here, or bundle the "
                         "job for a GPU machine (--bundle)")
    return placement


def check_4bit(device: str) -> None:
    """QLoRA needs bitsandbytes (in the `gpu` and `test` extras): said before any model loads, not
    deep inside `from_pretrained` after the reward model has loaded. bitsandbytes 0.49 and later
    quantise to 4-bit NF4 on a CPU too (plain torch kernels): the same path runs there, saving
    memory but not time."""
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError("a 4-bit base (QLoRA) needs bitsandbytes: pip install -e '.[gpu]' (or make gpu)")
    if device == "cpu":
        import bitsandbytes

        major, minor = (int(part) for part in bitsandbytes.__version__.split(".")[:2])
        if (major, minor) < (0, 49):
            raise ModelError(f"a 4-bit base (QLoRA) on a CPU needs bitsandbytes 0.49 or later (this machine has "
                             f"{bitsandbytes.__version__}): pip install -U bitsandbytes, or train on a CUDA device")


def model_kwargs(settings: TrainSettings, placement: Placement) -> dict:
    """`from_pretrained` arguments of the base: dtype, device and, for QLoRA, 4 bits (placement_of
    has checked that it can be: CUDA, bitsandbytes)."""
    sharded = getattr(settings, "shard", "none") == "fsdp"
    if sharded and placement.device == "cuda":
        # Without a device_map, bitsandbytes quantises onto the current GPU, which is GPU 0 in every
        # rank until Accelerate sets it: each rank's 4-bit base would land on GPU 0.
        import torch

        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    kwargs = load_kwargs(placement, settings.load_in_4bit, quant_storage=placement.dtype if sharded else None)
    if not settings.load_in_4bit or sharded:  # FSDP places the shards itself
        # Accelerate (and PPO) place a trainable base themselves; a 4-bit one must load on its GPU.
        del kwargs["device_map"]
    return kwargs


def lora_config(settings: TrainSettings, task_type: str, modules_to_save: list[str] | None = None,
                trainable_token_indices: dict[str, list[int]] | None = None):
    """LoRA on the targets; `trainable_token_indices`: embedding rows trained whole (new tokens)."""
    from peft import LoraConfig

    targets = settings.lora_targets
    return LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                      target_modules=targets[0] if targets == ["all-linear"] else targets,
                      exclude_modules=ROUTER_PATTERN, task_type=task_type, modules_to_save=modules_to_save,
                      trainable_token_indices=trainable_token_indices)


def trainer_arguments(settings: TrainSettings, placement: Placement, run_dir: Path, has_eval: bool) -> dict:
    """Keyword arguments shared by TRL's configs: precision by device (bf16 only on CUDA cards that
    have it; TRL's own default of bf16 is about 30x slower on a CPU), checkpoints, logging."""
    return {**dict(
        output_dir=str(run_dir / CHECKPOINTS),
        learning_rate=settings.learning_rate,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum,
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        seed=settings.seed,
        data_seed=settings.seed,
        bf16=placement.dtype == "bfloat16",
        fp16=placement.dtype == "float16",
        use_cpu=placement.device == "cpu",
        activation_checkpointing=settings.gradient_checkpointing,
        logging_steps=1,
        save_strategy="steps",
        save_steps=settings.save_every,
        save_total_limit=2,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=settings.save_every if has_eval else None,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        **grouping_arguments(settings),
    ), **fsdp_arguments(settings)}


def fsdp_arguments(settings: TrainSettings) -> dict:
    """For shard fsdp: FSDP2 through the Trainer's Accelerate plugin, one shard group per decoder
    layer (the model's own `_no_split_modules`, as Accelerate picks them), a full state dict saved
    by the main process (a LoRA adapter is small), and FSDP's own activation checkpointing in place
    of the Trainer's (transformers asks for it so)."""
    if getattr(settings, "shard", "none") != "fsdp":
        return {}
    return {"fsdp": True, "activation_checkpointing": False,
            "fsdp_config": {"version": 2, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                            "state_dict_type": "FULL_STATE_DICT", "reshard_after_forward": True,
                            "cpu_ram_efficient_loading": False,
                            "activation_checkpointing": settings.gradient_checkpointing}}


def grouping_arguments(settings: TrainSettings) -> dict:
    """Length-grouped batches (transformers' LengthGroupedSampler: seeded shuffles of similar-length
    groups) for the pair trainers. The sampler reads a `length` column (`add_lengths`); TRL's collators
    pick their own keys, so unused columns are kept for it instead of being dropped."""
    if not getattr(settings, "group_by_length", False):
        return {}
    return {"train_sampling_strategy": "group_by_length", "remove_unused_columns": False}


def add_lengths(trainer, suffix: str = "_ids", answers_hold_the_prompt: bool = False) -> None:
    """Give a TRL trainer's tokenized datasets the `length` column that length grouping sorts by: the
    tokens of the longest sequence an example becomes (prompt + its longest answer). TRL's trainers
    name their token columns `<side>_ids` (DPO, KTO, the reward model) or, in the older style of its
    experimental ORPO, `<side>_input_ids` holding prompt and answer together (`suffix`,
    `answers_hold_the_prompt`)."""
    prompt_key = f"prompt{suffix}"

    def length(example):
        prompt = 0 if answers_hold_the_prompt else len(example.get(prompt_key) or [])
        answers = [len(v) for k, v in example.items() if k.endswith(suffix) and k != prompt_key and v is not None]
        return {"length": prompt + max(answers, default=0)}

    if trainer.args.train_sampling_strategy != "group_by_length":
        return
    trainer.train_dataset = trainer.train_dataset.map(length)
    if trainer.eval_dataset is not None:
        trainer.eval_dataset = trainer.eval_dataset.map(length)


def last_checkpoint(run_dir: Path) -> str | None:
    """The newest complete checkpoint: a process killed while saving leaves a folder without its
    trainer_state.json (written last), which cannot be resumed from and is skipped."""
    folder = run_dir / CHECKPOINTS
    complete = [p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()
                and (p / "trainer_state.json").is_file()] if folder.is_dir() else []
    return str(max(complete, key=lambda p: int(p.name.split("-")[-1]))) if complete else None


def cancel_agreed(requested: bool, device) -> bool:
    """Whether any process was asked to cancel. Under `accelerate launch` the ranks may see the
    stop request at different steps; one that stopped alone would leave the others waiting in
    their next all-reduce for ever. One small all-reduce a step makes them stop together."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return requested
    flag = torch.tensor([1 if requested else 0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def progress_callback(log: RunLog, eval_prefix: str = "eval_"):
    """A TrainerCallback that reports every logged metric with the step and stops, saving a
    checkpoint, when the run is asked to cancel. `eval_prefix` renames the trainer's evaluation
    metrics (a reward model's evaluations during the run on a subset are eval_subset_...)."""
    from transformers import TrainerCallback

    class ReportToRunLog(TrainerCallback):
        cancelled = False

        def on_log(self, args, state, control, logs=None, **kwargs):
            metrics = {(eval_prefix + k[len("eval_"):] if k.startswith("eval_") else k): v
                       for k, v in (logs or {}).items() if isinstance(v, (int, float)) and math.isfinite(v)}
            log.progress(state.global_step, state.max_steps, metrics=metrics)

        def on_step_end(self, args, state, control, **kwargs):
            if cancel_agreed(log.cancel_requested, args.device):
                self.cancelled = True
                control.should_save = True
                control.should_training_stop = True
            elif control.should_evaluate:  # set by the trainer's flow callback, which runs first
                log.event("running", step=state.global_step, total=state.max_steps,
                          message=f"evaluating at step {state.global_step}")

        def on_evaluate(self, args, state, control, **kwargs):
            log.event("running", step=state.global_step, total=state.max_steps,
                      message=f"training (evaluated at step {state.global_step})")

    return ReportToRunLog()


def train_with_resume(trainer, callback, run_dir: Path, log: RunLog) -> bool:
    """Train from the last checkpoint, if any; False if the run was cancelled (checkpoint saved,
    'cancelled' reported)."""
    checkpoint = last_checkpoint(run_dir)
    if checkpoint:
        log.event("running", message=f"resuming from {Path(checkpoint).name}")
    trainer.train(resume_from_checkpoint=checkpoint)
    if callback.cancelled:
        log.event("cancelled", message=f"cancelled at step {trainer.state.global_step}; checkpoint saved")
        return False
    return True


def pair_data(config: PairTrainSettings, run_dir: Path, read=read_pairs, what: str = "pairs") -> tuple[list, list]:
    """The records to train on and those to evaluate on (the eval dataset, else a held-out share):
    pairs, or what `read` makes of the runner's files (SFT's conversations)."""
    records = read(run_dir / config.inputs)
    if config.eval_inputs:
        train, held_out = records, read(run_dir / config.eval_inputs)
    else:
        train, held_out = split(records, config.eval_share, config.seed)
    if not train:
        raise ValueError(f"no {what} to train on")
    return train, held_out


def trainable_in_fp32(model, settings: TrainSettings) -> int:
    """Trainable parameters in float32 whatever the base's dtype; how many were cast. A bf16 copy
    of the reward model's score head rounds away Adam steps below ~6e-5 (it barely learns at the
    learning rates suggested for 7B bases) and an fp16 one fails ("Attempting to unscale FP16
    gradients"). The base stays in its dtype; mixed precision's autocast bridges the two. On a
    4-bit base too: TRL casts every trainable parameter to bf16 when it prepares a QLoRA model
    under bf16, an fp16 card would then train bf16 adapters it only emulates, and PEFT's 4-bit
    layers cast their input to the adapter's dtype and the result back."""
    import torch

    cast = 0
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()
            cast += 1
    return cast


def train_and_save(trainer, callback, config: TrainSettings, log: RunLog, kind: str, method: str,
                   held_out: list = (), eval_key: str = "") -> dict | None:
    """Train from the last checkpoint, if any; then the evaluation at the last step (the one the
    schedule made, else one now; {} without eval records; `eval_key` is a metric every evaluation
    logs) and the adapter saved with its meta file. The final eval metrics, or None when the run
    was cancelled (checkpoint saved, 'cancelled' reported)."""
    run_dir = log.path.parent
    trainable_in_fp32(trainer.model, config)  # before train() makes the optimizer over them
    if not train_with_resume(trainer, callback, run_dir, log):
        return None
    final = {}
    if held_out:
        evals = [h for h in trainer.state.log_history if eval_key in h]
        final = evals[-1] if evals and evals[-1].get("step") == trainer.state.global_step else trainer.evaluate()
    out = run_dir / config.output
    trainer.save_model(str(out))  # TRL/transformers save from the main process only
    if trainer.accelerator.is_main_process:
        write_meta(out, kind, config.base, resolve_model(config.base, config.models_dir), method)
    return final


def base_and_tokenizer(config: TrainSettings) -> tuple[str, object]:
    """The base's local folder (the default model converted once) and its tokenizer; and every
    random generator seeded with the run's seed, here, before the model is made: a reward model's
    score head and the LoRA matrices are initialised before the Trainer seeds (TRL wraps the model
    first), and torch's own seed differs in every process, so two runs of one config would differ."""
    from transformers import set_seed

    set_seed(config.seed)
    base_path = resolve_model(config.base, config.models_dir)
    return base_path, load_tokenizer(base_path)


def parameter_count(base: str, models_dir: str | Path) -> float | None:
    """The base model's parameters in billions, counted from its config on the meta device (exact
    for any architecture transformers knows, a mixture of experts' every expert included); None
    when its config is on neither this machine (a folder, the default model once converted) nor
    the hub's local cache."""
    from pipelines.memory import base_config, count_on_meta

    config = base_config(base, models_dir)
    if config is None:
        return None
    try:
        return count_on_meta(getattr(config, "text_config", None) or config)[0] / 1e9
    except (ValueError, KeyError, AttributeError, TypeError):  # an architecture this transformers cannot build
        return None


def suggested_settings(defaults: TrainSettings, billions: float | None, gpu_gb: float | None = None) -> dict:
    """Settings for a base of this size, from the method's defaults (tuned for models under 1B).

    Larger models get a lower learning rate and gradient checkpointing; the pair methods a smaller
    batch with gradient accumulation (same effective batch), PPO smaller mini-batches (its rollout
    batch stays: rewards are whitened over it), GRPO and RLOO keep their batch (a multiple of the
    answers per prompt). On a GPU (`gpu_gb`, its memory) where the base's 16-bit weights would take
    more than half the card, a 4-bit base (QLoRA): an 8B base on a 24 GB card."""
    if billions is None or billions < 1:
        return {}
    scale, batch = (0.5, 2) if billions < 4 else (0.25, 1)
    settings = {"learning_rate": defaults.learning_rate * scale, "gradient_checkpointing": True}
    if hasattr(defaults, "mini_batch_size"):
        settings["mini_batch_size"] = min(defaults.mini_batch_size, batch)
    elif not hasattr(defaults, "num_generations"):
        settings.update(batch_size=batch, grad_accum=max(1, defaults.batch_size * defaults.grad_accum // batch))
    if gpu_gb is not None and 2 * billions > gpu_gb / 2:
        settings["load_in_4bit"] = True
    return settings
