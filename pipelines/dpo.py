"""DPO: LoRA on the policy, TRL's DPOTrainer. The reference model is the same base with the
adapter disabled, so there is no second model in memory.

    python -m pipelines.dpo --config runs/<id>/config.json

Loss types offered: sigmoid (the DPO paper's), ipo, hinge, and sigmoid_norm (TRL's
length-normalised DPO). `precompute_ref_log_probs` computes the reference log-probabilities once
before training (one pass over the data; each step then runs the policy only).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pipelines.models import resolve_model
from pipelines.reward import STUDIO_META
from pipelines.runlog import RunLog, run_main
from pipelines.training import (TrainSettings, lora_config, model_kwargs, placement_of, progress_callback, read_pairs,
                                split, train_with_resume, trainer_arguments)

LOSS_TYPES = ("sigmoid", "ipo", "hinge", "sigmoid_norm")


@dataclass
class DPOTrainConfig(TrainSettings):
    """Align a policy to preference pairs with DPO (TRL DPOTrainer, LoRA)."""
    learning_rate: float = 5e-5
    beta: float = 0.1
    loss_type: str = "sigmoid"
    precompute_ref_log_probs: bool = False
    eval_inputs: str | None = None
    eval_share: float = 0.1

    def __post_init__(self):
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {', '.join(LOSS_TYPES)}, not {self.loss_type!r}")
        if self.beta <= 0:
            raise ValueError(f"beta must be positive, not {self.beta}")


def run(config: DPOTrainConfig, log: RunLog) -> None:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    run_dir = log.path.parent
    placement = placement_of(config)
    base_path = resolve_model(config.base, config.models_dir)
    pairs = read_pairs(run_dir / config.inputs)
    if config.eval_inputs:
        train, held_out = pairs, read_pairs(run_dir / config.eval_inputs)
    else:
        train, held_out = split(pairs, config.eval_share, config.seed)
    if not train:
        raise ValueError("no pairs to train on")

    tokenizer = AutoTokenizer.from_pretrained(base_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(base_path, **model_kwargs(config, placement))
    args = DPOConfig(**trainer_arguments(config, placement, run_dir, has_eval=bool(held_out)),
                     beta=config.beta, loss_type=[config.loss_type], max_length=config.max_length,
                     precompute_ref_log_probs=config.precompute_ref_log_probs)
    callback = progress_callback(log)
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(train),
                         eval_dataset=Dataset.from_list(held_out) if held_out else None,
                         processing_class=tokenizer, callbacks=[callback],
                         peft_config=lora_config(config, "CAUSAL_LM"))
    log.event("running", message=f"training on {len(train)} pairs" + (f", evaluating on {len(held_out)}" if held_out else ""))
    if not train_with_resume(trainer, callback, run_dir, log):
        return

    final = {}
    if held_out:  # the evaluation at the last step, when the schedule made one, else one now (logged either way)
        evals = [h for h in trainer.state.log_history if "eval_rewards/margins" in h]
        final = evals[-1] if evals and evals[-1].get("step") == trainer.state.global_step else trainer.evaluate()
    out = run_dir / config.output
    trainer.save_model(str(out))
    (out / STUDIO_META).write_text(json.dumps({"kind": "policy", "method": "dpo", "base": config.base,
                                               "base_path": base_path}))
    margins = f"eval reward margin {final['eval_rewards/margins']:.3f}" if "eval_rewards/margins" in final else "no eval pairs"
    log.event("succeeded", step=trainer.state.global_step,
              message=f"DPO trained ({trainer.state.global_step} steps); {margins}")


if __name__ == "__main__":
    raise SystemExit(run_main(DPOTrainConfig, run))
