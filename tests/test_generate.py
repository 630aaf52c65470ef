"""Candidate generation as a job: N samples per prompt, stored with their model and settings."""

import json

import pytest

from store import import_file
from studio import jobs
from studio.runner import RunError, Runner


def prompts_file(tmp_path, n):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Say something about the number {i}."}) + "\n" for i in range(n)))
    return path


def test_samples_land_as_responses_with_their_settings(store, workspace, tmp_path, tiny_model):
    import_file(store, prompts_file(tmp_path, 2), "p")
    runner = Runner(store, workspace)
    run = runner.wait(jobs.start_generation(runner, "p", model=str(tiny_model), n=3, max_new_tokens=8, seed=7))
    assert run["status"] == "succeeded", run["message"]
    rows = store.query("SELECT prompt_id, model, generation FROM responses ORDER BY rowid")
    assert len(rows) == 6 and len({r["prompt_id"] for r in rows}) == 2
    assert {r["model"] for r in rows} == {str(tiny_model)}
    settings = json.loads(rows[0]["generation"])
    assert (settings["temperature"], settings["max_new_tokens"], settings["seed"], settings["engine"]) == (0.8, 8, 7, "transformers")
    assert settings["finish"] in ("stop", "length")


def test_the_same_seed_gives_the_same_samples(store, workspace, tmp_path, tiny_model):
    import_file(store, prompts_file(tmp_path, 1), "p")
    runner = Runner(store, workspace)
    for _ in range(2):
        assert runner.wait(jobs.start_generation(runner, "p", model=str(tiny_model), n=2, max_new_tokens=6))["status"] == "succeeded"
    assert store.stats()["responses"] <= 2  # the second run's samples are the first's, stored once


@pytest.mark.default_model
def test_the_default_model_samples_through_llama_cpp(store, workspace, tmp_path):
    import_file(store, prompts_file(tmp_path, 1), "p")
    runner = Runner(store, workspace)
    run = runner.wait(jobs.start_generation(runner, "p", model="default", n=2, max_new_tokens=16))
    assert run["status"] == "succeeded", run["message"]
    rows = store.query("SELECT messages::VARCHAR AS m, generation FROM responses")
    assert len(rows) >= 1 and all(json.loads(r["generation"])["engine"] == "llama.cpp" for r in rows)
    assert any(json.loads(r["m"])[0]["content"].strip() for r in rows)


def test_a_dataset_without_prompts_and_an_unknown_engine_are_refused(store, workspace, tmp_path):
    runner = Runner(store, workspace)
    with pytest.raises(RunError, match="no dataset named 'x'"):
        jobs.start_generation(runner, "x")
    import_file(store, prompts_file(tmp_path, 1), "p")
    with pytest.raises(RunError, match="unknown engine 'vllm'"):
        jobs.start_generation(runner, "p", engine="vllm")
    assert store.stats()["runs"] == 0
