"""The perplexity scorer: response tokens only, given the prompt under the chat template."""

import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipelines.perplexity import PerplexityConfig, render, response_nll, score, tokenize
from pipelines.runlog import RunLog

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]
ANSWERS = ["Paris.", "The capital of France is Paris, a city on the Seine.", "",
           "I think it might be Lyon, but I am not sure at all."]


@pytest.fixture(scope="module")
def tiny(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    return tokenizer, model


def reply(text):
    return [{"role": "assistant", "content": text}]


def test_the_chat_template_is_applied_and_prompt_tokens_are_not_counted(tiny):
    tokenizer, _ = tiny
    head, tail = render(tokenizer, PROMPT, reply("Paris."))
    assert head.endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    assert tail == "Paris.<|im_end|>\n"
    prompt_ids, response_ids = tokenize(tokenizer, PROMPT, reply("Paris."))
    assert tokenizer.decode(response_ids) == "Paris.<|im_end|>\n"
    longer_prompt = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    assert tokenize(tokenizer, longer_prompt, reply("Paris."))[1] == response_ids


def test_perplexity_is_exp_of_the_mean_nll_of_response_tokens(tiny):
    tokenizer, model = tiny
    prompt_ids, response_ids = tokenize(tokenizer, PROMPT, reply(ANSWERS[1]))
    (nll, n), = response_nll(model, [(prompt_ids, response_ids)], tokenizer.pad_token_id)
    # Independently: the model's own loss with the prompt masked out of the labels.
    ids = torch.tensor([prompt_ids + response_ids])
    labels = ids.clone()
    labels[0, :len(prompt_ids)] = -100
    with torch.no_grad():
        loss = model(input_ids=ids, labels=labels).loss.item()
    assert n == len(response_ids)
    assert math.exp(nll / n) == pytest.approx(math.exp(loss), rel=1e-4)


def test_padding_and_batch_order_do_not_change_a_score(tiny):
    tokenizer, model = tiny
    encoded = [tokenize(tokenizer, PROMPT, reply(a)) for a in ANSWERS]
    alone = [response_nll(model, [e], tokenizer.pad_token_id)[0] for e in encoded]
    batched = response_nll(model, encoded[::-1], tokenizer.pad_token_id)[::-1]
    for (a, n1), (b, n2) in zip(alone, batched):
        assert n1 == n2 and a == pytest.approx(b, rel=1e-4)


def run_pipeline(tmp_path, tiny_model, rows, **config):
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "inputs.parquet")
    config = PerplexityConfig(model=str(tiny_model), models_dir=str(tmp_path), **config)
    score(config, RunLog(tmp_path))
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    return {r["response_id"]: r for r in pq.read_table(tmp_path / "perplexities.parquet").to_pylist()}, events


def test_empty_and_over_long_responses(tmp_path, tiny_model):
    rows = [{"response_id": str(i), "prompt": json.dumps(PROMPT), "response": json.dumps(reply(a))}
            for i, a in enumerate(["", "Paris.", "word " * 200])]
    scores, events = run_pipeline(tmp_path, tiny_model, rows, max_length=100)
    assert scores["0"]["n_tokens"] == 2 and scores["0"]["ppl"] > 0  # the end-of-turn marker is still scored
    assert scores["1"]["ppl"] > 0 and scores["1"]["skipped"] is None
    assert scores["2"]["ppl"] is None and "over max_length 100" in scores["2"]["skipped"]
    assert events[-1]["status"] == "succeeded" and events[-1]["metrics"]["skipped"] == 1


def test_a_resumed_run_scores_only_what_is_left(tmp_path, tiny_model):
    rows = [{"response_id": str(i), "prompt": json.dumps(PROMPT), "response": json.dumps(reply(a))}
            for i, a in enumerate(ANSWERS)]
    first, _ = run_pipeline(tmp_path, tiny_model, rows[:2])
    # A second run over all four rows in the same folder keeps the two already scored.
    second, events = run_pipeline(tmp_path, tiny_model, rows)
    assert {k: second[k] for k in first} == first
    assert "scoring 2 of 4 responses" in next(e["message"] for e in events[::-1] if "scoring" in (e.get("message") or ""))
