"""Perplexity scoring speed: the studio's scorer against the obvious loop, same model, same texts.

    python benchmarks/perplexity.py [--pairs 25] [--batch-size 8]

Texts: the first `--pairs` HH-RLHF pairs from ../shared/data (both sides), prompts rendered with
the default model's chat template. Model: the default (SmolLM2-135M-Instruct).

- baseline: one example at a time, `model(input_ids, labels=...)` with the prompt masked out;
- studio (transformers): `pipelines.perplexity.response_nll`, length-sorted batches, output layer
  on response positions only;
- llama.cpp, for the record: the same GGUF evaluated with all-token logits, one sequence at a
  time, the prompt evaluated once per pair.

Prints tokens/s (prompt + response tokens) of each, their ratio to the baseline, and the largest
relative difference of a perplexity from the baseline's.
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

from pipelines.models import DEFAULT_MODEL, default_gguf_path, resolve_model  # noqa: E402
from pipelines.perplexity import response_nll, tokenize  # noqa: E402
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
    order = sorted(range(len(items)), key=lambda i: len(items[i][0]) + len(items[i][1]))
    out = [0.0] * len(items)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        for i, (nll, n) in zip(chunk, response_nll(model, [items[i] for i in chunk], pad_id)):
            out[i] = math.exp(nll / n)
    return out


def llama_cpp(items) -> list[float]:
    import numpy as np
    from llama_cpp import Llama

    longest = max(len(p) + len(r) for p, r in items)
    llm = Llama(str(default_gguf_path()), n_ctx=longest + 8, n_batch=512, logits_all=True, verbose=False,
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

    results = {}
    for name, run in (("baseline (one at a time, transformers)", lambda: baseline(model, items)),
                      ("studio scorer (transformers)", lambda: studio(model, items, tokenizer.pad_token_id, args.batch_size)),
                      ("llama.cpp all-token logits (Q4_1 GGUF)", lambda: llama_cpp(items))):
        start = time.perf_counter()
        ppl = run()
        results[name] = (time.perf_counter() - start, ppl)
    base_time, base_ppl = results["baseline (one at a time, transformers)"]
    for name, (seconds, ppl) in results.items():
        worst = max(abs(a - b) / b for a, b in zip(ppl, base_ppl))
        print(f"{name:42} {tokens / seconds:8.0f} tokens/s  ratio {base_time / seconds:5.2f}x  "
              f"max perplexity difference {worst:.2%}")


if __name__ == "__main__":
    main()
