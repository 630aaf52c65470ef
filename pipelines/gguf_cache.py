"""Any transformers model folder as a GGUF file for llama.cpp, converted once and cached.

Candidates and comparisons decode several times faster in llama.cpp than in transformers on a CPU
(benchmarks/generation.py), so a user's own model can answer there too: the folder is converted
with llama.cpp's converter (f16, or quantised to q8_0) into `<models>/gguf-cache/`, named by the
folder and a hash of its config, tokenizer and weight files, and later runs on the same folder
reuse the file. A changed folder (a new merge into the same path) gets a new file.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.bases import gguf_readiness, tokenizer_digest
from pipelines.models import DEFAULT_MODEL, ModelError, default_gguf_path, resolve_model

CACHE = "gguf-cache"
QUANTS = ("f16", "q8_0")


def folder_key(folder: Path) -> str:
    """A hash of what the GGUF is made from: config and tokenizer files by content, weights by name,
    size and modification time (hashing gigabytes of weights would cost more than it saves)."""
    digest = tokenizer_digest(folder)
    for path in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:12]


def cached_path(folder: Path, models_dir: str | Path, quant: str) -> Path:
    return Path(models_dir) / CACHE / f"{folder.name}-{folder_key(folder)}-{quant}.gguf"


def gguf_for(model: str, models_dir: str | Path, quant: str = "f16", log=None) -> Path:
    """The GGUF file llama.cpp runs for `model`: the default model's own file, a .gguf as it is, or
    a transformers folder converted once (`log`, a RunLog, is told when a conversion starts)."""
    from pipelines.export import convert, quantize

    if model == DEFAULT_MODEL:
        return default_gguf_path()
    if model.endswith(".gguf"):
        return Path(model).expanduser()
    if quant not in QUANTS:
        raise ValueError(f"unknown GGUF type {quant!r} for llama.cpp; choose {' or '.join(QUANTS)}")
    folder = Path(resolve_model(model, models_dir))
    if not (folder / "config.json").is_file():
        raise ModelError(f"{model}: llama.cpp needs a local model folder to convert; download the model first, or "
                         "use the transformers engine")
    target = cached_path(folder, models_dir, quant)
    if target.is_file():
        return target
    refused = gguf_readiness(folder, models_dir)
    if refused:
        raise ModelError(f"{folder}: cannot run in llama.cpp: {refused}; use the transformers engine")
    if log is not None:
        log.event("running", message=f"converting {folder.name} to GGUF ({quant}) once with "
                  f"llama.cpp's converter; later runs on this folder reuse {target.name}")
    target.parent.mkdir(parents=True, exist_ok=True)
    f16 = target if quant == "f16" else target.with_name(target.stem + ".f16-step.gguf")
    convert(folder, f16)
    if quant != "f16":
        try:
            quantize(f16, target, quant)
        finally:
            f16.unlink(missing_ok=True)
    return target
