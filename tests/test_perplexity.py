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

from helpers import read_events

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
    events = read_events(tmp_path)
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
    assert "scoring 2 of 4 responses" in next(
        e["message"] for e in events[::-1] if "scoring" in (e.get("message") or "")
    )


def model_loss_ppl(model, prompt_ids, response_ids):
    """The model's own loss on prompt + response with the prompt masked out: the plain way."""
    ids = torch.tensor([prompt_ids + response_ids])
    labels = ids.clone()
    labels[0, :len(prompt_ids)] = -100
    with torch.no_grad():
        return math.exp(model(input_ids=ids, labels=labels).loss.item())


def test_prompts_of_different_lengths_evaluated_once_score_as_each_alone(tiny):
    """Several prompts in one batch, each shared by two or three responses (evaluated once, their
    padding between prompt and response), and a one-token prompt: every perplexity is the one the
    model gives the prompt + response on its own."""
    tokenizer, model = tiny
    prompts = [PROMPT, [{"role": "user", "content": "Hi"}],
               [{"role": "user", "content": "Tell me about rivers, " * 12},
                {"role": "assistant", "content": "Which rivers?"}, {"role": "user", "content": "Long ones."}]]
    encoded = [tokenize(tokenizer, p, reply(a)) for p in prompts for a in ANSWERS[:3]]
    batch = [encoded[i] for i in (4, 0, 8, 1, 5, 3, 7, 2, 6)]  # shuffled: groups are found, not assumed
    for (p, r), (nll, n) in zip(batch, response_nll(model, batch, tokenizer.pad_token_id)):
        assert n == len(r) and math.exp(nll / n) == pytest.approx(model_loss_ppl(model, p, r), rel=1e-4)
    one_token = [([p[-1]], r) for p, r in encoded[:3]] + encoded[3:5]  # one pass for all, mixed lengths
    for (p, r), (nll, n) in zip(one_token, response_nll(model, one_token, tokenizer.pad_token_id)):
        assert math.exp(nll / n) == pytest.approx(model_loss_ppl(model, p, r), rel=1e-4)


def test_batches_keep_the_responses_of_a_prompt_together():
    from pipelines.perplexity import batches_by_prompt

    encoded = [(f"r{i}", [1, 2, 3 + i % 4], [5] * (i % 3 + 1)) for i in range(20)]  # 4 prompts, 5 responses each
    batches = batches_by_prompt(encoded, 8)
    assert sorted(e[0] for b in batches for e in b) == sorted(e[0] for e in encoded)
    for b in batches:
        assert len(b) <= 8
        prompts = {tuple(e[1]) for e in b}
        assert all(sum(tuple(e[1]) == p for e in b) == 5 for p in prompts)  # whole groups only
    assert all(len({tuple(e[1]) for e in b}) == 1 for b in batches_by_prompt(encoded, 8, mix_prompts=False))
    big = batches_by_prompt([(str(i), [1, 2], [3]) for i in range(10)], 4)
    assert [len(b) for b in big] == [4, 4, 2]  # a group larger than a batch is cut
