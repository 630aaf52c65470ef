"""Evaluate a policy against its base: both answer the same prompts, a reward model scores the
answers, and the report gives the policy's win rate over the base, the mean reward gain, the KL
from the base and the change in answer length.

    python -m pipelines.evaluate --config runs/<id>/config.json

Answers are sampled (temperature, seeded) so that the KL estimate is honest: it is the mean over
the policy's answers of sum_t log pi(y_t) - log pi_base(y_t), the base being the same model with
the adapter disabled. A tie in reward counts half a win. The reward gain comes with its standard
error over the prompts, so that a user can tell a gain from noise.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.models import choose_placement, load_tokenizer, resolve_model
from pipelines.reward_model import load_reward_model, read_meta, score
from pipelines.runlog import RunLog, run_main
from pipelines.settings import DEVICE_HELP, DTYPE_HELP, MODELS_DIR_HELP, setting


@dataclass
class EvaluateConfig:
    """Compare a policy's answers with its base's, scored by a reward model."""
    policy_adapter: str = setting("", "the policy's adapter folder", internal=True)
    reward_adapter: str = setting("", "the judging reward model's adapter folder", internal=True)
    models_dir: str = setting("models", MODELS_DIR_HELP, internal=True)
    inputs: str = setting("inputs.parquet", "the prompts, written by the runner", internal=True)
    output: str = setting("answers.parquet", "both models' answers and scores", internal=True)
    max_new_tokens: int = setting(64, "answer length limit in tokens")
    temperature: float = setting(0.7, "sampling temperature of both models' answers")
    batch_size: int = setting(8, "prompts answered at once")
    seed: int = setting(0, "sampling seed (the same for policy and base)")
    device: str = setting("auto", DEVICE_HELP)
    dtype: str = setting("auto", DTYPE_HELP)


def answer(model, tokenizer, prompts: list[list[dict]], config: EvaluateConfig, device: str):
    """Sampled answers (texts) and their token ids, one per prompt."""
    import torch

    texts, token_ids = [], []
    tokenizer.padding_side = "left"
    for start in range(0, len(prompts), config.batch_size):
        chunk = prompts[start:start + config.batch_size]
        rendered = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in chunk]
        batch = tokenizer(rendered, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        with torch.no_grad():
            out = model.generate(**batch, do_sample=True, temperature=config.temperature, top_k=0, top_p=1.0,
                                 max_new_tokens=config.max_new_tokens, pad_token_id=tokenizer.pad_token_id)
        for row in out[:, batch["input_ids"].shape[1]:].tolist():
            ids = row[:row.index(tokenizer.eos_token_id) + 1] if tokenizer.eos_token_id in row else row
            token_ids.append(ids)
            texts.append(tokenizer.decode(ids, skip_special_tokens=True))
    return texts, token_ids


def sequence_logprob(model, tokenizer, prompt: list[dict], ids: list[int], device: str) -> float:
    import torch

    head = tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
    input_ids = torch.tensor([head + ids], device=device)
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=input_ids).logits[0, len(head) - 1:-1].float(), -1)
    return float(logprobs.gather(-1, torch.tensor(ids, device=device)[:, None]).sum())


def run(config: EvaluateConfig, log: RunLog) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run_dir = log.path.parent
    placement = choose_placement(config.device, config.dtype)
    meta = read_meta(config.policy_adapter)
    base_path = resolve_model(meta["base"], config.models_dir)
    prompts = [json.loads(r["prompt"]) for r in pq.read_table(run_dir / config.inputs).to_pylist()]
    tokenizer = load_tokenizer(base_path)
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=getattr(torch, placement.dtype))
    policy = PeftModel.from_pretrained(base, config.policy_adapter).to(placement.device).eval()

    log.event("running", step=0, total=4, message=f"answering {len(prompts)} prompts with the policy")
    torch.manual_seed(config.seed)
    policy_texts, policy_ids = answer(policy, tokenizer, prompts, config, placement.device)
    log.progress(1, 4, message="answering with the base")
    torch.manual_seed(config.seed)
    with policy.disable_adapter():
        base_texts, base_ids = answer(policy, tokenizer, prompts, config, placement.device)
        base_logprobs = [sequence_logprob(policy, tokenizer, p, ids, placement.device)
                         for p, ids in zip(prompts, policy_ids)]
    log.progress(2, 4, message="KL from the base")
    policy_logprobs = [sequence_logprob(policy, tokenizer, p, ids, placement.device) for p, ids in zip(prompts, policy_ids)]
    del policy, base
    log.progress(3, 4, message="scoring with the reward model")
    reward_tokenizer, reward_model = load_reward_model(config.reward_adapter, placement)

    def rewards(texts):
        return score(reward_tokenizer, reward_model, [p + [{"role": "assistant", "content": t}]
                                                      for p, t in zip(prompts, texts)], config.batch_size)

    policy_rewards, base_rewards = rewards(policy_texts), rewards(base_texts)
    n = len(prompts)
    gains = [a - b for a, b in zip(policy_rewards, base_rewards)]
    wins = sum(1.0 if g > 0 else 0.5 if g == 0 else 0.0 for g in gains)
    metrics = {
        "win_rate": wins / n,
        "reward_policy": sum(policy_rewards) / n,
        "reward_base": sum(base_rewards) / n,
        "reward_gain": sum(gains) / n,
        # Paired: the same prompt answered by both, so prompt-to-prompt spread cancels out.
        "reward_gain_se": statistics.stdev(gains) / math.sqrt(n) if n > 1 else 0.0,
        "kl": sum(a - b for a, b in zip(policy_logprobs, base_logprobs)) / n,
        "length_policy": sum(map(len, policy_ids)) / n,
        "length_base": sum(map(len, base_ids)) / n,
    }
    metrics["length_change"] = metrics["length_policy"] - metrics["length_base"]
    pq.write_table(pa.Table.from_pylist([
        {"prompt": json.dumps(p), "policy": a, "base": b, "reward_policy": ra, "reward_base": rb}
        for p, a, b, ra, rb in zip(prompts, policy_texts, base_texts, policy_rewards, base_rewards)]),
        run_dir / config.output)
    log.event("succeeded", step=4, total=4, metrics=metrics,
              message=(f"policy wins {metrics['win_rate']:.0%} of {n} prompts against its base; reward "
                       f"{metrics['reward_gain']:+.3f} ± {metrics['reward_gain_se']:.3f}, KL {metrics['kl']:.2f}, "
                       f"length {metrics['length_change']:+.1f} tokens"))


if __name__ == "__main__":
    raise SystemExit(run_main(EvaluateConfig, run))
