"""Candidate generation as a job: N samples per prompt, stored with their model and settings."""

import json

import pytest

from store import import_file
from studio import service
from studio.runner import RunError, Runner

from helpers import read_events


def prompts_file(tmp_path, n):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Say something about the number {i}."}) + "\n" for i in range(n)))
    return path


def test_samples_land_as_responses_with_their_settings(store, workspace, tmp_path, tiny_model):
    import_file(store, prompts_file(tmp_path, 2), "p")
    runner = Runner(store, workspace)
    run = runner.wait(service.start_generation(runner, "p", model=str(tiny_model), n=3, max_new_tokens=8, seed=7))
    assert run["status"] == "succeeded", run["message"]
    rows = store.query("SELECT prompt_id, model, generation FROM responses ORDER BY rowid")
    assert len(rows) == 6 and len({r["prompt_id"] for r in rows}) == 2
    assert {r["model"] for r in rows} == {str(tiny_model)}
    settings = json.loads(rows[0]["generation"])
    assert (settings["temperature"], settings["max_new_tokens"], settings["seed"], settings["engine"]) == (
        0.8,
        8,
        7,
        "transformers",
    )
    assert settings["finish"] in ("stop", "length")


def test_the_same_seed_gives_the_same_samples(store, workspace, tmp_path, tiny_model):
    import_file(store, prompts_file(tmp_path, 1), "p")
    runner = Runner(store, workspace)
    for _ in range(2):
        assert (
            runner.wait(service.start_generation(runner, "p", model=str(tiny_model), n=2, max_new_tokens=6))["status"]
            == "succeeded"
        )
    assert store.stats()["responses"] <= 2  # the second run's samples are the first's, stored once


@pytest.mark.default_model
def test_the_default_model_samples_through_llama_cpp(store, workspace, tmp_path):
    import_file(store, prompts_file(tmp_path, 1), "p")
    runner = Runner(store, workspace)
    run = runner.wait(service.start_generation(runner, "p", model="default", n=2, max_new_tokens=16))
    assert run["status"] == "succeeded", run["message"]
    rows = store.query("SELECT messages::VARCHAR AS m, generation FROM responses")
    assert len(rows) >= 1 and all(json.loads(r["generation"])["engine"] == "llama.cpp" for r in rows)
    assert any(json.loads(r["m"])[0]["content"].strip() for r in rows)


def test_a_dataset_without_prompts_and_an_unknown_engine_are_refused(store, workspace, tmp_path):
    runner = Runner(store, workspace)
    with pytest.raises(RunError, match="no dataset named 'x'"):
        service.start_generation(runner, "x")
    import_file(store, prompts_file(tmp_path, 1), "p")
    with pytest.raises(RunError, match="unknown engine 'vllm'"):
        service.start_generation(runner, "p", engine="vllm")
    assert store.stats()["runs"] == 0


def test_batched_sampling_resumes_to_the_samples_of_a_straight_run(tmp_path, tiny_model, monkeypatch):
    """Prompts are sampled in batches (n samples each, in one generate call); a run cancelled after
    its first batch and resumed gives exactly the samples of a run that went straight through."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.generate import GenerateConfig, generate
    from pipelines.runlog import RunLog

    rows = [{"prompt_id": f"p{i}", "prompt": json.dumps([{"role": "user", "content": f"Count to {i}."}])}
            for i in range(5)]
    config = GenerateConfig(model=str(tiny_model), engine="transformers", n=3, batch_size=2, max_new_tokens=5,
                            models_dir=str(tmp_path))

    def run(folder, cancel_after_first=False):
        folder.mkdir()
        pq.write_table(pa.Table.from_pylist(rows), folder / "inputs.parquet")
        log = RunLog(folder)
        if cancel_after_first:
            progress = log.progress
            monkeypatch.setattr(log, "progress", lambda *a, **k: (progress(*a, **k),
                                                                  setattr(log, "cancel_requested", True)))
        generate(config, log)
        return log

    run(tmp_path / "straight")
    run(tmp_path / "cut", cancel_after_first=True)
    assert not (tmp_path / "cut" / "responses.parquet").exists()
    generate(config, RunLog(tmp_path / "cut"))
    straight, resumed = (pq.read_table(tmp_path / d / "responses.parquet").to_pylist() for d in ("straight", "cut"))
    assert len(straight) == 15 and [(r["prompt_id"], r["sample"]) for r in straight][:4] == [
        ("p0", 0), ("p0", 1), ("p0", 2), ("p1", 0)]
    assert resumed == straight


def test_llama_cpp_decodes_many_answers_at_once_each_seeded_on_its_own():
    """The default GGUF answers several prompts' samples in one batch: a sample is the same whether
    its prompt shared the batch or not (each has its own seed), the seed repeats it, and an answer
    either ended (the model's end token, not in the text) or was cut at max_tokens."""
    from pipelines.batched_sampling import BatchedSampler
    from pipelines.models import default_gguf_path

    prompts = [[{"role": "user", "content": f"Name a colour ({i})."}] for i in range(3)]
    sampler = BatchedSampler(default_gguf_path(), max_sequences=6, max_tokens=12)
    together = sampler.answer_all(prompts, 2, 0.8, 0.95, seed=3)
    alone = sampler.answer_all(prompts[2:], 2, 0.8, 0.95, seed=3)
    assert [len(g) for g in together] == [2, 2, 2]
    assert [a.text for a in together[2]] == [a.text for a in alone[0]]
    assert [a.text for a in sampler.answer_all(prompts[:1], 2, 0.8, 0.95, seed=4)[0]] != \
        [a.text for a in together[0]]  # another seed, other samples
    for answer in (a for g in together for a in g):
        assert answer.finish in ("stop", "length") and answer.text
        assert answer.finish == "stop" or len(answer.tokens) == 12
        assert "<|im_end|>" not in answer.text
    sampler.close()


def test_top_p_draws_only_from_the_nucleus_and_temperature_zero_is_greedy():
    import numpy as np

    from pipelines.batched_sampling import draw

    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05] + [1e-6] * 1000))
    rng = np.random.default_rng(0)
    drawn = {draw(logits, 1.0, 0.79, rng) for _ in range(300)}
    assert drawn == {0, 1}  # 0.5 + 0.3 (less the tail's 0.1%) reaches 0.79: nothing else
    assert {draw(logits, 1.0, 0.9, rng) for _ in range(300)} == {0, 1, 2}
    assert draw(logits, 0.0, 0.9, rng) == 0


def test_on_a_cpu_with_amx_llama_cpp_loads_without_its_amx_kernels(monkeypatch):
    """ggml's AMX kernels crashed the first decode on an AMX Xeon: there the studio loads models
    with llama.cpp's extra (repacked) buffers off, and answers; elsewhere it leaves them on."""
    import llama_cpp

    from pipelines import chat
    from pipelines.models import default_gguf_path

    monkeypatch.setattr(chat, "_cpu_has_amx", lambda: True)
    llm = chat.load_llama(default_gguf_path(), n_ctx=256, verbose=False)
    assert llm.model_params.use_extra_bufts is False
    reply = llm.create_chat_completion(messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert reply["choices"][0]["finish_reason"] in ("stop", "length")
    assert llama_cpp.llama_model_default_params().use_extra_bufts is True  # the swap lasted one load
    monkeypatch.setattr(chat, "_cpu_has_amx", lambda: False)
    assert chat.load_llama(default_gguf_path(), n_ctx=256, verbose=False).model_params.use_extra_bufts is True


def test_a_model_folder_answers_in_llama_cpp_converted_to_gguf_once(store, workspace, tmp_path, tiny_model):
    import shutil

    folder = tmp_path / "my-model"
    shutil.copytree(tiny_model, folder)
    (folder / "model.safetensors").touch()  # new weights, as far as the GGUF cache can tell: converted afresh
    import_file(store, prompts_file(tmp_path, 2), "p")
    runner = Runner(store, workspace)
    messages = []
    for seed in (0, 1):
        run = runner.wait(service.start_generation(runner, "p", model=str(folder), engine="llama.cpp", n=2,
                                                max_new_tokens=6, seed=seed))
        assert run["status"] == "succeeded", run["message"]
        events = read_events(run['folder'])
        messages.append([e.get("message") or "" for e in events])
    assert any(m.startswith("converting my-model to GGUF (f16) once") for m in messages[0])
    assert not any(m.startswith("converting") for m in messages[1])  # the second run reuses the file
    from pipelines.gguf_cache import cached_path

    cached = cached_path(folder, workspace.models_dir, "f16")
    assert cached.is_file()
    rows = store.query("SELECT generation FROM responses")
    assert rows and {json.loads(r["generation"])["engine"] for r in rows} == {"llama.cpp"}
    # Compare takes the folder too, against the default model's GGUF.
    run = runner.wait(service.start_comparison(runner, str(folder), "default", "p", limit=1, max_tokens=4))
    assert run["status"] == "succeeded", run["message"]
    assert store.dataset_id("p-my-model-vs-default") is not None
    cached.unlink()  # the shared models folder keeps no file of a folder that is gone


def test_an_answer_cut_inside_a_character_loses_its_last_bytes_not_shown_as_replacement_characters():
    from pipelines.batched_sampling import utf8_text

    assert utf8_text("Ça va 🚀".encode()[:-2]) == "Ça va "  # the rocket's first two bytes dropped
    assert utf8_text("naïve".encode()) == "naïve"
    assert utf8_text(b"a\xffb") == "a\ufffdb"  # a bad byte inside stays visible
