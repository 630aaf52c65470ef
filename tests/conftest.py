"""Shared fixtures: a models folder kept between test runs, a tiny model, a fresh workspace.

The default model is converted from its GGUF once per machine (into ~/.cache, or
$ALIGNSTUDIO_TEST_MODELS) and reused by later runs; the tiny model (2 layers, hidden 64, random
weights, the default model's real tokenizer and chat template) is built from a config there too.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipelines.models import DEFAULT_MODEL, resolve_model
from studio.workspace import Workspace

from helpers import built_once, exclusively

ROOT = Path(__file__).resolve().parents[1]
HH_FILE = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless-sample.jsonl.gz"
TINY_NAME = "tiny-llama-2x64"


@pytest.fixture(scope="session")
def models_dir() -> Path:
    path = Path(os.environ.get("ALIGNSTUDIO_TEST_MODELS", Path.home() / ".cache" / "alignment-studio" / "test-models"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def default_model_path(models_dir) -> Path:
    with exclusively(models_dir / DEFAULT_MODEL):  # converted once, not by each test process at once
        return Path(resolve_model(DEFAULT_MODEL, models_dir))


@pytest.fixture(scope="session")
def tiny_model(models_dir, default_model_path) -> Path:
    """A random 2-layer Llama with the default model's tokenizer; its folder path."""
    def build(partial):
        import torch
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

        tokenizer = AutoTokenizer.from_pretrained(default_model_path)
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=2048, tie_word_embeddings=True,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)
        LlamaForCausalLM(config).save_pretrained(partial)
        tokenizer.save_pretrained(partial)

    return built_once(models_dir / TINY_NAME, build)


@pytest.fixture(scope="session")
def peaked_model(models_dir, tiny_model) -> Path:
    """The tiny model's shape with large random weights (init std 0.5): its next-token
    distributions are peaked (entropy about 3 nats rather than the tiny model's near-uniform 10.8),
    so a few RL steps can visibly move them."""
    def build(partial):
        import torch
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

        config = LlamaConfig.from_pretrained(tiny_model)
        config.initializer_range = 0.5
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(partial)
        AutoTokenizer.from_pretrained(tiny_model).save_pretrained(partial)

    return built_once(models_dir / "tiny-llama-2x64-peaked", build)


@pytest.fixture
def workspace(tmp_path, models_dir) -> Workspace:
    return Workspace.at(tmp_path / "ws", models_dir=models_dir)


@pytest.fixture
def store(workspace):
    s = workspace.open_store()
    yield s
    s.close()


@pytest.fixture
def hh_file() -> Path:
    """The real HH-RLHF sample: only for the tests about that format (the others use pairs_file)."""
    if not HH_FILE.is_file():
        pytest.skip(f"{HH_FILE} is missing (the shared data folder beside the project)")
    return HH_FILE


@pytest.fixture(scope="session")
def pairs_file(tmp_path_factory) -> Path:
    """1,000 preference pairs the tests make themselves, in the HH layout (tests/helpers.py)."""
    from helpers import write_pairs

    return write_pairs(tmp_path_factory.mktemp("pairs") / "pairs.jsonl.gz")


# Fixtures whose tests train, convert or sample a model (seconds to minutes each).
MODEL_FIXTURES = {"tiny_model", "peaked_model", "default_model_path", "hh40"}


def pytest_collection_modifyitems(items):
    """`slow`: every browser, model-family and default-model test, and every test that uses a
    model (MODEL_FIXTURES); `make test-fast` runs the rest."""
    for item in items:
        if item.get_closest_marker("browser") or item.get_closest_marker("family") or \
                item.get_closest_marker("default_model") or MODEL_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)
