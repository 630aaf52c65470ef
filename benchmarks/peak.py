"""The machine's own yardstick: float32 matrix-multiply throughput with torch at the thread count
the studio uses, and the default model's FLOPs per token, so that every benchmark can print the
share of the machine's peak it reaches beside its ratio to a baseline.

    python benchmarks/peak.py

- peak: the median of a few 2048 x 2048 float32 matrix products (2 n^3 FLOPs each), in GFLOP/s;
- FLOPs per token of a forward pass: 2 x the parameters every token passes through (the linear
  layers, the output layer included: the embedding is a lookup), plus attention's scores and
  weighted sum over the tokens before it (4 x layers x hidden x context);
- LoRA training: the forward pass, then a backward pass through a frozen base, which computes the
  gradients of the activations (about one more forward pass) but not of the base's weights: about
  2x the forward pass (full fine-tuning would be 3x).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def peak_gflops(size: int = 2048, repeats: int = 5) -> float:
    """Median float32 matmul throughput of this machine with torch's current thread count."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size ** 3 / statistics.median(times) / 1e9


def forward_flops_per_token(config, context: float, output_layer: bool = True) -> float:
    """FLOPs to run one token through the causal LM `config` describes, `context` tokens before it;
    without the output layer for a token whose next-token scores are not needed (a prompt's)."""
    from pipelines.memory import count_on_meta

    config = getattr(config, "text_config", None) or config
    _, linears = count_on_meta(config)
    if not output_layer and linears and linears[-1][2] == config.vocab_size:
        linears = linears[:-1]
    matmul = 2 * sum(i * o for _, i, o in linears)
    attention = 4 * config.num_hidden_layers * config.hidden_size * context
    return matmul + attention


def default_model_config(models_dir: str | Path):
    from transformers import AutoConfig

    from pipelines.models import DEFAULT_MODEL, resolve_model

    return AutoConfig.from_pretrained(resolve_model(DEFAULT_MODEL, models_dir))


def models_dir() -> str:
    return os.environ.get("ALIGNSTUDIO_MODELS_DIR",
                          str(Path.home() / ".cache" / "alignment-studio" / "test-models"))


def main() -> None:
    import torch

    peak = peak_gflops()
    config = default_model_config(models_dir())
    per_token = forward_flops_per_token(config, context=256)
    print(f"torch threads: {torch.get_num_threads()}, float32 matmul peak: {peak:.1f} GFLOP/s")
    print(f"default model, a token with 256 before it: {per_token / 1e6:.0f} MFLOP forward, "
          f"{2 * per_token / 1e6:.0f} MFLOP for LoRA training (forward + backward)")
    print(f"so at the peak: {peak * 1e9 / per_token:.0f} tokens/s scored, {peak * 1e9 / (2 * per_token):.0f} trained")


if __name__ == "__main__":
    main()
