"""GRPO against a reward model, with TRL's GRPOTrainer: for each prompt a group of answers is
sampled, each answer's advantage is its reward against the group's mean (no value model), and a
KL penalty (`beta`) keeps the policy near the base. LoRA on the policy; the reward model's LoRA is
merged into its base before TRL gets it (kept apart on a 4-bit base). `train_online` serves RLOO
too (`pipelines.rloo`). Every few steps the over-optimisation watch (`pipelines.watch`) checks
proxy, judge and KL on prompts held out of training.

    python -m pipelines.grpo --config runs/<id>/config.json
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow.parquet as pq

from pipelines.reward_model import RewardEnsemble, load_reward_model, score
from pipelines.runlog import RunLog, run_main
from pipelines.settings import not_used, redefault, setting
from pipelines.training import (
    TrainSettings,
    base_and_tokenizer,
    lora_config,
    model_kwargs,
    placement_of,
    progress_callback,
    train_and_save,
    trainer_arguments,
)
from pipelines.watch import Watch, WatchSettings, check_every, hold_out_watch_prompts


@dataclass
class OnlineTrainConfig(WatchSettings, TrainSettings):
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
    prompts = [json.loads(r["prompt"]) for r in pq.read_table(run_dir / config.inputs).to_pylist()]
    if not prompts:
        raise ValueError("no prompts to train on")
    prompts, watch_prompts = hold_out_watch_prompts(prompts, config, config.seed)
    reward_tokenizer, reward_model = load_reward_model(config.reward_adapter, placement, config.load_in_4bit)
    ensemble = isinstance(reward_model, RewardEnsemble)
    if not config.load_in_4bit and not ensemble:  # merging into 4-bit weights would round the adapter away
        reward_model = reward_model.merge_and_unload()
    base_path, tokenizer = base_and_tokenizer(config)
    model = AutoModelForCausalLM.from_pretrained(base_path, **model_kwargs(config, placement))
    args = config_cls(**trainer_arguments(config, placement, run_dir, has_eval=False),
                      num_generations=config.num_generations, num_iterations=config.num_iterations,
                      max_completion_length=config.max_new_tokens,
                      temperature=config.temperature, beta=config.beta)
    callback = progress_callback(log)
    callbacks = [callback]
    watch = None
    if watch_prompts:
        def rewards_by(tokenizer_, model_):
            return lambda ps, answers: score(tokenizer_, model_, [p + [{"role": "assistant", "content": a}]
                                                                   for p, a in zip(ps, answers)])

        judge_fn = (rewards_by(*load_reward_model(config.judge_adapter, placement, config.load_in_4bit))
                    if config.judge_adapter else None)
        watch = Watch(watch_prompts, tokenizer, rewards_by(reward_tokenizer, reward_model), run_dir, log,
                      config.max_new_tokens, judge_fn=judge_fn, rule=config.judge_rule, seed=config.seed)
        callbacks.append(watch_callback(watch, check_every(config, config.max_steps)))
        log.event("running", message=f"{len(watch_prompts)} prompts held out for the over-optimisation watch, checked "
                                     f"every {check_every(config, config.max_steps)} steps")
    if ensemble:  # TRL takes a function for what is not one model: the ensemble's conservative score
        def ensemble_reward(prompts, completions, **_):
            return score(reward_tokenizer, reward_model,
                         [p + (c if isinstance(c, list) else [{"role": "assistant", "content": c}])
                          for p, c in zip(prompts, completions)])

        reward_funcs, reward_classes = ensemble_reward, None
    else:
        reward_funcs, reward_classes = reward_model, reward_tokenizer
    trainer = trainer_cls(model=model, reward_funcs=reward_funcs, args=args,
                          train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
                          processing_class=tokenizer, reward_processing_classes=reward_classes, callbacks=callbacks,
                          peft_config=lora_config(config, "CAUSAL_LM"))
    if train_and_save(trainer, callback, config, log, "policy", method) is None:
        return
    steps = trainer.state.global_step
    kept = watch.keep_best(run_dir / config.output, steps) if watch else ""
    log.event("succeeded", step=steps, message=f"{method.upper()} trained ({steps} steps){kept}")


def watch_callback(watch: Watch, every: int):
    """A TrainerCallback that runs the watch every `every` steps and at the last one."""
    from transformers import TrainerCallback

    class RunTheWatch(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % every == 0 or state.global_step == state.max_steps:
                watch.check(model, state.global_step, args.device)  # this rank's device

    return RunTheWatch()


def run(config: OnlineTrainConfig, log: RunLog) -> None:
    from trl import GRPOConfig, GRPOTrainer

    train_online(config, log, "grpo", GRPOTrainer, GRPOConfig)


if __name__ == "__main__":
    raise SystemExit(run_main(OnlineTrainConfig, run))
