"""Perplexity scoring speed: the studio's scorer against the obvious loop, same model, same texts.

    python benchmarks/perplexity.py [--pairs 25] [--batch-size 8]

Texts: the first `--pairs` HH-RLHF pairs from ../shared/data (both sides), prompts rendered with
the default model's chat template. Model: the default (SmolLM2-135M-Instruct).

- baseline: one example at a time, `model(input_ids, labels=...)` with the prompt masked out;
- studio (transformers): `pipelines.perplexity`'s batches (the responses of a prompt together,
  their prompt evaluated once) and `response_nll` (logits at response positions only);
- the same scorer with every response's prompt evaluated for it alone (no two responses of one
  prompt in a batch): what the studio did before it shared prompts;
- llama.cpp, for the record: the same GGUF evaluated with all-token logits, one sequence at a
  time, the prompt evaluated once per pair.

Prints tokens/s (prompt + response tokens) of each, their ratio to the baseline, their share of
the machine's float32 peak (`benchmarks/peak.py`, measured in the same run; the work counted is
each distinct prompt once without its next-token scores, and every response), and the largest relative difference of a
perplexity from the baseline's.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.peak import forward_flops_per_token, peak_gflops  # noqa: E402
from pipelines.chat import load_llama  # noqa: E402
from pipelines.models import DEFAULT_MODEL, default_gguf_path, resolve_model  # noqa: E402
from pipelines.perplexity import batches_by_prompt, response_nll, tokenize  # noqa: E402
from store.formats import parse_hh_record  # noqa: E402

HH = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless-sample.jsonl.gz"


def baseline(model, items) -> list[float]:
    import torch

    out = []
    for prompt_ids, response_ids in items:
        ids = torch.tensor([prompt_ids + response_ids])
        labels = ids.clone()
        labels[0, :len(prompt_ids)] = -100
        with torch.no_grad():
            out.append(math.exp(model(input_ids=ids, labels=labels).loss.item()))
    return out


def studio(model, items, pad_id: int, batch_size: int) -> list[float]:
    out = [0.0] * len(items)
    on_cpu = next(model.parameters()).device.type == "cpu"  # as the scorer does: one prompt a batch there
    for batch in batches_by_prompt([(i, p, r) for i, (p, r) in enumerate(items)], batch_size, mix_prompts=not on_cpu):
        for (i, _, _), (nll, n) in zip(batch, response_nll(model, [(p, r) for _, p, r in batch], pad_id)):
            out[i] = math.exp(nll / n)
    return out


def studio_unshared(model, items, pad_id: int, batch_size: int) -> list[float]:
    """Length-sorted batches in which no two responses share a prompt."""
    order = sorted(range(len(items)), key=lambda i: len(items[i][0]) + len(items[i][1]))
    batches, current = [], []
    for i in order:
        if len(current) == batch_size or any(items[j][0] == items[i][0] for j in current):
            batches.append(current)
            current = []
        current.append(i)
    out = [0.0] * len(items)
    for chunk in batches + [current]:
        for i, (nll, n) in zip(chunk, response_nll(model, [items[i] for i in chunk], pad_id)):
            out[i] = math.exp(nll / n)
    return out


def llama_cpp(items) -> list[float]:
    import numpy as np

    longest = max(len(p) + len(r) for p, r in items)
    llm = load_llama(default_gguf_path(), n_ctx=longest + 8, n_batch=512, logits_all=True, verbose=False,
                     n_threads=os.cpu_count(), n_threads_batch=os.cpu_count())
    out, evaluated_prompt = [], None
    for prompt_ids, response_ids in items:
        if prompt_ids != evaluated_prompt:
            llm.reset()
            llm.eval(prompt_ids)
            evaluated_prompt = prompt_ids
        llm.n_tokens = len(prompt_ids)  # keep the prompt's cache, drop the previous response
        llm.eval(response_ids)
        logits = llm.scores[len(prompt_ids) - 1:len(prompt_ids) + len(response_ids) - 1].astype(np.float64)
        top = logits.max(axis=1, keepdims=True)
        logsumexp = (top + np.log(np.exp(logits - top).sum(axis=1, keepdims=True)))[:, 0]
        nll = logsumexp - logits[np.arange(len(response_ids)), response_ids]
        out.append(math.exp(nll.mean()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--no-llama-cpp", action="store_true", help="leave out the llama.cpp row")
    parser.add_argument("--no-baseline", action="store_true",
                        help="the unshared studio scorer is the baseline (for the whole sample: the loop takes long)")
    parser.add_argument("--models-dir", default=os.environ.get(
        "ALIGNSTUDIO_MODELS_DIR", Path.home() / ".cache" / "alignment-studio" / "test-models"))
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_model(DEFAULT_MODEL, args.models_dir)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with gzip.open(HH, "rt", encoding="utf-8") as f:
        pairs = [parse_hh_record(json.loads(line)) for _, line in zip(range(args.pairs), f)]
    items = [tokenize(tokenizer, p.prompt, side) for p in pairs for side in (p.chosen, p.rejected)]
    tokens = sum(len(p) + len(r) for p, r in items)
    print(f"{len(items)} responses, {tokens} tokens ({sum(len(r) for _, r in items)} response tokens), "
          f"torch threads: {torch.get_num_threads()}")

    peak = peak_gflops()
    distinct_prompt_tokens = sum(len(p) for p in {tuple(p) for p, _ in items})
    context = tokens / len(items) / 2
    # The work that must be done: each distinct prompt once, without next-token scores, and every response.
    work = (distinct_prompt_tokens * forward_flops_per_token(model.config, context, output_layer=False)
            + sum(len(r) for _, r in items) * forward_flops_per_token(model.config, context))
    print(f"float32 matmul peak {peak:.0f} GFLOP/s; work: {work / 1e12:.2f} TFLOP (each distinct prompt once, "
          "scores at response positions only)")
    runs = {}
    if not args.no_baseline:
        runs["baseline (one at a time, transformers)"] = lambda: baseline(model, items)
    runs["studio, each prompt evaluated per response"] = lambda: studio_unshared(model, items, tokenizer.pad_token_id,
                                                                               args.batch_size)
    runs["studio scorer (prompt once per pair)"] = lambda: studio(model, items, tokenizer.pad_token_id, args.batch_size)
    if not args.no_llama_cpp:
        runs["llama.cpp all-token logits (Q4_1 GGUF)"] = lambda: llama_cpp(items)
    results = {}
    for name, run in runs.items():
        start = time.perf_counter()
        ppl = run()
        results[name] = (time.perf_counter() - start, ppl)
    base_time, base_ppl = next(iter(results.values()))
    for name, (seconds, ppl) in results.items():
        worst = max(abs(a - b) / b for a, b in zip(ppl, base_ppl))
        print(f"{name:44} {seconds:7.1f} s {tokens / seconds:7.0f} tokens/s  ratio {base_time / seconds:5.2f}x  "
              f"{work / seconds / 1e9 / peak:6.1%} of peak  max perplexity difference {worst:.2%}")


if __name__ == "__main__":
    main()
