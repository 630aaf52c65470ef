"""GGUF export: a trained policy merges, converts, quantises, chats in llama.cpp and matches
transformers; refusals are clear."""

import json
import shutil
from pathlib import Path

import pytest

from pipelines.export import chat_template_parts, modelfile
from store import import_file
from studio import service
from studio.cli import main as cli_main
from studio.runner import RunError, Runner


@pytest.fixture
def dpo_run(tmp_path, workspace, store, pairs_file, tiny_model):
    """A DPO policy trained for a few steps on the tiny model; the run id."""
    import gzip

    path = tmp_path / "hh20.jsonl"
    path.write_text("".join(gzip.open(pairs_file, "rt", encoding="utf-8").readlines()[:20]))
    import_file(store, path, "hh20")
    runner = Runner(store, workspace)
    run_id = service.start_training(
        runner,
        "dpo",
        "hh20",
        base=str(tiny_model),
        max_steps=3,
        batch_size=2,
        max_length=128,
        lora_r=4,
        lora_alpha=8,
        learning_rate=5e-2,
    ).run_id
    assert runner.wait(run_id)["status"] == "succeeded"
    store.close()
    return run_id


def test_a_trained_policy_exports_to_three_gguf_files_that_chat_and_match_transformers(workspace, dpo_run, capsys):
    from pipelines.chat import load_llama

    code = cli_main(["export-model", "--run", str(dpo_run), "--workspace", str(workspace.root),
                     "--models-dir", str(workspace.models_dir)])
    out = capsys.readouterr().out
    assert code == 0, out
    with workspace.open_store() as store:
        models = {r["name"]: r for r in store.query("SELECT * FROM models")}
    policy = models[f"dpo-run{dpo_run}"]
    ggufs = {name: r for name, r in models.items() if r["kind"] == "gguf"}
    assert set(ggufs) == {f"dpo-run{dpo_run}-{q}" for q in ("f16", "q8_0", "q4_k_m")}
    export_run = next(iter(ggufs.values()))["run_id"]
    assert all(r["parent_id"] == policy["id"] and r["run_id"] == export_run for r in ggufs.values())
    assert models[f"dpo-run{dpo_run}-merged"]["kind"] == "merged"
    report = json.loads((workspace.runs_dir / str(export_run) / "export.json").read_text())
    checks = {f["quant"]: f for f in report["files"]}
    # f16 reproduces the merged model; the smaller files are at least close to it.
    assert checks["f16"]["argmax_agrees"] and checks["f16"]["relative_diff"] < 0.01
    assert checks["q8_0"]["top10_overlap"] >= 7 and checks["q4_k_m"]["top10_overlap"] >= 5
    sizes = {q: Path(f["path"]).stat().st_size for q, f in checks.items()}
    assert sizes["f16"] > sizes["q8_0"] > sizes["q4_k_m"]
    # What each quantisation cost: perplexity of the held-out text against f16's, with an interval.
    assert checks["f16"]["ppl"] > 1 and "ppl_change" not in checks["f16"]
    for quant in ("q8_0", "q4_k_m"):
        c = checks[quant]
        assert c["ppl_change_low"] <= c["ppl_change"] <= c["ppl_change_high"]
        assert c["smaller"] == pytest.approx(sizes["f16"] / sizes[quant])
    assert "smaller than f16, held-out perplexity" in out
    for name in ggufs:
        assert name in out
    # The merged weights are the adapter's, not the base's: the merge changed them.
    from safetensors.torch import load_file

    merged = load_file(Path(report["model_dir"]) / "model.safetensors")
    base = load_file(Path(json.loads((workspace.runs_dir / str(dpo_run) / "config.json").read_text())["base"])
                     / "model.safetensors")
    assert any((merged[k] - base[k]).abs().max() > 1e-4 for k in base if "proj" in k)
    # Each file loads and chats in llama.cpp (as the studio loads it: see load_llama on AMX CPUs).
    llm = load_llama(checks["q4_k_m"]["path"], n_ctx=256, verbose=False)
    reply = llm.create_chat_completion(messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert reply["choices"][0]["finish_reason"] in ("stop", "length")
    text = Path(checks["q8_0"]["modelfile"]).read_text()
    assert text.splitlines()[1] == f"FROM ./{Path(checks['q8_0']['path']).name}"
    assert 'PARAMETER stop "<|im_end|>"' in text and "{{ .Content }}" in text


def test_modelfile_template_rebuilds_the_chat_template(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    parts = chat_template_parts(tokenizer)
    conversation = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
                    {"role": "user", "content": "and 3+3?"}]
    rendered = "".join(parts[m["role"]] + m["content"] + parts["suffix"] for m in conversation) + parts["generation"]
    with_default = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    assert with_default == parts["system"] + parts["default_system"] + parts["suffix"] + rendered
    text = modelfile("m.gguf", tokenizer)
    template = text.split('TEMPLATE """')[1].split('"""')[0]
    assert template.count("{{ if ") == 1 and template.count("{{ end }}") == 2  # one if, closed, inside one range
    assert f'SYSTEM """{parts["default_system"]}"""' in text


def test_an_architecture_llama_cpp_cannot_convert_fails_with_a_clear_message(workspace, store, tiny_model, tmp_path):
    foreign = tmp_path / "foreign-model"
    shutil.copytree(tiny_model, foreign)
    config = json.loads((foreign / "config.json").read_text())
    (foreign / "config.json").write_text(json.dumps({**config, "architectures": ["MadeUpForCausalLM"]}))
    runner = Runner(store, workspace)
    run = runner.wait(service.start_export(runner, model=str(foreign), quants=["f16"]))
    assert run["status"] == "failed"
    assert "converter does not know the architecture MadeUpForCausalLM" in run["message"]
    assert not list((workspace.runs_dir / str(run["id"]) / "gguf").glob("*.gguf*"))  # nothing half-written
    assert store.scalar("SELECT count(*) FROM models") == 0


def test_reward_models_and_unknown_names_are_refused_before_a_run(workspace, store):
    with store.transaction() as cur:
        cur.execute("INSERT INTO models (name, kind, path, purpose) VALUES ('rm-run1', 'adapter', '/x', 'reward')")
    runner = Runner(store, workspace)
    with pytest.raises(RunError, match="scores answers and does not chat"):
        service.start_export(runner, model="rm-run1")
    with pytest.raises(RunError, match="no model named 'nope'"):
        service.start_export(runner, model="nope")
    with store.transaction() as cur:
        cur.execute(
            "INSERT INTO models (name, kind, path, purpose) VALUES ('dpo-run2-q8_0', 'gguf', '/x.gguf', 'policy')"
        )
    with pytest.raises(RunError, match="is a GGUF file already"):
        service.start_export(runner, model="dpo-run2-q8_0")
    with pytest.raises(RunError, match="unknown quant q3"):
        service.start_export(runner, model="default", quants=["q3"])
    assert store.scalar("SELECT count(*) FROM runs") == 0


@pytest.mark.parametrize("name", ["gemma2", "mistral"])
def test_an_ollama_template_for_a_family_without_a_system_role_writes_what_its_chat_template_does(
        name, models_dir, default_model_path):
    from transformers import AutoTokenizer

    from pipelines.bases import generation_end_ids
    from pipelines.export import render_turns, turn_parts

    from families import FAMILIES, family_model

    folder = family_model(name, models_dir, default_model_path)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    parts = turn_parts(tokenizer)
    assert parts["system"]["kind"] == "folded"  # the system message goes into the first user turn
    conversation = [{"role": "system", "content": "You answer in French."}, {"role": "user", "content": "Two?"},
                    {"role": "assistant", "content": "Deux."}, {"role": "user", "content": "Three?"},
                    {"role": "assistant", "content": "Trois."}, {"role": "user", "content": "And four?"}]
    assert render_turns(parts, conversation) == tokenizer.apply_chat_template(conversation, tokenize=False,
                                                                             add_generation_prompt=True)
    text = modelfile("m.gguf", tokenizer, generation_end_ids(folder))
    template = text.split('TEMPLATE """')[1].split('"""')[0]
    assert FAMILIES[name].bos not in template  # Ollama writes the BOS itself
    assert template.count("{{ range .Messages }}") == 1 and template.count("{{ if $system }}") == 1
    assert f'PARAMETER stop "{FAMILIES[name].turn_end}"' in text


def test_an_export_on_a_full_disk_says_so_and_leaves_nothing_partial(workspace, dpo_run, monkeypatch):
    import errno

    from transformers import PreTrainedModel

    from pipelines.export import ConversionError, ExportConfig
    from pipelines.export import run as export
    from pipelines.runlog import RunLog

    with workspace.open_store() as store:
        adapter = store.scalar("SELECT path FROM models WHERE run_id = ?", [dpo_run])
    folder = workspace.root / "export-run"
    folder.mkdir()

    def full(self, path, *args, **kwargs):
        from pathlib import Path

        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "model.safetensors").write_bytes(b"half a file")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full)
    config = ExportConfig(name="p", adapter=adapter, models_dir=str(workspace.models_dir), quants=["f16"])
    with pytest.raises(ConversionError, match="the disk of .* is full.*Nothing partial was left"):
        export(config, RunLog(folder))
    assert not (folder / "merged.partial").exists() and not (folder / "merged").exists()
    assert not list((folder / "gguf").glob("*"))
