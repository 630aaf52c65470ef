"""Evaluate a policy against its base: both answer the same prompts, and each judge given says
which answer is better (`pipelines.judges`): the proxy (the reward model the policy optimised,
labelled as such), a judge reward model trained on other prompts, and/or a named rule. The report
gives, per judge, the policy's win rate with its 95% interval (and for reward models the mean
reward gain with its standard error), plus the KL from the base and the change in answer length.

    python -m pipelines.evaluate --config runs/<id>/config.json

Answers are sampled (temperature, seeded). The KL from the base is the mean over the policy's
answers of the KL between the policy's and the base's next-token distributions, summed over each
answer's positions (`answer_kl`), the base being the same model with the adapter disabled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from common.errors import StudioError
from common.stats import length_controlled
from pipelines.judges import OUTCOME, RULES, by_reward, by_rule, describe, flat_metrics, rule_answers
from pipelines.llm_judge import DEFAULT_GUIDELINE, LlamaJudge, check_guideline, judge_summary
from pipelines.models import (
    adapter_tokenizer_source,
    attach_adapter,
    choose_placement,
    end_ids,
    first_end,
    load_kwargs,
    load_tokenizer,
    resolve_model,
)
from pipelines.reward_model import load_reward_model, read_meta, score
from pipelines.runlog import RunLog, run_main
from pipelines.settings import DEVICE_HELP, DTYPE_HELP, MODELS_DIR_HELP, setting


@dataclass
class EvaluateConfig:
    """Compare a policy's answers with its base's, by one or more judges."""
    policy_adapter: str = setting("", "the policy's adapter folder", internal=True)
    proxy_adapter: str = setting("", "the reward model the policy was trained against (its proxy), if any",
                                 internal=True)
    judge_adapter: str = setting("", "a reward model trained on prompts disjoint from the policy's and the "
                                 "proxy's (checked by the studio)", internal=True)
    judge_name: str = setting("", "the judge reward model's name, for the report", internal=True)
    proxy_name: str = setting("", "the proxy's name, for the report", internal=True)
    proxy_of_pairs: bool = setting(False, "the proxy was trained on the policy's own pairs (the policy learnt "
                                   "from pairs), not optimised by it", internal=True)
    seen_in_training: int = setting(0, "how many of the prompts the policy trained on (the report says so)",
                                    internal=True)
    rule: str = setting("", "judge by a named rule over the two answers as well", choices=["", *RULES])
    llm_judge: str = setting("", "a GGUF chat model that judges the two answers too, asked in both orders "
                             "(pipelines.llm_judge)")
    judge_guideline: str = setting("", "the LLM judge's prompt, with {prompt}, {answer_a} and {answer_b}; empty: "
                                   "the studio's")
    models_dir: str = setting("models", MODELS_DIR_HELP, internal=True)
    inputs: str = setting("inputs.parquet", "the prompts, written by the runner", internal=True)
    output: str = setting("answers.parquet", "both models' answers and scores", internal=True)
    max_new_tokens: int = setting(64, "answer length limit in tokens")
    temperature: float = setting(0.7, "sampling temperature of both models' answers")
    batch_size: int = setting(8, "prompts answered at once")
    seed: int = setting(0, "sampling seed (the same for policy and base)")
    device: str = setting("auto", DEVICE_HELP)
    dtype: str = setting("auto", DTYPE_HELP)


def answer(model, tokenizer, prompts: list[list[dict]], device: str, max_new_tokens: int, temperature: float,
           batch_size: int):
    """Sampled answers (texts) and their token ids, one per prompt; an answer that ended on its own
    ends with the end-of-sequence id, one cut at max_new_tokens does not."""
    import torch

    texts, token_ids = [], []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        rendered = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in chunk]
        batch = tokenizer(rendered, return_tensors="pt", padding=True, padding_side="left",
                              add_special_tokens=False).to(device)
        with torch.no_grad():
            out = model.generate(**batch, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                                 max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
        ends = end_ids(model, tokenizer)
        for row in out[:, batch["input_ids"].shape[1]:].tolist():
            end = first_end(row, ends)
            ids = row[:end + 1] if end is not None else row
            token_ids.append(ids)
            texts.append(tokenizer.decode(ids, skip_special_tokens=True))
    return texts, token_ids


def answer_kl(model, tokenizer, prompt: list[dict], ids: list[int], device: str) -> float:
    """KL from the base along one of the policy's answers: at every answer position, the KL between
    the policy's and the base's whole next-token distributions (the base: `model`, a PeftModel, with
    its adapter disabled), summed over the answer. Never negative, unlike log pi - log pi_base of the
    sampled tokens, which estimates the KL only for answers sampled at temperature 1 (at 0.7 it
    came out at -1.59 nats)."""
    import torch

    head = tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True, return_dict=True)[
        "input_ids"
    ]
    input_ids = torch.tensor([head + ids], device=device)

    def answer_logprobs():
        # Logits of the answer's positions only (a long prompt's would be most of the memory).
        logits = model(input_ids=input_ids, logits_to_keep=len(ids) + 1).logits[0, :-1]
        return torch.log_softmax(logits.float(), -1)

    with torch.no_grad():
        policy = answer_logprobs()
        with model.disable_adapter():
            base = answer_logprobs()
    return float((policy.exp() * (policy - base)).sum())


def run(config: EvaluateConfig, log: RunLog) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    run_dir = log.path.parent
    if not (config.proxy_adapter or config.judge_adapter or config.rule or config.llm_judge):
        raise StudioError("nothing to judge by: give a judge reward model, an LLM judge, the proxy or a rule")
    if config.judge_guideline:
        check_guideline(config.judge_guideline)
    if config.rule and config.rule not in RULES:
        raise StudioError(f"unknown rule {config.rule!r}; one of {', '.join(RULES)}")
    placement = choose_placement(config.device, config.dtype)
    meta = read_meta(config.policy_adapter)
    base_path = resolve_model(meta["base"], config.models_dir)
    prompts = [json.loads(r["prompt"]) for r in pq.read_table(run_dir / config.inputs).to_pylist()]
    tokenizer = load_tokenizer(adapter_tokenizer_source(config.policy_adapter, base_path))
    base = AutoModelForCausalLM.from_pretrained(base_path, **load_kwargs(placement))  # straight onto the device
    policy = attach_adapter(base, config.policy_adapter).to(placement.device).eval()

    log.event("running", step=0, total=4, message=f"answering {len(prompts)} prompts with the policy")
    sampling = dict(max_new_tokens=config.max_new_tokens, temperature=config.temperature, batch_size=config.batch_size)
    torch.manual_seed(config.seed)
    policy_texts, policy_ids = answer(policy, tokenizer, prompts, placement.device, **sampling)
    log.progress(1, 4, message="answering with the base")
    torch.manual_seed(config.seed)
    with policy.disable_adapter():
        base_texts, base_ids = answer(policy, tokenizer, prompts, placement.device, **sampling)
    log.progress(2, 4, message="KL from the base")
    kls = [answer_kl(policy, tokenizer, p, ids, placement.device) for p, ids in zip(prompts, policy_ids)]
    ends = end_ids(policy, tokenizer)
    del policy, base
    n = len(prompts)
    policy_lengths, base_lengths = [len(ids) for ids in policy_ids], [len(ids) for ids in base_ids]
    judged = []  # (role, who: a key of judges.ROLES, name, verdict)
    if config.rule:
        judged.append(("rule", "rule", config.rule, by_rule(
            config.rule, rule_answers(policy_texts, policy_ids, ends), rule_answers(base_texts, base_ids, ends))))
    scored = {}
    for role, adapter, name in (("proxy", config.proxy_adapter, config.proxy_name),
                                ("judge", config.judge_adapter, config.judge_name)):
        if not adapter:
            continue
        log.progress(3, 4, message=f"scoring with the {role} reward model")
        reward_tokenizer, reward_model = load_reward_model(adapter, placement)
        scored[role] = tuple(score(reward_tokenizer, reward_model, [p + [{"role": "assistant", "content": t}]
                                                                    for p, t in zip(prompts, texts)], config.batch_size)
                             for texts in (policy_texts, base_texts))
        who = "proxy of the pairs" if role == "proxy" and config.proxy_of_pairs else role
        judged.append((role, who, name, by_reward(*scored[role], policy_lengths, base_lengths)))
    if config.llm_judge:
        log.progress(3, 4, message=f"asking the LLM judge {Path(config.llm_judge).name} (each prompt in both orders)")
        judge = LlamaJudge(config.llm_judge, config.judge_guideline or DEFAULT_GUIDELINE)
        try:
            results = [judge.compare(p, a, b) for p, a, b in zip(prompts, policy_texts, base_texts)]
        finally:
            judge.close()
        summary = judge_summary(results)
        summary["outcomes"] = [OUTCOME[r["verdict"]] if r["verdict"] else None for r in results]
        judged.append(("llm", "llm", judge.name, summary))
    length_differences = [p - b for p, b in zip(policy_lengths, base_lengths)]
    for _, _, _, verdict in judged:  # every win rate also at no length difference
        pairs = [(o, d) for o, d in zip(verdict.pop("outcomes", []), length_differences) if o is not None]
        verdict.update(length_controlled([o for o, _ in pairs], [d for _, d in pairs]))
    metrics = {"prompts": n, "kl": sum(kls) / n,
               "length_policy": sum(policy_lengths) / n, "length_base": sum(base_lengths) / n}
    metrics["length_change"] = metrics["length_policy"] - metrics["length_base"]
    for role, _, _, verdict in judged:
        metrics.update(flat_metrics(role, verdict))
    columns = {"prompt": [json.dumps(p) for p in prompts], "policy": policy_texts, "base": base_texts}
    for role, (policy_rewards, base_rewards) in scored.items():
        columns[f"{role}_policy"], columns[f"{role}_base"] = policy_rewards, base_rewards
    pq.write_table(pa.table(columns), run_dir / config.output)
    lines = [describe(who, verdict, name) for _, who, name, verdict in judged]
    log.event("succeeded", step=4, total=4, metrics=metrics,
              message="\n".join(lines + [f"KL from the base {metrics['kl']:.2f}; answer length "
                                         f"{metrics['length_change']:+.1f} tokens ({n} prompts)"]
                        + ([f"{config.seen_in_training} of the {n} prompts were in the policy's training data: "
                            "not held out"] if config.seen_in_training else [])))


if __name__ == "__main__":
    raise SystemExit(run_main(EvaluateConfig, run))
