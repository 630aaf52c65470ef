"""Every model family a user brings (tests/families.py), through every pipeline and the GGUF
round trip: `pytest -m family`. The pipelines run in this process (each as the runner would start
it: its config, its input files, its run folder), so that the matrix costs seconds a family."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from families import FAMILIES, family_model
from helpers import read_events

pytestmark = [pytest.mark.family, pytest.mark.slow]
NAMES = list(FAMILIES)
PROMPTS = ["What is two plus two?", "Name a colour of the sky.", "Say hello to a friend.", "Why is snow white?",
           "Give me one word for happy.", "What do bees make?", "How many legs has a cat?", "Is tea hot?"]


MODELS_DIR = None  # set by the family fixture: the session's models folder


@pytest.fixture(scope="module", params=NAMES)
def family(request, models_dir, default_model_path, tmp_path_factory):
    """(family, model folder, a scratch folder shared by this family's tests)."""
    global MODELS_DIR
    MODELS_DIR = models_dir
    return FAMILIES[request.param], family_model(request.param, models_dir, default_model_path), \
        tmp_path_factory.mktemp(request.param)


def messages(text, role="user"):
    return [{"role": role, "content": text}]


def pair_rows(n=8):
    """Preference records as the runner writes them (message lists as JSON text)."""
    return [{"pair_id": i + 1, "prompt": json.dumps(messages(p)), "chosen": json.dumps(messages(
        f"A short, kind answer to '{p}'", "assistant")), "rejected": json.dumps(messages("no", "assistant")),
        "chosen_side": "first"} for i, p in enumerate(PROMPTS[:n])]


def run_pipeline(run, config, folder: Path, inputs: dict[str, list[dict]]) -> dict:
    """Run a pipeline as the runner would (config.json and inputs in its folder); its last event."""
    from pipelines.runlog import RunLog, save_config

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    if hasattr(config, "models_dir"):  # the tests' models folder (caches, the default model), not ./models
        config.models_dir = str(MODELS_DIR)
    for name, rows in inputs.items():
        pq.write_table(pa.Table.from_pylist(rows), folder / name)
    save_config(config, folder / "config.json")
    run(config, RunLog(folder))
    return read_events(folder)[-1]


def test_a_family_base_passes_the_checks_and_can_be_exported(family):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipelines.bases import check_base, gguf_readiness
    from pipelines.models import end_ids, load_tokenizer

    spec, folder, _ = family
    check_base(folder)
    assert gguf_readiness(folder, MODELS_DIR) is None  # cached in the models folder: the export asks again
    tokenizer = load_tokenizer(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    wanted = {tokenizer.convert_tokens_to_ids(t) for t in spec.ends}
    assert wanted <= set(end_ids(model, tokenizer))  # every end id of generation_config ends an answer
    # The template's BOS is the only one: the pipelines tokenise rendered text without adding another.
    text = tokenizer.apply_chat_template(messages("Hi"), tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if spec.bos and spec.bos in text:
        assert ids.count(tokenizer.convert_tokens_to_ids(spec.bos)) == 1
    assert tokenizer.pad_token_id is not None
    AutoTokenizer.from_pretrained(folder)  # and it loads as a user's would


def test_perplexity_is_the_models_own_loss_on_the_response_tokens(family):
    import torch
    from transformers import AutoModelForCausalLM

    from pipelines.models import load_tokenizer
    from pipelines.perplexity import response_nll, tokenize

    spec, folder, _ = family
    tokenizer = load_tokenizer(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    prompt = [{"role": "system", "content": "Be brief."}, *messages("What is two plus two?")]
    batch = [tokenize(tokenizer, prompt, messages(answer, "assistant")) for answer in ("Four.", "It is 4, I think.")]
    scores = response_nll(model, batch, tokenizer.pad_token_id)
    for (head, tail), (nll, count) in zip(batch, scores):
        assert count == len(tail)
        ids = torch.tensor([head + tail])
        labels = ids.clone()
        labels[0, :len(head)] = -100
        with torch.no_grad():
            loss = model(input_ids=ids, labels=labels).loss.item()  # soft-capping and all, as the model computes it
        assert math.isclose(nll / count, loss, rel_tol=1e-4)
        assert spec.turn_end in tokenizer.decode(tail)  # the answer's end-of-turn is scored too


def test_candidates_are_generated_and_end_at_an_end_id(family):
    from pipelines.generate import GenerateConfig
    from pipelines.generate import generate as run

    spec, folder, scratch = family
    config = GenerateConfig(model=str(folder), engine="transformers", n=2, max_new_tokens=6, seed=0, batch_size=2)
    final = run_pipeline(run, config, scratch / "generate", {config.inputs: [
        {"prompt_id": f"p{i}", "prompt": json.dumps(messages(p))} for i, p in enumerate(PROMPTS[:2])]})
    assert final["status"] == "succeeded", final
    rows = pq.read_table(scratch / "generate" / config.output).to_pylist()
    assert len(rows) == 4
    for row in rows:  # no end-of-turn marker or special token is left in an answer's text
        assert spec.turn_end not in json.loads(row["response"])[0]["content"]


@pytest.fixture(scope="module")
def reward_adapter(family):
    """A reward model trained two steps on the family's base; its adapter folder."""
    from pipelines.reward import RewardTrainConfig, run

    spec, folder, scratch = family
    config = RewardTrainConfig(base=str(folder), max_steps=2, batch_size=2, max_length=128, lora_r=4, lora_alpha=8,
                               eval_share=0.25, learning_rate=1e-2)
    final = run_pipeline(run, config, scratch / "rm", {config.inputs: pair_rows()})
    assert final["status"] == "succeeded", final
    return scratch / "rm" / config.output


def test_a_reward_model_reloads_with_the_scores_it_was_evaluated_with(family, reward_adapter):
    from pipelines.models import choose_placement
    from pipelines.reward import HELD_OUT_SCORES
    from pipelines.reward_model import load_reward_model, score

    scored = pq.read_table(reward_adapter.parent / HELD_OUT_SCORES).to_pylist()
    pairs = {r["pair_id"]: r for r in pair_rows()}
    tokenizer, model = load_reward_model(reward_adapter, choose_placement("cpu"))
    for row in scored:
        pair = pairs[row["pair_id"]]
        chosen, rejected = score(tokenizer, model, [json.loads(pair["prompt"]) + json.loads(pair["chosen"]),
                                                    json.loads(pair["prompt"]) + json.loads(pair["rejected"])])
        assert chosen == pytest.approx(row["reward_chosen"], abs=1e-4)
        assert rejected == pytest.approx(row["reward_rejected"], abs=1e-4)


@pytest.fixture(scope="module")
def dpo_adapter(family):
    from pipelines.dpo import DPOTrainConfig, run

    spec, folder, scratch = family
    config = DPOTrainConfig(base=str(folder), max_steps=2, batch_size=2, max_length=128, lora_r=4, lora_alpha=8,
                            eval_share=0.25, learning_rate=5e-2)
    final = run_pipeline(run, config, scratch / "dpo", {config.inputs: pair_rows()})
    assert final["status"] == "succeeded", final
    return scratch / "dpo" / config.output


def test_dpo_trains_a_policy_that_merges(family, dpo_adapter):
    from pipelines.reward_model import read_meta

    assert read_meta(dpo_adapter)["kind"] == "policy"


def test_sft_trains_on_the_preferred_answers(family):
    """SFT through the family's own chat template: the loss on the assistant's tokens only."""
    from pipelines.sft import SFTTrainConfig, run

    spec, folder, scratch = family
    config = SFTTrainConfig(base=str(folder), max_steps=1, batch_size=4, max_length=128, lora_r=4, lora_alpha=8,
                            eval_share=0.25)
    last = run_pipeline(run, config, scratch / "sft", {config.inputs: pair_rows()})
    assert last["status"] == "succeeded", last.get("message")


def test_kto_trains(family):
    from pipelines.kto import KTOTrainConfig, run

    spec, folder, scratch = family
    rows = [{"pair_id": r["pair_id"], "prompt": r["prompt"], "completion": r[side], "label": side == "chosen"}
            for r in pair_rows() for side in ("chosen", "rejected")]
    config = KTOTrainConfig(base=str(folder), max_steps=2, batch_size=4, max_length=128, lora_r=4, lora_alpha=8,
                            eval_share=0.25)
    assert run_pipeline(run, config, scratch / "kto", {config.inputs: rows})["status"] == "succeeded"


def test_orpo_trains(family):
    from pipelines.orpo import ORPOTrainConfig, run

    spec, folder, scratch = family
    config = ORPOTrainConfig(base=str(folder), max_steps=2, batch_size=2, max_length=128, lora_r=4, lora_alpha=8,
                             eval_share=0.25)
    assert run_pipeline(run, config, scratch / "orpo", {config.inputs: pair_rows()})["status"] == "succeeded"


@pytest.mark.parametrize("method", ["ppo", "grpo", "rloo"])
def test_online_methods_train_against_the_reward_model(family, reward_adapter, method):
    from pipelines import grpo, ppo, rloo

    spec, folder, scratch = family
    prompts = [{"prompt_id": f"p{i}", "prompt": json.dumps(messages(p))} for i, p in enumerate(PROMPTS[:4])]
    common = dict(base=str(folder), reward_adapter=str(reward_adapter), max_new_tokens=8, lora_r=4, lora_alpha=8,
                  max_length=128)
    if method == "ppo":
        config, run = (
            ppo.PPOTrainConfig(**common, max_steps=1, batch_size=4, mini_batch_size=2, ppo_epochs=1),
            ppo.train,
        )
    else:
        config = grpo.OnlineTrainConfig(**common, max_steps=1, batch_size=4, num_generations=2, num_iterations=1)
        run = grpo.run if method == "grpo" else rloo.run
    final = run_pipeline(run, config, scratch / method, {config.inputs: prompts})
    assert final["status"] == "succeeded", final


def test_a_policy_is_judged_against_its_base(family, dpo_adapter):
    from pipelines.evaluate import EvaluateConfig, run

    spec, folder, scratch = family
    config = EvaluateConfig(policy_adapter=str(dpo_adapter), rule="heuristic", max_new_tokens=8)
    prompts = [{"prompt_id": f"p{i}", "prompt": json.dumps(messages(p))} for i, p in enumerate(PROMPTS[:4])]
    final = run_pipeline(run, config, scratch / "evaluate", {config.inputs: prompts})
    assert final["status"] == "succeeded", final
    assert final["message"]


# The GGUF round trip: llama.cpp's logits against the merged model's, per file.
LOGIT_TOLERANCE = {"f16": 0.01, "q8_0": 0.05}  # largest difference as a share of the logits' range
PROMPTS_DIFFER_IN_LLAMA_CPP = {"phi3"}



def test_a_policy_exports_to_gguf_that_llama_cpp_loads_and_that_matches_it(family, dpo_adapter):
    from pipelines.chat import load_llama
    from pipelines.export import REPORT, ExportConfig, run

    spec, folder, scratch = family
    config = ExportConfig(name=spec.name, adapter=str(dpo_adapter), quants=["f16", "q8_0"])
    final = run_pipeline(run, config, scratch / "export", {})
    assert final["status"] == "succeeded", final
    report = json.loads((scratch / "export" / REPORT).read_text())
    for f in report["files"]:
        assert f["tokens_agree"], f
        assert f["relative_diff"] <= LOGIT_TOLERANCE[f["quant"]], f
        if f["quant"] == "f16":
            assert f["argmax_agrees"]
        modelfile = Path(f["modelfile"]).read_text()
        assert f'PARAMETER stop "{spec.turn_end}"' in modelfile.splitlines()
        assert 'TEMPLATE """' in modelfile
    # llama.cpp writes a chat prompt with the GGUF's template in the very tokens the studio trained on
    # (one BOS where the template and the tokenizer would each add one) - except Phi-3's, where
    # llama.cpp adds a BOS its template does not write and a SentencePiece space after each special
    # token: the export says so in its message.
    prompts_agree = [f["prompt_tokens_agree"] for f in report["files"]]
    if spec.name in PROMPTS_DIFFER_IN_LLAMA_CPP:
        assert prompts_agree == [False] * len(prompts_agree)
        assert "llama.cpp writes this model's chat prompts in other tokens than it was trained on" in final["message"]
    else:
        assert all(prompts_agree) and "note:" not in final["message"]
    # Compare answers from the export: llama.cpp chats with it through its own chat template.
    llm = load_llama(report["files"][-1]["path"], n_ctx=256, verbose=False)
    reply = llm.create_chat_completion(messages=messages("Hi"), max_tokens=4, temperature=0.0)
    assert reply["choices"][0]["finish_reason"] in ("stop", "length")
