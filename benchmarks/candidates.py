"""Candidate generation speed: answers sampled one after another through llama.cpp (the baseline,
what the studio did before) against every answer of several prompts decoded in one batch
(`pipelines.batched_sampling`), same model, same prompts, same settings, same run.

    python benchmarks/candidates.py [--prompts 40] [--n 4] [--max-tokens 96] [--batch-prompts 8]

Model: the default (SmolLM2-135M-Instruct, Q4_1 GGUF). Prompts: the studio's demo prompts.
Prints answers per second and generated tokens per second of each, and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.batched_sampling import BatchedSampler  # noqa: E402
from pipelines.chat import ChatModels, Sampling  # noqa: E402
from pipelines.models import default_gguf_path  # noqa: E402
from studio.workspace import ASSETS  # noqa: E402


def demo_prompts(count: int) -> list[list[dict]]:
    path = ASSETS / "demo_prompts.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [[{"role": "user", "content": r["prompt"]}] for r in rows[:count]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--batch-prompts", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=0.8)
    args = parser.parse_args()
    prompts = demo_prompts(args.prompts)
    print(f"{len(prompts)} prompts x {args.n} answers, at most {args.max_tokens} tokens, "
          f"temperature {args.temperature}, top-p 0.95, {os.cpu_count()} threads")

    models = ChatModels(max_loaded=1)
    models.get(default_gguf_path())  # loaded before the clock starts, as the batched one is
    start, tokens = time.perf_counter(), 0
    for prompt in prompts:
        for i in range(args.n):
            tokens += models.answer(default_gguf_path(), prompt,
                                    Sampling(args.temperature, 0.95, args.max_tokens, i))[2]
    serial = (time.perf_counter() - start, tokens)

    sampler = BatchedSampler(default_gguf_path(), max_sequences=args.batch_prompts * args.n,
                             max_tokens=args.max_tokens)
    start, tokens = time.perf_counter(), 0
    for at in range(0, len(prompts), args.batch_prompts):
        answers = sampler.answer_all(prompts[at:at + args.batch_prompts], args.n, args.temperature, 0.95, 0)
        tokens += sum(len(a.tokens) for group in answers for a in group)
    batched = (time.perf_counter() - start, tokens)

    answers = len(prompts) * args.n
    for name, (seconds, count) in (("one after another (baseline)", serial),
                                   (f"batched, {args.batch_prompts} prompts x {args.n} at once", batched)):
        print(f"{name:36} {seconds:7.1f} s  {answers / seconds:6.2f} answers/s  {count / seconds:6.0f} tokens/s  "
              f"ratio {serial[0] / seconds:5.2f}x")


if __name__ == "__main__":
    main()
