"""A training run's peak GPU memory, estimated before it starts from the base's config alone.

The parameters are counted on the `meta` device (the model is built without weights, in about a
second even for 47B), so the count is exact for any architecture transformers knows, MoE
included. The rest is arithmetic, each part stated so that a user can see what to change:

- weights: parameters x bytes of the dtype; a 4-bit base (QLoRA) keeps its linear layers at about
  0.56 bytes a parameter (4 bits plus the double-quantised scales) and the rest in 16 bits;
- adapters: LoRA's A and B of every targeted linear layer (or all of them: "all-linear", the output
  layer excepted), each parameter with its gradient and Adam's two moments, all in float32
  (16 bytes a parameter);
- activations: per layer and token, the bytes a Llama-shaped decoder layer with LoRA on every linear
  layer keeps for the backward pass under 16-bit autocast, measured (tests/test_memory.py counts the
  saved tensors on the CPU): (27 + 8 r) x hidden without LoRA dropout and (51 + 12 r) x hidden with
  it (each dropout keeps its own copy of a layer's input), r the MLP's width over the hidden size: at
  Llama-3's r of 3.5, 55 and 93 x hidden; or only the layer's input (2 x hidden) with gradient
  checkpointing, plus one layer recomputed at a time;
- logits: every token's scores over the vocabulary in 16 bits, their float32 copy for the loss and
  its gradient (10 bytes per token and vocabulary entry): at 128k vocabularies, often the largest
  single tensor. A reward model has none (its head scores each sequence with one number, and its
  base's output layer is not loaded); DPO's log-probabilities are computed by TRL's fused head a
  chunk of tokens at a time (`DPO_LOGIT_CHUNK`, set by pipelines/dpo.py), so only a chunk's;
- the method's extra models: the reward model (GRPO, RLOO, PPO) loaded like the policy; pair
  methods (reward model, DPO) run both sides of a pair, so twice the sequences;
- 0.8 GB for the CUDA context and the allocator's reserve.

Sharded (shard fsdp over N processes), the weights, the LoRA and its optimizer state are divided by
N; the activations, the logits, a reward model beside the policy and the CUDA reserve are not (and
FSDP holds one layer gathered whole at a time, which the activations' margin covers at 1-8B).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from pipelines.models import ROUTER_PATTERN

GB = 1024 ** 3
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
FOUR_BIT_BYTES = 0.56

def activation_factor(config, lora_dropout: float = 0.05) -> float:
    """Bytes per token per hidden unit per layer kept for the backward pass at 16 bits (measured:
    see the module's docstring)."""
    ratio = (getattr(config, "intermediate_size", None) or 4 * config.hidden_size) / config.hidden_size
    return 51 + 12 * ratio if lora_dropout > 0 else 27 + 8 * ratio

LOGIT_BYTES = 10            # 16-bit logits + float32 copy + its gradient
CUDA_OVERHEAD_GB = 0.8
DPO_LOGIT_CHUNK = 2048      # tokens whose vocabulary scores DPO's loss holds at once


@dataclass(frozen=True)
class Shape:
    """What a training method's batches hold, as far as memory goes; each entry of the methods
    table (studio.methods) carries one."""
    sequences: int = 1          # sequences per example: 2 where both sides of a pair run in every batch
    logits: str = "all"         # "all" tokens' vocabulary scores; "chunk": TRL computes the log-probabilities
                                # DPO_LOGIT_CHUNK tokens at a time; "none": a score head (a reward model,
                                # whose base's output layer is not loaded)
    reward_model: bool = False  # a reward model of the same base loaded beside the policy (online methods)


@dataclass(frozen=True)
class MemoryPlan:
    parameters: int
    weights_gb: float
    adapters_gb: float
    activations_gb: float
    logits_gb: float
    extra_gb: float
    overhead_gb: float = CUDA_OVERHEAD_GB
    shards: int = 1             # processes the weights and LoRA state are divided between (shard fsdp)

    @property
    def total_gb(self) -> float:
        return (self.weights_gb + self.adapters_gb + self.activations_gb + self.logits_gb + self.extra_gb
                + self.overhead_gb)

    def describe(self) -> str:
        parts = [f"weights {self.weights_gb:.1f}", f"LoRA and optimizer {self.adapters_gb:.1f}",
                 f"activations {self.activations_gb:.1f}", f"logits {self.logits_gb:.1f}"]
        if self.extra_gb:
            parts.append(f"reward model {self.extra_gb:.1f}")
        sharded = f", weights and LoRA divided between {self.shards} GPUs" if self.shards > 1 else ""
        return (f"memory plan: about {self.total_gb:.1f} GB of GPU memory at the peak{' per GPU' if sharded else ''}, "
                f"for a base of {self.parameters / 1e9:.2f}B parameters ({', '.join(parts)}, "
                f"CUDA {self.overhead_gb:.1f} GB{sharded})")


def base_config(base: str, models_dir: str | Path):
    """The base's transformers config from a local folder (the default model once converted, a
    model folder) or the hub's local cache; None when this machine does not have it."""
    from transformers import AutoConfig

    from pipelines.models import local_folder

    folder = local_folder(base, models_dir)
    try:
        if (folder / "config.json").is_file():
            return AutoConfig.from_pretrained(str(folder))
        return AutoConfig.from_pretrained(base, local_files_only=True)
    except (OSError, ValueError, json.JSONDecodeError):
        return None


def count_on_meta(config) -> tuple[int, list[tuple[str, int, int]]]:
    """All parameters of the causal LM `config` describes, and its linear layers (name, in, out),
    from a model built on the meta device: no weights, no memory."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    model.tie_weights()  # not done on the meta device by itself: a tied output layer would count twice
    linears = [(name, m.in_features, m.out_features) for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear)]
    return sum(p.numel() for p in model.parameters()), linears


def plan(config, shape: Shape, *, dtype: str = "bfloat16", load_in_4bit: bool = False, lora_r: int = 16,
         lora_targets: list[str] | tuple[str, ...] = ("all-linear",), batch_size: int = 4, max_length: int = 512,
         gradient_checkpointing: bool = False, shards: int = 1, lora_dropout: float = 0.05) -> MemoryPlan:
    """The estimate for training a method of this `shape` on the base `config` with these settings;
    per GPU, with the weights and LoRA divided between `shards` processes."""
    config = getattr(config, "text_config", None) or config
    parameters, linears = count_on_meta(config)
    output_layer = linears[-1][0] if linears and linears[-1][2] == config.vocab_size else None
    targeted = [(n, i, o) for n, i, o in linears if n != output_layer and not re.fullmatch(ROUTER_PATTERN, n) and
                ("all-linear" in lora_targets or n.split(".")[-1] in lora_targets)]
    linear_parameters = sum(i * o for n, i, o in linears if n != output_layer)
    weight_bytes = DTYPE_BYTES.get(dtype, 2)
    loaded = parameters
    if shape.logits == "none" and output_layer and not getattr(config, "tie_word_embeddings", False):
        loaded -= next(i * o for n, i, o in linears if n == output_layer)  # a score head replaces it
    if load_in_4bit:
        weights = linear_parameters * FOUR_BIT_BYTES + (loaded - linear_parameters) * 2
    else:
        weights = loaded * weight_bytes
    adapters = sum(lora_r * (i + o) for _, i, o in targeted) * 16
    sequences = batch_size * shape.sequences
    tokens = sequences * max_length
    hidden, layers = config.hidden_size, config.num_hidden_layers
    activation_bytes = max(weight_bytes, 2) / 2  # the factor is for 16 bits; float32 doubles it
    factor = activation_factor(config, lora_dropout)
    if gradient_checkpointing:
        activations = tokens * hidden * (2 * layers + factor) * activation_bytes
    else:
        activations = tokens * hidden * factor * layers * activation_bytes
    scored = {"none": 0, "chunk": min(tokens, DPO_LOGIT_CHUNK)}.get(shape.logits, tokens)
    logits = scored * config.vocab_size * LOGIT_BYTES
    extra = weights if shape.reward_model else 0.0  # a reward model of the same base, not sharded
    return MemoryPlan(parameters, weights / shards / GB, adapters / shards / GB, activations / GB, logits / GB,
                      extra / GB, shards=shards)


def free_gpu_gb() -> float | None:
    """Free memory of the GPU a single-process job gets (the first visible one: the runner gives it
    that one), or None without one. Read by nvidia-smi in a short-lived process: torch's
    mem_get_info would create a CUDA context in the studio's own process (about 0.5 GB of the card
    held for the studio's life) and only ever look at GPU 0."""
    import os
    import shutil
    import subprocess

    smi = shutil.which("nvidia-smi")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if smi is None or (visible is not None and not visible.strip()):
        return None
    gpu = (visible or "0").split(",")[0].strip()
    try:
        answer = subprocess.run([smi, "--query-gpu=memory.free", "--format=csv,noheader,nounits", f"--id={gpu}"],
                                capture_output=True, text=True, timeout=20)
        return float(answer.stdout.split()[0]) * 2**20 / GB if answer.returncode == 0 else None  # MiB
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        return None
