"""PPO against a reward model: the classic RLHF recipe, written out here because TRL 1.16 no
longer ships PPO.

    python -m pipelines.ppo --config runs/<id>/config.json

Each iteration: sample answers for a batch of prompts from the LoRA policy; score them with the
reward (the trained RM's score, whitened over the batch, minus a penalty when an answer never
ends); per token, the reward is -kl_coef * (log pi - log pi_ref), the reference being the same
model with its adapter disabled, plus that score on the answer's last token; advantages by GAE
from a value head on the policy's last hidden state; then a few epochs of the clipped surrogate
objective and the clipped value loss. Logged: reward, KL, response length, entropy, value loss, clip fraction.
Every few steps the over-optimisation watch (`pipelines.watch`) checks proxy, judge and KL on
prompts held out of training.

Under `accelerate launch` (N processes) each rank samples and scores its share of each batch's
prompts; the rewards and advantages are whitened over the whole batch, and every optimizer step
averages the ranks' gradients, so that a step sees as many prompts and sequences as one process
with the same settings. The main rank writes the log, the watch and the checkpoints.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from pipelines.models import Placement, end_ids, load_tokenizer, rank_device, resolve_model
from pipelines.reward_model import load_reward_model, score, write_meta
from pipelines.runlog import RunLog, run_main
from pipelines.settings import not_used, redefault, setting
from pipelines.training import (
    CHECKPOINTS,
    TrainSettings,
    cancel_agreed,
    lora_config,
    model_kwargs,
    placement_of,
    trainable_in_fp32,
)
from pipelines.watch import Watch, WatchSettings, check_every, hold_out_watch_prompts

RewardFn = Callable[[list[list[dict]], list[str]], list[float]]  # (prompts, answers) -> scores


@dataclass
class PPOTrainConfig(WatchSettings, TrainSettings):
    """Fine-tune a policy with PPO against a trained reward model."""
    reward_adapter: str = setting("", "the reward model's adapter folder", internal=True)
    learning_rate: float = redefault(TrainSettings, "learning_rate", 1e-4,
                                     "for LoRA on the default model: 1e-5 barely moved it in 30 iterations")
    max_steps: int = setting(20, "PPO iterations (one rollout batch each)", label="Max steps")
    batch_size: int = setting(8, "prompts per rollout, over all processes", label="Batch size")
    ppo_epochs: int = setting(2, "optimisation passes over each rollout batch", label="PPO epochs")
    mini_batch_size: int = setting(4, "sequences per optimizer step, over all processes", label="Mini-batch size")
    max_new_tokens: int = setting(64, "answer length limit in tokens", label="Max answer tokens")
    temperature: float = setting(1.0, "sampling temperature of the answers", label="Temperature")
    kl_coef: float = setting(0.15, "weight of the per-token KL penalty to the base (0.05 let the default model "
                             "game a length-biased reward model: KL 9 nats per answer)", label="KL weight")
    gamma: float = setting(1.0, "discount of GAE", advanced=True)
    lam: float = setting(0.95, "lambda of GAE", advanced=True)
    clip_range: float = setting(0.2, "clip of the policy's probability ratio", advanced=True)
    clip_range_value: float = setting(0.2, "clip of the value head's update", advanced=True)
    vf_coef: float = setting(0.1, "weight of the value loss", advanced=True)
    max_grad_norm: float = setting(1.0, "gradient norm clip", advanced=True)
    missing_eos_penalty: float = setting(1.0, "subtracted from the (whitened) score of an answer that never ends, "
                                         "in standard deviations of the batch's rewards", advanced=True)
    whiten_rewards: bool = setting(True, "whiten the reward model's scores over each batch", advanced=True)
    save_every: int = redefault(TrainSettings, "save_every", 10)
    max_length: int = setting(512, "tokens of prompt + answer the reward model reads", label="Max tokens")
    shard: str = not_used(TrainSettings, "shard", "not for PPO: its own loop samples with generate, which a sharded "
                          "policy cannot do without gathering it; every process holds the whole base")
    grad_accum: int = not_used(TrainSettings, "grad_accum", "not used: each mini-batch is one optimizer step")
    epochs: float = not_used(TrainSettings, "epochs", "not used: max_steps counts PPO iterations")
    lora_dropout: float = redefault(TrainSettings, "lora_dropout", 0.0,
                                    "none for PPO: old and new log-probs must come from the same function")

    def __post_init__(self):
        super().__post_init__()
        for name in ("batch_size", "mini_batch_size"):
            value = getattr(self, name)
            if self.num_processes > 1 and value % self.num_processes:
                raise ValueError(f"{name} ({value}) must be a multiple of num_processes ({self.num_processes}): "
                                 "each process takes an equal share")


def masked_mean(x, mask):
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x, mask, total=lambda t: t):
    """Whitened over the masked entries; `total` sums a tensor over the ranks (whole-batch statistics)."""
    count = total(mask.sum()).clamp(min=1)
    mean = total((x * mask).sum()) / count
    var = total((((x - mean) ** 2) * mask).sum()) / count
    return (x - mean) * (var + 1e-8).rsqrt()


class Ranks:
    """This process's place among `accelerate launch`'s ranks (alone without it), and the few
    collectives PPO needs. Gradients are averaged by hand, one flat all-reduce per optimizer step,
    rather than through DistributedDataParallel: its wrapper would stand between PPO and the PEFT
    model's generate and disable_adapter, and its buffer broadcasts would need every rank to run
    the same number of forwards (the main rank alone runs the watch's)."""

    def __init__(self, cpu: bool):
        from accelerate import PartialState

        self.state = PartialState(cpu=cpu)
        self.index, self.count = self.state.process_index, self.state.num_processes
        self.is_main = self.state.is_main_process

    def total(self, tensor):
        from accelerate.utils import reduce

        return reduce(tensor, reduction="sum")

    def mean(self, tensor):
        from accelerate.utils import reduce

        return reduce(tensor, reduction="mean")

    def gather(self, tensor):
        from accelerate.utils import gather

        return gather(tensor) if self.count > 1 else tensor

    def average_gradients(self, parameters) -> None:
        import torch

        if self.count == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        flat = self.mean(torch.cat([g.reshape(-1) for g in grads]))
        offset = 0
        for p, g in zip(parameters, grads):
            p.grad = flat[offset:offset + g.numel()].view_as(g)
            offset += g.numel()

    def barrier(self) -> None:
        self.state.wait_for_everyone()

    def check_policies_agree(self, parameters) -> None:
        """Every rank must hold the same policy (same start, same averaged steps); a cheap checksum
        of the trainable weights, compared before the main rank saves its copy."""
        import torch

        if self.count == 1:
            return
        checksum = torch.stack([torch.cat([p.detach().float().reshape(-1) for p in parameters]).sum(),
                                torch.cat([p.detach().float().reshape(-1).abs() for p in parameters]).sum()])
        every = self.gather(checksum[None])
        if not torch.allclose(every, every[:1].expand_as(every), rtol=1e-5, atol=1e-6):
            raise RuntimeError(f"the {self.count} processes ended with different policies: {every.tolist()}")


def gae(rewards, values, mask, gamma: float, lam: float):
    """Advantages and returns by generalised advantage estimation over the answer tokens."""
    import torch

    values, rewards = values * mask, rewards * mask  # nothing after an answer's end
    advantages = torch.zeros_like(rewards)
    last = torch.zeros(rewards.shape[0], device=rewards.device)
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(last)
        last = rewards[:, t] + gamma * next_value - values[:, t] + gamma * lam * last
        advantages[:, t] = last
    advantages = advantages * mask
    return advantages, advantages + values


class PolicyWithValue:
    """The LoRA policy and a value head (one linear layer) reading its last hidden state."""

    def __init__(self, model, hidden_size: int, device: str):
        import torch

        self.model = model
        self.value_head = torch.nn.Linear(hidden_size, 1).to(device)
        torch.nn.init.zeros_(self.value_head.weight)
        torch.nn.init.zeros_(self.value_head.bias)

    def parameters(self):
        return [p for p in self.model.parameters() if p.requires_grad] + list(self.value_head.parameters())

    def forward(self, input_ids, attention_mask, start: int, with_value: bool = True, with_entropy: bool = False):
        """Log-probs of tokens start.. given the ones before, and (optionally) values and entropies.

        Logits are computed for the answer positions only (a prompt's full-vocabulary logits would be
        most of the memory: ~10 GB at 16 x 256 tokens with a 152k vocabulary); entropies are only
        logged, so they are computed without a graph."""
        import torch

        # Positions count real tokens only, as in generation (prompts are left-padded).
        position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
        answer_width = input_ids.shape[1] - start
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         output_hidden_states=with_value, use_cache=False, logits_to_keep=answer_width + 1)
        logprobs_all = torch.log_softmax(out.logits[:, :-1].float(), dim=-1)
        logprobs = logprobs_all.gather(-1, input_ids[:, start:, None]).squeeze(-1)
        entropy = None
        if with_entropy:
            with torch.no_grad():
                entropy = -(logprobs_all.exp() * logprobs_all).sum(-1)
        values = self.value_head(out.hidden_states[-1][:, start - 1:-1].float()).squeeze(-1) if with_value else None
        return logprobs, entropy, values

    def score_rollout(self, input_ids, attention_mask, start: int, mini_batch_size: int):
        """Old-policy log-probs and values, and the reference's log-probs (the adapter disabled), in
        mini-batches, without a graph."""
        import torch

        old, values, ref = [], [], []
        with torch.no_grad():
            for i in range(0, len(input_ids), mini_batch_size):
                ids, mask = input_ids[i:i + mini_batch_size], attention_mask[i:i + mini_batch_size]
                logprobs, _, value = self.forward(ids, mask, start)
                old.append(logprobs)
                values.append(value)
                with self.model.disable_adapter():
                    ref.append(self.forward(ids, mask, start, with_value=False)[0])
        return torch.cat(old), torch.cat(values), torch.cat(ref)


def rollout(policy: PolicyWithValue, tokenizer, prompts: list[list[dict]], config: PPOTrainConfig, device: str):
    """Sample one answer per prompt; returns the token tensors, the answer mask and texts."""
    import torch

    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    batch = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left",
                              add_special_tokens=False).to(device)
    with torch.no_grad():
        generated = policy.model.generate(**batch, do_sample=True, temperature=config.temperature, top_k=0, top_p=1.0,
                                          max_new_tokens=config.max_new_tokens, pad_token_id=tokenizer.pad_token_id)
    start = batch["input_ids"].shape[1]
    answers = generated[:, start:]
    is_eos = torch.isin(answers, torch.tensor(end_ids(policy.model, tokenizer), device=answers.device))
    ended = is_eos.any(dim=1)
    # Keep each answer up to and including its first end-of-turn token.
    first_eos = torch.where(
        ended, is_eos.int().argmax(dim=1), torch.full_like(ended, answers.shape[1] - 1, dtype=torch.long)
    )
    positions = torch.arange(answers.shape[1], device=device)[None, :]
    answer_mask = (positions <= first_eos[:, None]).float()
    attention = torch.cat([batch["attention_mask"], answer_mask.long()], dim=1)
    answer_texts = [tokenizer.decode(a[m.bool()], skip_special_tokens=True) for a, m in zip(answers, answer_mask)]
    return generated, attention, start, answer_mask, ended, answer_texts


def ppo_step(policy: PolicyWithValue, optimizer, tokenizer, prompts: list[list[dict]], reward_fn: RewardFn,
             config: PPOTrainConfig, device: str, scaler=None, ranks: Ranks | None = None) -> dict:
    """One PPO iteration on this rank's share of a batch of prompts; returns the whole batch's
    metrics. `scaler` scales the loss of an fp16 base (a torch.amp.GradScaler; none in bf16 or
    float32)."""
    import torch

    ranks = ranks or Ranks(cpu=device == "cpu")
    policy.model.eval()  # sampling and scoring; the model has no dropout (see no_dropout)
    generated, attention, start, mask, ended, texts = rollout(policy, tokenizer, prompts, config, device)
    old_logprobs, old_values, ref_logprobs = policy.score_rollout(generated, attention, start, config.mini_batch_size)
    scores = torch.tensor(reward_fn(prompts, texts), dtype=torch.float32, device=device)
    every_score = ranks.gather(scores)  # the whole batch's, for its statistics
    if config.whiten_rewards and len(every_score) > 1:
        scores = (scores - every_score.mean()) / (every_score.std() + 1e-8)
    # After whitening, so that the penalty weighs the same against a weak RM (scores spread ~0.1)
    # as against a strong one: otherwise it drowns the RM's signal and PPO only learns to stop.
    scores = scores - config.missing_eos_penalty * (~ended).float()
    kl = (old_logprobs - ref_logprobs) * mask
    rewards = -config.kl_coef * kl
    last = (mask.sum(dim=1) - 1).long()
    rewards[torch.arange(len(scores)), last] += scores
    old_values = old_values * mask
    advantages, returns = gae(rewards, old_values, mask, config.gamma, config.lam)
    advantages = masked_whiten(advantages, mask, ranks.total)

    stats = {"policy_loss": [], "value_loss": [], "clip_fraction": [], "entropy": []}
    n = len(prompts)
    mini_batch = max(1, config.mini_batch_size // ranks.count)  # this rank's share of each optimizer step
    parameters = policy.parameters()
    # Training mode only for gradient checkpointing's sake (transformers skips it in eval mode).
    policy.model.train(config.gradient_checkpointing)
    for _ in range(config.ppo_epochs):
        order = torch.randperm(n)
        for i in range(0, n, mini_batch):
            idx = order[i:i + mini_batch]
            m = mask[idx]
            logprobs, entropy, values = policy.forward(generated[idx], attention[idx], start, with_entropy=True)
            ratio = torch.exp(logprobs - old_logprobs[idx])
            adv = advantages[idx]
            pg_losses = torch.max(-adv * ratio, -adv * ratio.clamp(1 - config.clip_range, 1 + config.clip_range))
            policy_loss = masked_mean(pg_losses, m)
            clipped_values = old_values[idx] + (values - old_values[idx]).clamp(-config.clip_range_value,
                                                                                config.clip_range_value)
            value_loss = 0.5 * masked_mean(torch.max((values - returns[idx]) ** 2,
                                                     (clipped_values - returns[idx]) ** 2), m)
            loss = policy_loss + config.vf_coef * value_loss
            optimizer.zero_grad()
            if scaler is not None:
                scaler.scale(loss).backward()
                ranks.average_gradients(parameters)  # scaled alike on every rank: one overflow decision
                scaler.unscale_(optimizer)
            else:
                loss.backward()
                ranks.average_gradients(parameters)
            torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
            if scaler is not None:
                scaler.step(optimizer)  # skipped when fp16 overflowed; the scale then shrinks
                scaler.update()
            else:
                optimizer.step()
            stats["policy_loss"].append(policy_loss.item())
            stats["value_loss"].append(value_loss.item())
            stats["clip_fraction"].append(masked_mean(((ratio - 1).abs() > config.clip_range).float(), m).item())
            stats["entropy"].append(masked_mean(entropy, m).item())
    policy.model.eval()
    local = {name: sum(v) / len(v) for name, v in stats.items()}
    local.update(kl=kl.sum(dim=1).mean().item(), response_length=mask.sum(dim=1).mean().item(),
                 ended=ended.float().mean().item())
    # Every rank holds an equal share, so the mean of the ranks' means is the batch's mean.
    means = ranks.mean(torch.tensor(list(local.values()), dtype=torch.float64, device=device)).tolist()
    return {**dict(zip(local, means)), "reward": every_score.mean().item(), "prompts": len(every_score)}


def reward_model_fn(adapter: str, placement: Placement, max_length: int, load_in_4bit: bool = False) -> RewardFn:
    """The trained RM as a reward function of (prompt, answer text)."""
    tokenizer, model = load_reward_model(adapter, placement, load_in_4bit)

    def reward(prompts, answers):
        conversations = [p + [{"role": "assistant", "content": a}] for p, a in zip(prompts, answers)]
        return score(tokenizer, model, conversations, max_length=max_length)

    return reward


def save_checkpoint(folder: Path, policy: PolicyWithValue, optimizer, step: int, batches: random.Random,
                    ranks: Ranks, scaler=None) -> None:
    """Adapter, value head, optimizer and every random state (the batches' chooser, and each rank's
    torch states: CPU and CUDA), so that a resumed run samples what the uninterrupted one would
    have. Every rank calls it: the main one writes the shared state, each its own random states."""
    import torch

    partial = folder.with_name(folder.name + ".partial")
    if ranks.is_main:
        policy.model.save_pretrained(partial)
        torch.save({"value_head": policy.value_head.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                    "random": batches.getstate(), "processes": ranks.count,
                    "scaler": scaler.state_dict() if scaler is not None else None}, partial / "ppo_state.pt")
    ranks.barrier()  # the folder exists
    torch.save({"rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
               partial / f"rng-{ranks.index}.pt")
    ranks.barrier()  # every rank's file is in
    if ranks.is_main:
        partial.rename(folder)
    ranks.barrier()


def load_checkpoint(folder: Path, policy: PolicyWithValue, optimizer, batches: random.Random, ranks: Ranks,
                    scaler=None) -> int:
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    device = str(policy.value_head.weight.device)
    set_peft_model_state_dict(policy.model, load_file(folder / "adapter_model.safetensors", device=device))
    state = torch.load(folder / "ppo_state.pt", weights_only=False, map_location="cpu")
    policy.value_head.load_state_dict(state["value_head"])
    optimizer.load_state_dict(state["optimizer"])  # moves its state onto the parameters' device
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    batches.setstate(state["random"])
    own = folder / f"rng-{ranks.index}.pt"
    # A checkpoint of an earlier version kept one process's torch states in ppo_state.pt; a rank
    # the checkpoint had no file for (more processes than before) keeps its fresh seed.
    rng = torch.load(own, weights_only=False) if own.is_file() else state if "rng" in state else None
    if rng is not None:
        torch.set_rng_state(rng["rng"])
        if rng.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda_rng"])
    return state["step"]


def no_dropout(model) -> None:
    """Every dropout off, so that training mode (needed by gradient checkpointing) computes the
    same function as the rollout: PPO's ratio compares old and new log-probs of one function."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def train(config: PPOTrainConfig, log: RunLog, reward_fn: RewardFn | None = None,
          judge_fn: RewardFn | None = None) -> None:
    """The PPO loop; `reward_fn` defaults to the trained reward model of the config, `judge_fn`
    (the watch's judge) to its judge reward model, if any."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    run_dir = log.path.parent
    placement = placement_of(config)
    ranks = Ranks(cpu=placement.device == "cpu")
    device = rank_device(placement.device)
    torch.manual_seed(config.seed)  # the same LoRA start on every rank
    batches = random.Random(config.seed)  # the same batches on every rank; each takes its share
    base_path = resolve_model(config.base, config.models_dir)
    prompts = [json.loads(r["prompt"]) for r in pq.read_table(run_dir / config.inputs).to_pylist()]
    if not prompts:
        raise ValueError("no prompts to train on")
    prompts, watch_prompts = hold_out_watch_prompts(prompts, config, config.seed)
    batch_size = min(config.batch_size, len(prompts)) // ranks.count * ranks.count
    if not batch_size:
        raise ValueError(f"{len(prompts)} prompts to train on cannot be shared by {ranks.count} processes")
    if reward_fn is None:
        reward_fn = reward_model_fn(config.reward_adapter, placement, config.max_length, config.load_in_4bit)
    if judge_fn is None and config.judge_adapter and ranks.is_main:  # the watch runs on the main rank
        judge_fn = reward_model_fn(config.judge_adapter, placement, config.max_length, config.load_in_4bit)
    tokenizer = load_tokenizer(base_path)
    model = AutoModelForCausalLM.from_pretrained(base_path, **model_kwargs(config, placement))
    model = get_peft_model(model, lora_config(config, "CAUSAL_LM")).to(device)
    trainable_in_fp32(model, config)
    no_dropout(model)
    if config.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    policy = PolicyWithValue(model, model.config.hidden_size, device)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=config.learning_rate)
    if ranks.count > 1:
        torch.manual_seed(config.seed + ranks.index)  # each rank samples its own answers
    # fp16 needs loss scaling (its small gradients underflow); bf16 and float32 do not.
    scaler = torch.amp.GradScaler("cuda") if placement.dtype == "float16" else None
    watch = Watch(watch_prompts, tokenizer, reward_fn, run_dir, log, config.max_new_tokens, judge_fn=judge_fn,
                  rule=config.judge_rule, seed=config.seed) if watch_prompts and ranks.is_main else None
    every = check_every(config, config.max_steps)
    if watch:
        log.event("running", message=f"{len(watch_prompts)} prompts held out for the over-optimisation watch, "
                                     f"checked every {every} steps")

    checkpoints = sorted((run_dir / CHECKPOINTS).glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    step = load_checkpoint(checkpoints[-1], policy, optimizer, batches, ranks, scaler) if checkpoints else 0
    if step:
        log.event("running", step=step, total=config.max_steps, message=f"resuming from step-{step}")
    order = list(range(len(prompts)))
    while step < config.max_steps:
        if cancel_agreed(log.cancel_requested, device):
            save_checkpoint(run_dir / CHECKPOINTS / f"step-{step}", policy, optimizer, step, batches, ranks, scaler)
            log.event(
                "cancelled", step=step, total=config.max_steps, message=f"cancelled at step {step}; checkpoint saved"
            )
            return
        batch = [prompts[i] for i in batches.sample(order, batch_size)]
        share = batch[ranks.index::ranks.count]
        metrics = ppo_step(policy, optimizer, tokenizer, share, reward_fn, config, device, scaler, ranks)
        step += 1
        log.progress(step, config.max_steps, metrics=metrics)
        if watch and (step % every == 0 or step == config.max_steps):
            watch.check(policy.model, step, device)
        if step % config.save_every == 0 and step < config.max_steps:
            save_checkpoint(run_dir / CHECKPOINTS / f"step-{step}", policy, optimizer, step, batches, ranks, scaler)

    ranks.check_policies_agree(policy.parameters())
    if ranks.is_main:
        out = run_dir / config.output
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        write_meta(out, "policy", config.base, base_path, "ppo")
        kept = watch.keep_best(out, step) if watch else ""
        log.event("succeeded", step=step, total=config.max_steps, message=f"PPO trained ({step} iterations){kept}")
    ranks.barrier()  # the other ranks end when the policy is saved


if __name__ == "__main__":
    raise SystemExit(run_main(PPOTrainConfig, train))
