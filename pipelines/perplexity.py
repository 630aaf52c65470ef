"""Perplexity of responses under a model: the studio's perplexity-filtering score.

For each response: render the prompt with the model's chat template (with the generation prompt),
append the response's rendering, and compute the mean negative log-likelihood of the response
tokens only, given the prompt. perplexity = exp(mean NLL); mean_logprob = -mean NLL. The response
tokens are everything the template writes after the prompt, so they include the end-of-turn
marker: an answer the model would not have ended there scores worse.

Inputs (`inputs.parquet` in the run folder): response_id, prompt and response (JSON message
lists). Output: `perplexities.parquet` with response_id, ppl, mean_logprob, n_tokens and, for a
response that could not be scored, `skipped` (the reason). Scores are appended to
`partial.jsonl` as they are computed, so a cancelled or crashed run resumes where it stopped.
The responses of one prompt are scored together on one evaluation of their prompt, and the
scores are recorded with the engine and dtype that made them (bf16 on a GPU and float32 on a CPU
differ in the last digits).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.models import choose_placement, load_causal_lm, right_padded
from pipelines.runlog import Partial, RunLog, run_main
from pipelines.settings import DEVICE_HELP, DTYPE_HELP, MODELS_DIR_HELP, setting

ENGINE = "transformers"


@dataclass
class PerplexityConfig:
    """Score responses by their perplexity under a model, given their prompt."""
    model: str = setting("default", "the model whose perplexities are computed: default, a folder or a hub id")
    models_dir: str = setting("models", MODELS_DIR_HELP, internal=True)
    inputs: str = setting("inputs.parquet", "the responses, written by the runner", internal=True)
    output: str = setting("perplexities.parquet", "each response's perplexity", internal=True)
    batch_size: int = setting(8, "responses scored at once (on a CPU, only those of one prompt)")
    max_length: int = setting(2048, "tokens of prompt + response; longer ones are skipped and reported")
    device: str = setting("auto", DEVICE_HELP)
    dtype: str = setting("auto", DTYPE_HELP)


def render(tokenizer, prompt: list[dict], response: list[dict]) -> tuple[str, str]:
    """(prompt text, response text) as the chat template writes them, the prompt ending in the
    assistant's generation prompt. Without a template, turns are joined by blank lines."""
    if tokenizer.chat_template:
        head = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        whole = tokenizer.apply_chat_template(prompt + response, tokenize=False)
        if not whole.startswith(head):
            # a template may render the last turn differently once an answer follows it
            head = tokenizer.apply_chat_template(prompt, tokenize=False)
            if not whole.startswith(head):
                raise ValueError("the chat template does not render the prompt as a prefix of prompt + response")
        return head, whole[len(head):]
    head = "".join(m["content"] + "\n\n" for m in prompt)
    return head, "\n\n".join(m["content"] for m in response) + (tokenizer.eos_token or "")


def tokenize(tokenizer, prompt: list[dict], response: list[dict]) -> tuple[list[int], list[int]]:
    """Prompt and response token ids. The response is tokenized on its own, so the boundary
    between the two is where the template puts it and no prompt token is ever counted."""
    head, tail = render(tokenizer, prompt, response)
    return (tokenizer(head, add_special_tokens=False).input_ids,
            tokenizer(tail, add_special_tokens=False).input_ids)


def response_nll(model, batch: list[tuple[list[int], list[int]]], pad_id: int) -> list[tuple[float, int]]:
    """(summed NLL, token count) of each response given its prompt, for one batch.

    Each distinct prompt is evaluated once (the two sides of a pair, or N candidates, share one):
    a first pass runs every prompt but its last token and keeps the attention cache; a second pass
    runs that last token and the responses on the cache of their own prompt. Only the second pass's
    logits are computed, through the model's own output (so logit soft-capping or scaling applies).
    Same scores as running each prompt + response on its own, to float rounding."""
    import torch

    device = next(model.parameters()).device
    prompts: dict[tuple, int] = {}
    for p, _ in batch:
        prompts.setdefault(tuple(p), len(prompts))
    heads = [list(p[:-1]) for p in prompts]
    row_of = [prompts[tuple(p)] for p, _ in batch]
    # A one-token prompt has no head to cache: the whole batch then runs in one pass.
    two_pass = all(heads)
    kept = [len(p) - 1 for p, _ in batch] if two_pass else [0] * len(batch)
    tails = [(p + r)[k:] for (p, r), k in zip(batch, kept)]
    tail_ids, tail_mask = right_padded(tails, pad_id)
    with torch.inference_mode():
        if two_pass:
            head_ids, head_mask = right_padded(heads, pad_id)
            cache = model(input_ids=head_ids.to(device), attention_mask=head_mask.to(device), use_cache=True,
                          logits_to_keep=1).cache
            rows = torch.tensor(row_of, device=device)
            cache.batch_select_indices(rows)  # one copy of a prompt's cache per response
            attention = torch.cat([head_mask.to(device)[rows], tail_mask.to(device)], dim=1)
            offsets = torch.tensor([len(h) for h in heads], device=device)[rows]
        else:
            cache, attention, offsets = None, tail_mask.to(device), torch.zeros(len(batch), dtype=torch.long,
                                                                                 device=device)
        # Positions count real tokens: a short prompt's padding sits between its head and its tail.
        positions = offsets[:, None] + torch.arange(tail_ids.shape[1], device=device)[None, :]
        # Logits only where a response token is predicted: on a 49k vocabulary the output layer is
        # most of a forward pass, and a prompt's logits are never needed.
        wanted = torch.zeros(tail_ids.shape, dtype=torch.bool)
        targets = []
        for i, ((p, r), k) in enumerate(zip(batch, kept)):
            at = len(p) - 1 - k  # the tail position that predicts the response's first token
            wanted[i, at:at + len(r)] = True
            targets.extend(r)
        logits = model(input_ids=tail_ids.to(device), attention_mask=attention, position_ids=positions,
                       cache=cache, use_cache=cache is not None, logits_to_keep=wanted.to(device)).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1)  # one row per response token, batch order
        nll = -logprobs.gather(-1, torch.tensor(targets, device=device)[:, None])[:, 0].cpu()
    out, start = [], 0
    for _, r in batch:
        out.append((float(nll[start:start + len(r)].sum()), len(r)))
        start += len(r)
    return out


def batches_by_prompt(encoded: list, size: int, mix_prompts: bool = True) -> list[list]:
    """Responses in batches of at most `size`, the responses of one prompt kept together (their
    prompt is then evaluated once) and similar lengths side by side (little padding). Without
    `mix_prompts` each batch holds one prompt's responses only."""
    groups: dict[tuple, list] = {}
    for item in encoded:
        groups.setdefault(tuple(item[1]), []).append(item)
    ordered = sorted(groups.values(), key=lambda g: len(g[0][1]) + max(len(e[2]) for e in g))
    out, current = [], []
    for group in (g[i:i + size] for g in ordered for i in range(0, len(g), size)):
        if current and (len(current) + len(group) > size or not mix_prompts):
            out.append(current)
            current = []
        current.extend(group)
    return out + [current] if current else out


def score(config: PerplexityConfig, log: RunLog) -> None:
    run_dir = log.path.parent
    table = pq.read_table(run_dir / config.inputs).to_pylist()
    total = len(table)
    with Partial(run_dir, key="response_id") as partial:
        done, record = partial.done, lambda row: partial.add(row, flush=False)
        todo = [row for row in table if row["response_id"] not in done]
        placement = choose_placement(config.device, config.dtype)
        tokenizer, model = load_causal_lm(config.model, config.models_dir, placement)
        log.event("running", step=len(done), total=total,
                  message=f"scoring {len(todo)} of {total} responses on {placement.device} ({placement.dtype})")
        encoded = []
        for row in todo:
            prompt_ids, response_ids = tokenize(tokenizer, json.loads(row["prompt"]), json.loads(row["response"]))
            n = len(prompt_ids) + len(response_ids)
            if not response_ids:
                record({"response_id": row["response_id"], "skipped": "no response tokens", "n_tokens": 0})
            elif n > config.max_length:
                record({"response_id": row["response_id"], "n_tokens": len(response_ids),
                        "skipped": f"prompt + response is {n} tokens, over max_length {config.max_length}"})
            else:
                encoded.append((row["response_id"], prompt_ids, response_ids))
        # On a CPU batching several prompts only adds padding (it is compute-bound already: one
        # prompt's responses at a time scored 1.57x the one-at-a-time loop, 8 mixed ones 1.13x).
        for batch in batches_by_prompt(encoded, config.batch_size, mix_prompts=placement.device != "cpu"):
            if log.cancel_requested:
                partial.flush()
                log.event("cancelled", step=len(done), total=total, message="cancelled; resume continues from here")
                return
            for (response_id, _, _), (nll, n) in zip(batch, response_nll(
                    model, [(p, r) for _, p, r in batch], tokenizer.pad_token_id)):
                mean = nll / n
                record({"response_id": response_id, "ppl": math.exp(mean), "mean_logprob": -mean, "n_tokens": n})
            partial.flush()
            log.progress(len(done), total)

    rows = [done[row["response_id"]] for row in table]
    out = pa.Table.from_pylist(rows, schema=pa.schema([
        ("response_id", pa.string()), ("ppl", pa.float64()), ("mean_logprob", pa.float64()),
        ("n_tokens", pa.int64()), ("skipped", pa.string())]))
    pq.write_table(out, run_dir / config.output)
    scored = sorted(r["ppl"] for r in rows if r.get("ppl") is not None)
    skipped = len(rows) - len(scored)
    summary = {"scored": len(scored), "skipped": skipped}
    if scored:
        summary["median_ppl"] = scored[len(scored) // 2]
    log.event("succeeded", step=total, total=total, metrics=summary,
              engine=f"{ENGINE} ({placement.dtype})",
              message=f"scored {len(scored)} responses" + (f", skipped {skipped}" if skipped else ""))


if __name__ == "__main__":
    sys.exit(run_main(PerplexityConfig, score))
