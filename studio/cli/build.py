"""The jobs that build a preference set: candidates (generate), their perplexity (score) and their
rewards (rewards)."""

from __future__ import annotations

import json

from pipelines.generate import GenerateConfig
from pipelines.perplexity import PerplexityConfig
from pipelines.reward_scoring import RewardScoringConfig
from studio import service
from studio.cli.common import command, config_arguments, follow_job, given_settings


def cmd_score(ctx, args) -> int:
    settings = given_settings(args, PerplexityConfig)
    run_id = service.start_perplexity(ctx.runner, args.dataset, **settings)
    return follow_job(ctx, args, run_id, f"perplexity of '{args.dataset}' under '{settings.get('model', 'default')}'")


def cmd_generate(ctx, args) -> int:
    run_id = service.start_generation(ctx.runner, args.dataset, **given_settings(args, GenerateConfig))
    config = json.loads(ctx.runner.get(run_id)["config"])
    return follow_job(ctx, args, run_id, "{n} samples per prompt of '{dataset}' from '{model}'".format(
        dataset=args.dataset, **config))


def cmd_rewards(ctx, args) -> int:
    run_id = service.start_reward_scoring(ctx.runner, args.dataset, args.reward_model,
                                          **given_settings(args, RewardScoringConfig))
    return follow_job(ctx, args, run_id, f"rewards of '{args.dataset}' by '{args.reward_model}'")


def add_commands(sub) -> None:
    for name, func, config, what in (
            ("score", cmd_score, PerplexityConfig, "perplexity of a dataset's responses under a model (a job)"),
            ("generate", cmd_generate, GenerateConfig, "sample N candidate responses per prompt (a job)")):
        p = command(sub, name, func, what, job=True)
        p.add_argument("--dataset", required=True)
        config_arguments(p, config)

    p = command(sub, "rewards", cmd_rewards, "score a dataset's responses with a reward model (a job)", job=True)
    p.add_argument("--reward-model", required=True, help="its name, e.g. rm-run3 (alignstudio models)")
    p.add_argument("--dataset", required=True)
    config_arguments(p, RewardScoringConfig)
