"""Generation speed: llama.cpp (the default model exported to q8_0 by the studio's export steps)
against transformers `generate` (the same model in float32), same prompt, same length, same run.

    python benchmarks/generation.py [--tokens 128] [--repeats 3]

Both decode greedily exactly `--tokens` new tokens after the same chat-templated prompt (the end
of the answer is not allowed to stop either early), with all CPU cores (or the GPU for
transformers when there is one). Prints tokens/s of each (median of the repeats, prompt
evaluation included) and their ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.chat import load_llama  # noqa: E402
from pipelines.export import convert, quantize  # noqa: E402
from pipelines.models import DEFAULT_MODEL, choose_placement, load_causal_lm, resolve_model  # noqa: E402

PROMPT = [{"role": "user", "content": "Write a short story about a lighthouse keeper who finds a message in a bottle."}]


def transformers_speed(tokenizer, model, ids: list[int], tokens: int, device: str) -> float:
    import torch

    input_ids = torch.tensor([ids], device=device)
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                             min_new_tokens=tokens, max_new_tokens=tokens, pad_token_id=tokenizer.pad_token_id)
    elapsed = time.perf_counter() - start
    assert out.shape[1] - len(ids) == tokens
    return tokens / elapsed


def llama_cpp_speed(llm, ids: list[int], tokens: int) -> float:
    llm.reset()
    eos = llm.token_eos()
    start = time.perf_counter()
    made = 0
    # Greedy; the end-of-text token is masked so that exactly `tokens` are made, as in transformers.
    for _ in llm.generate(ids, temp=0.0, top_k=1, logits_processor=[lambda _ids, scores: _mask(scores, eos)]):
        made += 1
        if made == tokens:
            break
    return tokens / (time.perf_counter() - start)


def _mask(scores, token):
    scores[token] = -float("inf")
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models-dir", default=str(Path.home() / ".cache" / "alignment-studio" / "test-models"))
    args = parser.parse_args()

    model_dir = Path(resolve_model(DEFAULT_MODEL, args.models_dir))
    placement = choose_placement()
    tokenizer, model = load_causal_lm(DEFAULT_MODEL, args.models_dir, placement)
    ids = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=True, return_dict=True)[
        "input_ids"
    ]
    with tempfile.TemporaryDirectory() as tmp:
        f16, q8 = Path(tmp) / "default-f16.gguf", Path(tmp) / "default-q8_0.gguf"
        convert(model_dir, f16)
        quantize(f16, q8, "q8_0")
        llm = load_llama(q8, n_ctx=1024, n_threads=os.cpu_count(), n_threads_batch=os.cpu_count(), verbose=False)
        transformers_speed(tokenizer, model, ids, 8, placement.device)  # warm-up
        llama_cpp_speed(llm, ids, 8)
        hf = statistics.median(transformers_speed(tokenizer, model, ids, args.tokens, placement.device)
                               for _ in range(args.repeats))
        cpp = statistics.median(llama_cpp_speed(llm, ids, args.tokens) for _ in range(args.repeats))
    print(f"default model, {len(ids)} prompt tokens, {args.tokens} new tokens, greedy, "
          f"median of {args.repeats}, {os.cpu_count()} CPU threads")
    print(f"transformers generate ({placement.device}, {placement.dtype}) : {hf:7.1f} tokens/s  1.00x")
    print(f"llama.cpp (q8_0 GGUF)                  : {cpp:7.1f} tokens/s  {cpp / hf:.2f}x")


if __name__ == "__main__":
    main()
