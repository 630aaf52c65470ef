"""KTO: LoRA on the policy, TRL's KTOTrainer, from unpaired verdicts: each answer is desirable or
not, on its own. The studio's labels give them: the preferred side of a pair is desirable, the
other side is not, and both sides of a pair labelled both-bad are undesirable (a verdict DPO
cannot use). The reference is the base with the adapter disabled.

    python -m pipelines.kto --config runs/<id>/config.json

Inputs (`inputs.parquet`): pair_id, prompt and completion (JSON message lists) and label (bool).
Held-out answers are chosen by pair, so that no pair has one side in training and one in evaluation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow.parquet as pq

from pipelines.runlog import RunLog, run_main
from pipelines.settings import setting
from pipelines.training import (
    PairTrainSettings,
    base_and_tokenizer,
    lora_config,
    model_kwargs,
    placement_of,
    progress_callback,
    split,
    train_and_save,
    trainer_arguments,
    unfinish_cut_answers,
)


@dataclass
class KTOTrainConfig(PairTrainSettings):
    """Align a policy to unpaired verdicts with KTO (TRL KTOTrainer, LoRA)."""
    beta: float = setting(0.1, "strength of the pull to the base: higher keeps the policy closer", label="Beta")
    desirable_weight: float = setting(1.0, "weight of the desirable answers' loss (raise it when they are fewer)",
                                      label="Desirable weight")
    undesirable_weight: float = setting(1.0, "weight of the undesirable answers' loss", label="Undesirable weight")
    group_by_length: bool = setting(False, "KTO estimates its KL term against each answer's neighbours in a "
                                    "fixed-order batch, so its order is not regrouped", internal=True)

    def __post_init__(self):
        super().__post_init__()
        if self.beta <= 0:
            raise ValueError(f"beta must be positive, not {self.beta}")


def read_verdicts(path) -> list[dict]:
    return [{"pair_id": r["pair_id"], "prompt": json.loads(r["prompt"]), "completion": json.loads(r["completion"]),
             "label": bool(r["label"]), "completion_cut": bool(r.get("completion_cut"))}
            for r in pq.read_table(path).to_pylist()]


def verdict_data(config: KTOTrainConfig, run_dir) -> tuple[list, list]:
    rows = read_verdicts(run_dir / config.inputs)
    if config.eval_inputs:
        train, held_out = rows, read_verdicts(run_dir / config.eval_inputs)
    else:
        train_pairs, held_pairs = split(sorted({r["pair_id"] for r in rows}), config.eval_share, config.seed)
        held = set(held_pairs)
        train, held_out = [r for r in rows if r["pair_id"] not in held], [r for r in rows if r["pair_id"] in held]
    if not train:
        raise ValueError("no labelled answers to train on")
    strip = lambda records: [{k: r[k] for k in ("prompt", "completion", "label", "completion_cut")}  # noqa: E731
                             for r in records]
    return strip(train), strip(held_out)


def run(config: KTOTrainConfig, log: RunLog) -> None:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import KTOConfig, KTOTrainer

    run_dir = log.path.parent
    placement = placement_of(config)
    train, held_out = verdict_data(config, run_dir)
    base_path, tokenizer = base_and_tokenizer(config)
    model = AutoModelForCausalLM.from_pretrained(base_path, **model_kwargs(config, placement))
    args = KTOConfig(**trainer_arguments(config, placement, run_dir, has_eval=bool(held_out)),
                     beta=config.beta, desirable_weight=config.desirable_weight,
                     undesirable_weight=config.undesirable_weight, max_length=config.max_length)
    callback = progress_callback(log)
    trainer = KTOTrainer(model=model, args=args, train_dataset=Dataset.from_list(train),
                         eval_dataset=Dataset.from_list(held_out) if held_out else None,
                         processing_class=tokenizer, callbacks=[callback],
                         peft_config=lora_config(config, "CAUSAL_LM"))
    unfinished = unfinish_cut_answers(trainer, tokenizer)
    desirable = sum(r["label"] for r in train)
    message = (f"training on {len(train)} answers ({desirable} desirable, {len(train) - desirable} not)"
               + (f", evaluating on {len(held_out)}" if held_out else ""))
    if unfinished:
        message += f" ({unfinished} cut by their length limit trained as unfinished)"
    log.event("running", message=message)
    final = train_and_save(trainer, callback, config, log, "policy", "kto", held_out, "eval_rewards/margins")
    if final is None:
        return
    margins = (
        f"eval reward margin {final['eval_rewards/margins']:.3f}"
        if "eval_rewards/margins" in final
        else "no eval answers"
    )
    log.event("succeeded", step=trainer.state.global_step,
              message=f"KTO trained ({trainer.state.global_step} steps); {margins}")


if __name__ == "__main__":
    raise SystemExit(run_main(KTOTrainConfig, run))
