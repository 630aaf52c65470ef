"""RLOO against a reward model, with TRL's RLOOTrainer: several answers per prompt, each answer's
baseline the mean reward of the others (leave one out), a KL penalty (`beta`) to the base. Same
settings as GRPO (`pipelines.grpo.OnlineTrainConfig`).

    python -m pipelines.rloo --config runs/<id>/config.json
"""

from __future__ import annotations

from pipelines.grpo import OnlineTrainConfig, train_online
from pipelines.runlog import RunLog, run_main


def run(config: OnlineTrainConfig, log: RunLog) -> None:
    from trl import RLOOConfig, RLOOTrainer

    train_online(config, log, "rloo", RLOOTrainer, RLOOConfig)


if __name__ == "__main__":
    raise SystemExit(run_main(OnlineTrainConfig, run))
