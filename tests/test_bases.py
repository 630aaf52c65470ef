"""A base that no pipeline could use is refused before a run exists, with a sentence that names the
folder and what is wrong; a base llama.cpp's converter would refuse is said to be so up front."""

from __future__ import annotations

import json
import shutil

import pytest

from pipelines.bases import gguf_readiness
from store import import_file
from studio import service
from studio.cli import main as cli_main
from studio.runner import RunError, Runner

from families import FAMILIES, family_model


@pytest.fixture
def pairs(tmp_path, store):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Q{i}?", "chosen": f"Answer {i}.", "rejected": "No."}) + "\n"
                            for i in range(6)))
    import_file(store, path, "pairs")
    return "pairs"


def copy_of(tiny_model, tmp_path, name="base"):
    folder = tmp_path / name
    shutil.copytree(tiny_model, folder)
    return folder


def refusal(store, workspace, base) -> str:
    runner = Runner(store, workspace)
    with pytest.raises(RunError) as e:
        service.start_training(runner, "rm", "pairs", base=str(base), max_steps=1)
    assert store.scalar("SELECT count(*) FROM runs") == 0  # refused before a run exists
    return str(e.value)


def test_a_config_that_is_not_json_is_named_with_its_line(tmp_path, store, workspace, pairs, tiny_model):
    base = copy_of(tiny_model, tmp_path)
    (base / "config.json").write_text('{\n  "model_type": "llama",\n  "hidden_size": 64,,\n}')
    message = refusal(store, workspace, base)
    assert message.startswith(f"{base / 'config.json'}:3: not valid JSON")


def test_an_architecture_transformers_does_not_know_is_refused(tmp_path, store, workspace, pairs, tiny_model):
    base = copy_of(tiny_model, tmp_path)
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "architectures": ["MadeUpForCausalLM"],
                                                  "model_type": "made-up"}))
    assert "MadeUpForCausalLM" in refusal(store, workspace, base)


def test_a_tokenizer_without_a_chat_template_or_with_one_that_raises_is_refused(tmp_path, store, workspace, pairs,
                                                                                tiny_model):
    base = copy_of(tiny_model, tmp_path)
    (base / "chat_template.jinja").unlink(missing_ok=True)
    settings = json.loads((base / "tokenizer_config.json").read_text())
    settings.pop("chat_template", None)
    (base / "tokenizer_config.json").write_text(json.dumps(settings))
    assert "has no chat template" in refusal(store, workspace, base)
    (base / "chat_template.jinja").write_text("{{ raise_exception('no system role here') }}")
    message = refusal(store, workspace, base)
    assert "chat template fails" in message and "no system role here" in message


def test_a_model_without_an_end_id_is_refused(tmp_path, store, workspace, pairs, tiny_model):
    base = copy_of(tiny_model, tmp_path)
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "eos_token_id": None}))
    (base / "generation_config.json").write_text(json.dumps({"eos_token_id": None}))
    settings = json.loads((base / "tokenizer_config.json").read_text())
    (base / "tokenizer_config.json").write_text(json.dumps({**settings, "eos_token": None, "pad_token": None}))
    assert "no end-of-answer token" in refusal(store, workspace, base)


def test_a_hub_id_on_a_machine_without_the_hub_is_refused_in_our_words(store, workspace, pairs, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    message = refusal(store, workspace, "someone/not-downloaded-model")
    assert message.startswith("someone/not-downloaded-model is not in the local hub cache")


def test_a_family_the_converter_refuses_is_said_when_training_starts_and_refused_before_an_export_merges(
        tmp_path, workspace, store, pairs, models_dir, default_model_path, capsys):
    # Gemma-2 saved without its SentencePiece file (what save_pretrained of transformers 5 writes).
    base = tmp_path / "gemma2-without-sentencepiece"
    shutil.copytree(family_model("gemma2", models_dir, default_model_path), base)
    (base / "tokenizer.model").unlink()
    verdict = gguf_readiness(base)
    assert verdict.startswith("llama.cpp's converter reads a Gemma2ForCausalLM tokenizer from its SentencePiece file, "
                              f"tokenizer.model, which {base} lacks")
    store.close()
    code = cli_main(["train", "dpo", "--dataset", "pairs", "--base", str(base), "--max-steps", "1", "--batch-size",
                     "2", "--max-length", "64", "--lora-r", "2", "--workspace", str(workspace.root),
                     "--models-dir", str(workspace.models_dir)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"note: this base can be trained but not exported to GGUF: {verdict}" in out
    with workspace.open_store() as store:
        runner = Runner(store, workspace)
        policy = store.scalar("SELECT name FROM models WHERE purpose = 'policy'")
        run = runner.wait(service.start_export(runner, model=policy, quants=["f16"]))
    assert run["status"] == "failed"
    assert run["message"] == f"{base}: {verdict}"
    assert not (workspace.runs_dir / str(run["id"]) / "merged").exists()  # refused before the merge


def test_every_family_is_ready_for_gguf(models_dir, default_model_path):
    for name in FAMILIES:
        assert gguf_readiness(family_model(name, models_dir, default_model_path), models_dir) is None, name
