"""GRPO against a reward model, with TRL's GRPOTrainer: for each prompt a group of answers is
sampled, each answer's advantage is its reward against the group's mean (no value model), and a
KL penalty (`beta`) keeps the policy near the base. LoRA on the policy; the reward model's LoRA is
merged into its base before TRL gets it. `train_online` serves RLOO too (`pipelines.rloo`).

    python -m pipelines.grpo --config runs/<id>/config.json
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow.parquet as pq

from pipelines.reward_model import load_reward_model
from pipelines.runlog import RunLog, run_main
from pipelines.settings import not_used, redefault, setting
from pipelines.training import (TrainSettings, base_and_tokenizer, lora_config, model_kwargs, placement_of,
                                progress_callback, train_and_save, trainer_arguments)


@dataclass
class OnlineTrainConfig(TrainSettings):
    """Fine-tune a policy against a trained reward model with TRL's GRPO or RLOO."""
    reward_adapter: str = setting("", "the reward model's adapter folder", internal=True)
    learning_rate: float = redefault(TrainSettings, "learning_rate", 1e-4, "for LoRA, as PPO's")
    max_steps: int = setting(40, "optimizer steps: max_steps / num_iterations batches of answers", label="Max steps")
    batch_size: int = setting(4, "answers per step; a multiple of num_generations", label="Batch size")
    num_generations: int = setting(4, "answers sampled per prompt (the group)", label="Answers per prompt")
    # Sampling is most of a step's time, so reusing each batch 4 times learns more per minute than
    # TRL's default of 1.
    num_iterations: int = setting(4, "optimizer steps on each batch of answers before sampling new ones (TRL's "
                                  "mu, clipped like PPO)", label="Updates per batch")
    max_new_tokens: int = setting(64, "answer length limit in tokens", label="Max answer tokens")
    temperature: float = setting(1.0, "sampling temperature of the answers", label="Temperature")
    beta: float = setting(0.04, "weight of the KL penalty to the base", label="KL weight")
    save_every: int = redefault(TrainSettings, "save_every", 10)
    max_length: int = not_used(TrainSettings, "max_length", "not used: max_new_tokens limits the answers")


def train_online(config: OnlineTrainConfig, log: RunLog, method: str, trainer_cls, config_cls) -> None:
    """GRPO or RLOO (TRL's trainers) on the run's prompts, rewarded by the trained reward model
    with its LoRA merged into its base; saves the policy's adapter like the other trainers."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    run_dir = log.path.parent
    placement = placement_of(config)
    prompts = [{"prompt": json.loads(r["prompt"])} for r in pq.read_table(run_dir / config.inputs).to_pylist()]
    if not prompts:
        raise ValueError("no prompts to train on")
    reward_tokenizer, reward_model = load_reward_model(config.reward_adapter, placement)
    reward_model = reward_model.merge_and_unload()
    base_path, tokenizer = base_and_tokenizer(config)
    model = AutoModelForCausalLM.from_pretrained(base_path, **model_kwargs(config, placement))
    args = config_cls(**trainer_arguments(config, placement, run_dir, has_eval=False),
                      num_generations=config.num_generations, num_iterations=config.num_iterations,
                      max_completion_length=config.max_new_tokens,
                      temperature=config.temperature, beta=config.beta)
    callback = progress_callback(log)
    trainer = trainer_cls(model=model, reward_funcs=reward_model, args=args, train_dataset=Dataset.from_list(prompts),
                          processing_class=tokenizer, reward_processing_classes=reward_tokenizer, callbacks=[callback],
                          peft_config=lora_config(config, "CAUSAL_LM"))
    if train_and_save(trainer, callback, config, log, "policy", method) is None:
        return
    log.event("succeeded", step=trainer.state.global_step,
              message=f"{method.upper()} trained ({trainer.state.global_step} steps)")


def run(config: OnlineTrainConfig, log: RunLog) -> None:
    from trl import GRPOConfig, GRPOTrainer

    train_online(config, log, "grpo", GRPOTrainer, GRPOConfig)


if __name__ == "__main__":
    raise SystemExit(run_main(OnlineTrainConfig, run))
