"""Judges and the reward model's report card, on examples worked out by hand."""

import math

import pytest

from pipelines.judges import by_reward, by_rule, describe, heuristic_verdict
from pipelines.reward import answer_similarity, describe_card, report_card


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_the_report_card_counts_accuracy_length_bias_and_calibration_as_by_hand():
    rows = [
        # right, the chosen answer is the longer one; confident (sigmoid(2) = 0.88)
        dict(reward_chosen=2.0, reward_rejected=0.0, length_chosen=10, length_rejected=5),
        # wrong: prefers the longer rejected answer (sigmoid(1) = 0.73)
        dict(reward_chosen=0.0, reward_rejected=1.0, length_chosen=3, length_rejected=8),
        # right, the chosen answer is the shorter one (sigmoid(0.5) = 0.62)
        dict(reward_chosen=0.5, reward_rejected=0.0, length_chosen=4, length_rejected=9),
        # a tie on equal lengths: half right, confidence 0.5; the two answers nearly the same
        dict(reward_chosen=1.0, reward_rejected=1.0, length_chosen=6, length_rejected=6, similarity=0.95),
    ]
    card = report_card(rows)
    assert card["pairs"] == 4 and card["accuracy"] == 0.625
    assert card["accuracy_low"] < 0.625 < card["accuracy_high"]
    assert (card["chosen_longer_pairs"], card["accuracy_chosen_longer"]) == (1, 1.0)
    assert (card["chosen_shorter_pairs"], card["accuracy_chosen_shorter"]) == (2, 0.5)
    # Of the 3 pairs of unequal length the RM prefers the longer answer in 2, the labels in 1.
    assert card["rm_prefers_longer"] == pytest.approx(2 / 3) and card["labels_prefer_longer"] == pytest.approx(1 / 3)
    assert [(b["from"], b["pairs"], b["observed"]) for b in card["calibration"]] == \
        [(0.5, 1, 0.5), (0.6, 1, 1.0), (0.7, 1, 0.0), (0.8, 1, 1.0)]
    assert card["calibration"][2]["confidence"] == pytest.approx(sigmoid(1))
    expected_error = (abs(sigmoid(2) - 1) + sigmoid(1) + abs(sigmoid(0.5) - 1) + 0) / 4
    assert card["calibration_error"] == pytest.approx(expected_error)
    assert (card["distinct_pairs"], card["accuracy_distinct"]) == (3, pytest.approx(2 / 3))
    text = "\n".join(describe_card(card))
    assert "near-identical answers (at least 90% alike) in 1 of 4 pairs; accuracy on the other 3: 67%" in text
    assert "accuracy 0.625 on 4 held-out pairs (95% interval" in text
    assert "prefers the longer answer in 67% of pairs, the labels in 33%" in text


def test_answers_that_differ_only_in_case_and_spacing_are_near_identical():
    a = [{"role": "assistant", "content": "Paris is the capital of France."}]
    assert answer_similarity(a, [{"role": "assistant", "content": "paris is  the capital of France."}]) == 1.0
    assert answer_similarity(a, [{"role": "assistant", "content": "I would rather not say."}]) < 0.5


def test_a_reward_judge_gives_a_win_rate_with_its_interval_and_the_mean_gain():
    result = by_reward([1.0, 2.0, 0.0, 3.0], [0.0, 2.0, 1.0, 1.0])
    assert result["win_rate"] == 0.625 and result["n"] == 4  # 2 wins, 1 tie, 1 loss
    assert result["gain"] == pytest.approx(0.5)
    assert result["gain_se"] == pytest.approx(math.sqrt(((0.5) ** 2 + 0.5 ** 2 + 1.5 ** 2 + 1.5 ** 2) / 3 / 4))
    assert result["verdict"] == "no clear difference"  # 4 prompts cannot show a win
    line = describe("proxy", result, "rm-run3")
    assert line.startswith("proxy: the reward model this policy optimised; it cannot tell improvement from reward "
                           "hacking (rm-run3): policy wins 62% of 4 prompts (95% interval")
    assert line.endswith("no clear difference; reward +0.500 ± 0.645")

    # A policy that only got shorter, judged by a reward model that likes short answers: the split
    # by length shows where its wins come from.
    result = by_reward([1.0, 1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0, 0.0], [5, 6, 7, 40, 30], [40, 40, 40, 20, 30])
    split = (result["n_shorter"], result["win_shorter"], result["n_otherwise"], result["win_otherwise"])
    assert split == (3, 1.0, 2, 0.25)
    assert describe("judge", result, "rm-run2").endswith(
        "; by length: wins 100% where the policy answered shorter (3 prompts), 25% elsewhere (2)")


def test_the_rule_judge_applies_the_heuristic_to_each_prompt():
    ended = {"text": "Paris is the capital.", "finish": "stop"}
    cut = {"text": "Paris is the the the", "finish": "length"}
    assert heuristic_verdict(ended, cut) == "first"
    result = by_rule("heuristic", [ended] * 30 + [cut] * 2, [cut] * 30 + [ended] * 2)
    assert result["win_rate"] == 30 / 32 and result["verdict"] == "better" and result["win_low"] > 0.5
    assert "gain" not in result


def test_kl_from_the_base_is_zero_for_an_untrained_adapter_and_never_negative(tiny_model):
    """The KL reported beside the judges: 0 while the adapter changes nothing, positive once it
    does, and the exact KL of the two next-token distributions along the answer (a sampled-token
    estimate came out at -1.59 nats for answers sampled at temperature 0.7)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipelines.evaluate import answer_kl

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    base = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).eval()
    prompt, ids = [{"role": "user", "content": "Hello there"}], [5, 17, 33, 2]
    assert answer_kl(model, tokenizer, prompt, ids, "cpu") == pytest.approx(0.0, abs=1e-6)
    torch.manual_seed(0)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_(0, 0.5)
    kl = answer_kl(model, tokenizer, prompt, ids, "cpu")
    head = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_dict=True)["input_ids"]
    with torch.no_grad():
        p = torch.log_softmax(model(input_ids=torch.tensor([head + ids])).logits[0, len(head) - 1:-1], -1)
        b = torch.log_softmax(base(input_ids=torch.tensor([head + ids])).logits[0, len(head) - 1:-1], -1)
    assert kl > 0 and kl == pytest.approx(float((p.exp() * (p - b)).sum()), rel=1e-4)
