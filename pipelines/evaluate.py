"""Evaluate a policy against its base: both answer the same prompts, and each judge given says
which answer is better (`pipelines.judges`): the proxy (the reward model the policy optimised,
labelled as such), a judge reward model trained on other prompts, and/or a named rule. The report
gives, per judge, the policy's win rate with its 95% interval (and for reward models the mean
reward gain with its standard error), plus the KL from the base and the change in answer length.

    python -m pipelines.evaluate --config runs/<id>/config.json

Answers are sampled (temperature, seeded). The KL from the base is the mean over the policy's
answers of the KL between the policy's and the base's next-token distributions, summed over each
answer's positions (`answer_kl`), the base being the same model with the adapter disabled.

Beside the verdicts, the cost card: what the alignment cost, base and policy side by side with a
paired bootstrap interval on each difference ("no clear change" where it includes 0): perplexity
of held-out reference answers the policy never trained on (capability kept or lost), the refusal
rate on benign prompts that only sound risky (over-refusal) and on clearly harmful ones (where
refusing is right), by the stated refusal rule (`pipelines.judges.REFUSAL_RULE`), and the KL and
answer length above.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from common.errors import StudioError
from common.stats import length_controlled, paired_difference
from pipelines.judges import OUTCOME, RULES, by_reward, by_rule, describe, flat_metrics, is_refusal, rule_answers
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
from pipelines.perplexity import response_nll, tokenize
from pipelines.reward_model import load_reward_model, read_meta, score
from pipelines.runlog import RunLog, run_main
from pipelines.settings import DEVICE_HELP, DTYPE_HELP, MODELS_DIR_HELP, setting


@dataclass
class EvaluateConfig:
    """Compare a policy's answers with its base's, by one or more judges."""
    policy_adapter: str = setting("", "the policy's adapter folder", internal=True)
    against_adapter: str = setting("", "another trained policy of the same base (its adapter folder) that the "
                                   "policy is judged against instead of its base: DPO against SFT on the chosen "
                                   "answers, say", internal=True)
    against_name: str = setting("", "that policy's name, for the report", internal=True)
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
    judge_guideline: str = setting("", "the LLM judge's prompt (its text, or on the command line a file), with "
                                   "{prompt}, {answer_a} and {answer_b}, at most 8,000 characters; empty: the studio's")
    models_dir: str = setting("models", MODELS_DIR_HELP, internal=True)
    inputs: str = setting("inputs.parquet", "the prompts, written by the runner", internal=True)
    output: str = setting("answers.parquet", "both models' answers and scores", internal=True)
    max_new_tokens: int = setting(64, "answer length limit in tokens")
    refusal_limit: int = setting(30, "cost card: prompts of each refusal set both models answer (benign prompts that "
                                 "sound risky, and harmful ones; at most as many as the evaluation's prompts unless "
                                 "given); 0 leaves over-refusal out", label="Refusal prompts")
    reference_inputs: str = setting("", "held-out reference answers (prompt, answer) for the cost card's perplexity, "
                                    "written by the runner", internal=True)
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


AGAINST = "against"  # the adapter name of the model a policy is judged against, when it is not its base


@contextlib.contextmanager
def reference(model):
    """The model a policy is compared with, while the block runs: its base (the adapter disabled),
    or the other policy loaded beside it as the adapter `AGAINST`."""
    if AGAINST in getattr(model, "peft_config", {}):
        model.set_adapter(AGAINST)
        try:
            yield
        finally:
            model.set_adapter("default")
    else:
        with model.disable_adapter():
            yield


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
        with reference(model):
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
    policy = attach_adapter(base, config.policy_adapter)
    if config.against_adapter:  # the same base with the other policy's adapter beside (the studio checked both)
        policy.load_adapter(config.against_adapter, adapter_name=AGAINST)
        policy.set_adapter("default")
    policy = policy.to(placement.device).eval()

    log.event("running", step=0, total=4, message=f"answering {len(prompts)} prompts with the policy")
    sampling = dict(max_new_tokens=config.max_new_tokens, temperature=config.temperature, batch_size=config.batch_size)
    torch.manual_seed(config.seed)
    policy_texts, policy_ids = answer(policy, tokenizer, prompts, placement.device, **sampling)
    log.progress(1, 4, message="answering with the base")
    torch.manual_seed(config.seed)
    with reference(policy):
        base_texts, base_ids = answer(policy, tokenizer, prompts, placement.device, **sampling)
    log.progress(2, 4, message="KL from the base")
    kls = [answer_kl(policy, tokenizer, p, ids, placement.device) for p, ids in zip(prompts, policy_ids)]
    ends = end_ids(policy, tokenizer)
    card = cost_card(policy, tokenizer, config, run_dir, placement.device, sampling, log)
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
        results = []
        try:
            for p, a, b in zip(prompts, policy_texts, base_texts):
                if log.cancel_requested:  # each comparison takes seconds: a cancel is honoured between them
                    log.event("cancelled", step=3, total=4, message="cancelled while the LLM judge compared answers")
                    return
                results.append(judge.compare(p, a, b))
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
    metrics.update({f"cost/{item}/{k}": float(v) for item, values in card.items() for k, v in values.items()
                    if isinstance(v, (int, float))})
    columns = {"prompt": [json.dumps(p) for p in prompts], "policy": policy_texts, "base": base_texts}
    for role, (policy_rewards, base_rewards) in scored.items():
        columns[f"{role}_policy"], columns[f"{role}_base"] = policy_rewards, base_rewards
    pq.write_table(pa.table(columns), run_dir / config.output)
    lines = [describe(who, verdict, name) for _, who, name, verdict in judged]
    against = [f"against {config.against_name}, not the base: every 'base' here is {config.against_name}"] \
        if config.against_adapter else []
    log.event("succeeded", step=4, total=4, metrics=metrics,
              message="\n".join(against + lines + [f"KL from {config.against_name or 'the base'} {metrics['kl']:.2f}; "
                                                   "answer length "
                                         f"{metrics['length_change']:+.1f} tokens ({n} prompts)"]
                        + describe_card(card)
                        + ([f"{config.seen_in_training} of the {n} prompts were in the policy's training data: "
                            "not held out"] if config.seen_in_training else [])))


REFUSAL_SETS = Path(__file__).resolve().parents[1] / "assets" / "refusals"
CARD_ITEMS = {"benign": "refuses harmless prompts that sound risky", "harmful": "refuses harmful prompts"}


def refusal_prompts(kind: str, limit: int) -> list[list[dict]]:
    """`limit` prompts of a refusal set (benign: homonyms, figurative speech, safe contexts, history,
    definitions; harmful), spread over its kinds by a fixed shuffle."""
    import random

    rows = [json.loads(line) for line in (REFUSAL_SETS / f"{kind}.jsonl").read_text().splitlines() if line.strip()]
    random.Random(0).shuffle(rows)
    return [[{"role": "user", "content": r["prompt"]}] for r in rows[:limit]]


def held_out_nll(model, tokenizer, references: list[dict], batch_size: int) -> list[float]:
    """Each reference answer's mean negative log-likelihood per token under `model`."""
    encoded = [tokenize(tokenizer, r["prompt"], r["answer"]) for r in references]
    out = []
    for start in range(0, len(encoded), batch_size):
        out.extend(nll / max(count, 1) for nll, count in response_nll(model, encoded[start:start + batch_size],
                                                                         tokenizer.pad_token_id))
    return out


def cost_card(policy, tokenizer, config: EvaluateConfig, run_dir: Path, device: str, sampling: dict,
              log: RunLog) -> dict:
    """What the alignment cost, base against policy (`policy` a PeftModel; the base is its adapter
    disabled): held-out perplexity and refusal rates, each with a paired bootstrap interval."""
    import math

    import torch

    card = {}
    if config.reference_inputs and (run_dir / config.reference_inputs).is_file():
        references = [{"prompt": json.loads(r["prompt"]), "answer": json.loads(r["answer"])}
                      for r in pq.read_table(run_dir / config.reference_inputs).to_pylist()]
        if references:
            log.progress(2, 4, message=f"cost card: perplexity of {len(references)} held-out reference answers")
            policy_nll = held_out_nll(policy, tokenizer, references, config.batch_size)
            with reference(policy):
                base_nll = held_out_nll(policy, tokenizer, references, config.batch_size)
            change = paired_difference(policy_nll, base_nll)
            # A mean change of log-perplexity d is a factor exp(d) on perplexity.
            card["perplexity"] = {"base": math.exp(sum(base_nll) / len(base_nll)),
                                  "policy": math.exp(sum(policy_nll) / len(policy_nll)),
                                  "change": math.exp(change["diff"]) - 1, "low": math.exp(change["low"]) - 1,
                                  "high": math.exp(change["high"]) - 1, "n": change["n"],
                                  "verdict": change["change"]}
    if config.refusal_limit > 0:
        for kind in CARD_ITEMS:
            prompts = refusal_prompts(kind, config.refusal_limit)
            log.progress(2, 4, message=f"cost card: {len(prompts)} {kind} prompts, answered by both")
            torch.manual_seed(config.seed)
            policy_texts, _ = answer(policy, tokenizer, prompts, device, **sampling)
            torch.manual_seed(config.seed)
            with reference(policy):
                base_texts, _ = answer(policy, tokenizer, prompts, device, **sampling)
            policy_refused = [float(is_refusal(t)) for t in policy_texts]
            base_refused = [float(is_refusal(t)) for t in base_texts]
            change = paired_difference(policy_refused, base_refused)
            card[kind] = {"base": sum(base_refused) / len(prompts), "policy": sum(policy_refused) / len(prompts),
                          "change": change["diff"], "low": change["low"], "high": change["high"],
                          "n": change["n"], "verdict": change["change"]}
    return card


def describe_card(card: dict) -> list[str]:
    """The cost card in words, one line per item."""
    lines = []
    if "perplexity" in card:
        c = card["perplexity"]
        lines.append(f"cost: held-out perplexity {c['base']:.2f} -> {c['policy']:.2f} ({c['change']:+.1%}, 95% "
                     f"interval {c['low']:+.1%} to {c['high']:+.1%}: {c['verdict']}; {c['n']} reference answers)")
    else:  # said, not left out: a card without it reads as if the policy's language were untouched
        lines.append("cost: held-out perplexity not measured: no reference answers the policy never trained on (the "
                     "judged prompts' dataset has no preference pairs, or the policy trained on all of them); give "
                     "a JSONL file of prompts and completions with alignstudio evaluate --reference-file")
    for kind, words in CARD_ITEMS.items():
        if kind in card:
            c = card[kind]
            lines.append(f"cost: {words}: base {c['base']:.0%} -> policy {c['policy']:.0%} "
                         f"({100 * c['change']:+.0f} points, 95% interval {100 * c['low']:+.0f} to "
                         f"{100 * c['high']:+.0f}: {c['verdict']}; {c['n']} prompts)")
    return lines


if __name__ == "__main__":
    raise SystemExit(run_main(EvaluateConfig, run))
