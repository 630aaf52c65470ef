"""ORPO: odds-ratio preference optimisation, TRL's (experimental) ORPOTrainer, LoRA.

    python -m pipelines.orpo --config runs/<id>/config.json

No reference model at all: the loss is the chosen answer's language-model loss plus beta times a
term that raises the odds of the chosen answer over the rejected one (Hong et al., 2024), so a
step runs the policy on both sides of a pair and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.runlog import RunLog, run_main
from pipelines.settings import setting
from pipelines.training import (
    PairTrainSettings,
    add_lengths,
    base_and_tokenizer,
    lora_config,
    model_kwargs,
    pair_data,
    pair_dataset,
    placement_of,
    progress_callback,
    train_and_save,
    trainer_arguments,
)


@dataclass
class ORPOTrainConfig(PairTrainSettings):
    """Align a policy to preference pairs with ORPO (TRL ORPOTrainer, LoRA, no reference model)."""
    beta: float = setting(0.1, "weight of the odds-ratio term beside the chosen answers' language-model loss (the "
                          "paper's lambda)", label="Beta")

    def __post_init__(self):
        super().__post_init__()
        if self.beta <= 0:
            raise ValueError(f"beta must be positive, not {self.beta}")


def run(config: ORPOTrainConfig, log: RunLog) -> None:
    from transformers import AutoModelForCausalLM
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    run_dir = log.path.parent
    train, held_out = pair_data(config, run_dir)
    placement = placement_of(config)
    base_path, tokenizer = base_and_tokenizer(config)
    model = AutoModelForCausalLM.from_pretrained(base_path, **model_kwargs(config, placement))
    args = ORPOConfig(**trainer_arguments(config, placement, run_dir, has_eval=bool(held_out)), beta=config.beta,
                      max_length=config.max_length)
    trainer = ORPOTrainer(model=model, args=args, train_dataset=pair_dataset(train),
                          eval_dataset=pair_dataset(held_out) if held_out else None, processing_class=tokenizer,
                          peft_config=lora_config(config, "CAUSAL_LM"))
    add_lengths(trainer, suffix="_input_ids", answers_hold_the_prompt=True)
    callback = progress_callback(log)
    trainer.add_callback(callback)
    log.event("running", message=f"training on {len(train)} pairs" + (f", evaluating on {len(held_out)}"
                                                                     if held_out else ""))
    final = train_and_save(trainer, callback, config, log, "policy", "orpo", held_out, "eval_rewards/margins")
    if final is None:
        return
    margins = f"eval reward margin {final['eval_rewards/margins']:.3f}" if "eval_rewards/margins" in final else \
        "no eval pairs"
    log.event("succeeded", step=trainer.state.global_step,
              message=f"ORPO trained ({trainer.state.global_step} steps); {margins}")


if __name__ == "__main__":
    raise SystemExit(run_main(ORPOTrainConfig, run))
