"""The training methods, described once. The CLI's `train` subcommands, the Train tab's form and
plots, and the job runner all read this table; a setting's default and help live on its config
field (`pipelines.settings`). Adding a method is one entry here plus its pipeline module.

A method's `name` is its name everywhere: the CLI subcommand (`alignstudio train rm`), the run's
kind in the store, and the prefix of the model it makes (`rm-run3`); `label` is what the UI shows.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.dpo import DPOTrainConfig
from pipelines.grpo import OnlineTrainConfig
from pipelines.kto import KTOTrainConfig
from pipelines.memory import Shape
from pipelines.orpo import ORPOTrainConfig
from pipelines.ppo import PPOTrainConfig
from pipelines.reward import RewardTrainConfig
from pipelines.sft import SFTTrainConfig

TRL_LOSSES = ("loss", "eval_loss")
# TRL's GRPO and RLOO trainers log the same names.
GROUP_METRICS = ("reward", "kl", "reward_std", "entropy", "completions/mean_length", "completions/clipped_ratio")
# The over-optimisation watch of the online methods (pipelines.watch): win rates against the base
# on held-out prompts by the proxy and by the judge, and the KL there.
WATCH_METRICS = ("watch/proxy_win", "watch/judge_win", "watch/kl")


@dataclass(frozen=True)
class Method:
    name: str                        # CLI subcommand, run kind, model name prefix
    label: str                       # what the UI calls it
    module: str                      # the pipeline: python -m <module> --config config.json
    config: type                     # its config dataclass (settings, defaults, help)
    reads: str                       # "pairs": preference pairs; "verdicts": each answer desirable or not
                                     # (from the same labels); "prompts": prompts + a reward model
    makes: str                       # "reward" (a reward model) or "policy"
    summary: str                     # one line, for `--help` and the Train tab
    plotted: tuple[str, ...]         # metrics worth plotting beside the loss
    plotted_first: tuple[str, ...]   # those plotted at first: one scale, so a length of 40 tokens
                                     # does not flatten a reward of 0.3
    losses: tuple[str, ...] = TRL_LOSSES
    shape: Shape = Shape()           # what its batches hold, for the memory plan
    judge_split: bool = False        # can train as two halves split by prompt: a proxy and a judge

    @property
    def online(self) -> bool:
        """Trained on its own answers to prompts, scored by a reward model (not on pairs)."""
        return self.reads == "prompts"


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("sft", "SFT", "pipelines.sft", SFTTrainConfig, reads="pairs", makes="policy",
           summary="LoRA on the policy fine-tuned on the preferred answers of the pairs (TRL's SFTTrainer), loss on "
                   "the assistant's tokens: the loop's first stage, and the control a preference method must beat",
           plotted=("eval_loss", "mean_token_accuracy", "eval_mean_token_accuracy", "num_tokens"),
           plotted_first=("mean_token_accuracy", "eval_mean_token_accuracy"), shape=Shape(sequences=1)),
    Method("rm", "Reward model", "pipelines.reward", RewardTrainConfig, reads="pairs", makes="reward",
           summary="a LoRA reward model with a one-number score head, trained so that the chosen answer of a "
                   "pair scores above the rejected one (TRL's RewardTrainer)",
           plotted=("accuracy", "margin", "eval_accuracy", "eval_margin", "eval_subset_accuracy",
                    "eval_subset_margin"),
           plotted_first=("accuracy", "margin", "eval_accuracy", "eval_margin", "eval_subset_accuracy",
                          "eval_subset_margin"),
           losses=("loss", "eval_loss", "eval_subset_loss"), shape=Shape(sequences=2, logits="none"),
           judge_split=True),
    Method("dpo", "DPO", "pipelines.dpo", DPOTrainConfig, reads="pairs", makes="policy",
           summary="LoRA on the policy trained directly on the pairs (TRL's DPOTrainer), the base with its "
                   "adapter disabled as the reference",
           plotted=("rewards/margins", "rewards/chosen", "rewards/rejected", "rewards/accuracies",
                    "eval_rewards/margins", "logps/chosen"),
           plotted_first=("rewards/margins", "rewards/chosen", "rewards/rejected", "rewards/accuracies",
                          "eval_rewards/margins"), shape=Shape(sequences=2, logits="chunk")),
    Method("kto", "KTO", "pipelines.kto", KTOTrainConfig, reads="verdicts", makes="policy",
           summary="LoRA on the policy trained on each answer's own verdict, desirable or not (TRL's KTOTrainer): "
                   "the preferred side of a pair is desirable, the other and both sides of a both-bad pair are not",
           plotted=("rewards/margins", "rewards/chosen", "rewards/rejected", "kl", "eval_rewards/margins"),
           plotted_first=("rewards/margins", "rewards/chosen", "rewards/rejected", "kl", "eval_rewards/margins")),
    Method("orpo", "ORPO", "pipelines.orpo", ORPOTrainConfig, reads="pairs", makes="policy",
           summary="LoRA on the policy trained on the pairs with no reference model (TRL's ORPOTrainer): the chosen "
                   "answer's language-model loss plus a term that raises its odds over the rejected one's",
           plotted=("rewards/margins", "rewards/accuracies", "log_odds_ratio", "nll_loss", "eval_rewards/margins"),
           plotted_first=("rewards/margins", "rewards/accuracies", "eval_rewards/margins"),
           shape=Shape(sequences=2)),
    Method("ppo", "PPO", "pipelines.ppo", PPOTrainConfig, reads="prompts", makes="policy",
           summary="the studio's own PPO: value head, per-token KL penalty to the base, GAE, clipped objective; "
                   "answers the prompts and learns from a trained reward model's scores",
           plotted=("reward", "kl", "ended", "entropy", "clip_fraction", "response_length", *WATCH_METRICS),
           plotted_first=("reward", "kl"), losses=("policy_loss", "value_loss"), shape=Shape(reward_model=True)),
    Method("grpo", "GRPO", "pipelines.grpo", OnlineTrainConfig, reads="prompts", makes="policy",
           summary="TRL's GRPO against a trained reward model: several answers per prompt, each judged against "
                   "its group's mean (no value model)",
           plotted=(*GROUP_METRICS, *WATCH_METRICS), plotted_first=("reward", "kl"),
           shape=Shape(reward_model=True)),
    Method("rloo", "RLOO", "pipelines.rloo", OnlineTrainConfig, reads="prompts", makes="policy",
           summary="TRL's RLOO against a trained reward model: each answer's baseline is the mean reward of the "
                   "others for its prompt",
           plotted=(*GROUP_METRICS, *WATCH_METRICS), plotted_first=("reward", "kl"),
           shape=Shape(reward_model=True)),
)}


def method_by_label(label: str) -> Method:
    return next(m for m in METHODS.values() if m.label == label)


def labels_of(wanted) -> str:
    """The labels of the methods a test picks, in words: "DPO, KTO" (every method list the CLI and
    the tabs say is made here, from the table)."""
    return ", ".join(m.label for m in METHODS.values() if wanted(m))


# The policies trained on pairs (or their verdicts), not online: those a reward model of the same pairs stands
# beside as their proxy.
PAIR_POLICIES = labels_of(lambda m: m.makes == "policy" and not m.online)
# The methods that answer prompts against a trained reward model: those a judge split's proxy is for.
ONLINE_METHODS = labels_of(lambda m: m.online)
