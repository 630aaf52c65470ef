"""GRPO against a reward model, with TRL's GRPOTrainer: for each prompt a group of answers is
sampled, each answer's advantage is its reward against the group's mean (no value model), and a
KL penalty (`beta`) keeps the policy near the base. LoRA on the policy; the reward model's LoRA is
merged into its base before TRL gets it.

    python -m pipelines.grpo --config runs/<id>/config.json
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.runlog import RunLog, run_main
from pipelines.training import TrainSettings, train_online


@dataclass
class OnlineTrainConfig(TrainSettings):
    """Fine-tune a policy against a trained reward model with TRL's GRPO or RLOO."""
    reward_adapter: str = ""           # the reward model's adapter folder
    learning_rate: float = 1e-4        # for LoRA, as PPO's
    max_steps: int = 40                # optimizer steps: max_steps / num_iterations batches of answers
    batch_size: int = 4                # answers per step; a multiple of num_generations
    num_generations: int = 4           # answers sampled per prompt (the group)
    # Optimizer steps on each batch of answers (TRL's mu, clipped like PPO). Sampling is most of a
    # step's time, so reusing each batch 4 times learns more per minute than TRL's default of 1.
    num_iterations: int = 4
    max_new_tokens: int = 64
    temperature: float = 1.0
    beta: float = 0.04                 # weight of the KL penalty to the base
    save_every: int = 10


def run(config: OnlineTrainConfig, log: RunLog) -> None:
    from trl import GRPOConfig, GRPOTrainer

    train_online(config, log, "grpo", GRPOTrainer, GRPOConfig)


if __name__ == "__main__":
    raise SystemExit(run_main(OnlineTrainConfig, run))
