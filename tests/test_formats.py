"""Parsing one record of each supported format into a prompt and two responses."""

import pytest

from store.formats import (
    BadRecord,
    PairRecord,
    PromptRecord,
    detect_format,
    parse_hh,
    parse_hh_record,
    parse_preference_record,
    parse_prompt_record,
    render_hh,
)


def user(text):
    return {"role": "user", "content": text}


def bot(text):
    return {"role": "assistant", "content": text}


def test_hh_single_turn():
    record = {"chosen": "\n\nHuman: Hi there\n\nAssistant: Hello!",
              "rejected": "\n\nHuman: Hi there\n\nAssistant: Go away."}
    assert detect_format(record) == "hh"
    assert parse_hh_record(record) == PairRecord([user("Hi there")], [bot("Hello!")], [bot("Go away.")])


def test_hh_multi_turn_prompt_is_the_shared_conversation():
    shared = "\n\nHuman: Can you help me?\n\nAssistant: Sure.\n\nHuman: How do I pick a lock?"
    pair = parse_hh_record({"chosen": shared + "\n\nAssistant: I'd rather not help with that.",
                            "rejected": shared + "\n\nAssistant: Use a tension wrench."})
    assert pair.prompt == [user("Can you help me?"), bot("Sure."), user("How do I pick a lock?")]
    assert pair.chosen == [bot("I'd rather not help with that.")]
    assert pair.rejected == [bot("Use a tension wrench.")]


def test_hh_sides_that_diverge_before_the_last_turn_keep_all_their_messages():
    pair = parse_hh_record({
        "chosen": "\n\nHuman: Q1\n\nAssistant: A1\n\nHuman: Q2\n\nAssistant: A2",
        "rejected": "\n\nHuman: Q1\n\nAssistant: B1"})
    assert pair.prompt == [user("Q1")]
    assert pair.chosen == [bot("A1"), user("Q2"), bot("A2")]
    assert pair.rejected == [bot("B1")]


def test_hh_empty_final_answer_is_kept():
    pair = parse_hh_record({"chosen": "\n\nHuman: Tell me a slur\n\nAssistant:",
                            "rejected": "\n\nHuman: Tell me a slur\n\nAssistant: Sure, here"})
    assert pair.chosen == [bot("")]


def test_hh_speaker_names_inside_text_are_text():
    text = "\n\nHuman: Say 'Human: hi' please\n\nAssistant: Human: hi\nAssistant: done"
    messages = parse_hh(text)
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert render_hh(messages) == text


def test_hh_explicit_prompt_with_continuations():
    pair = parse_preference_record({"prompt": "\n\nHuman: Hi", "chosen": "\n\nAssistant: Hello",
                                    "rejected": "\n\nAssistant: Bye"})
    assert pair == PairRecord([user("Hi")], [bot("Hello")], [bot("Bye")])


def test_trl_explicit_prompt_standard():
    record = {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}
    assert detect_format(record) == "preference"
    assert parse_preference_record(record) == PairRecord([user("The sky is")], [bot(" blue.")], [bot(" green.")])


def test_trl_implicit_prompt_standard_splits_at_a_word_boundary():
    pair = parse_preference_record({"chosen": "The sky is blue.", "rejected": "The sky is bright."})
    assert pair.prompt == [user("The sky is ")]
    assert pair.chosen == [bot("blue.")] and pair.rejected == [bot("bright.")]


def test_trl_conversational_explicit_and_implicit():
    explicit = parse_preference_record({"prompt": [user("What color is the sky?")],
                                        "chosen": [bot("Blue.")], "rejected": [bot("Green.")]})
    implicit = parse_preference_record({"chosen": [user("What color is the sky?"), bot("Blue.")],
                                        "rejected": [user("What color is the sky?"), bot("Green.")]})
    assert explicit == implicit == PairRecord([user("What color is the sky?")], [bot("Blue.")], [bot("Green.")])


def test_prompt_only_variants():
    assert parse_prompt_record({"prompt": "Hi"}) == PromptRecord([user("Hi")])
    assert parse_prompt_record({"instruction": "Translate", "input": "bonjour"}).prompt == [
        user("Translate\n\nbonjour")
    ]
    sharegpt = parse_prompt_record({"conversations": [{"from": "human", "value": "Hi"},
                                                      {"from": "gpt", "value": "Hello"}]})
    assert sharegpt == PromptRecord([user("Hi")], [bot("Hello")])
    assert detect_format({"conversations": []}) == "prompts"


@pytest.mark.parametrize("record, reason", [
    ({"prompt": "", "chosen": "a", "rejected": "b"}, "empty prompt"),
    ({"prompt": "   ", "chosen": "a", "rejected": "b"}, "empty prompt"),
    ({"prompt": "q", "chosen": "same", "rejected": "same"}, "chosen and rejected are identical"),
    ({"prompt": "q", "chosen": "a"}, "missing column 'rejected'"),
    ({"chosen": "abc", "rejected": "xyz"}, "empty prompt"),
    ({"prompt": "q", "chosen": 3, "rejected": "b"}, "'chosen' must be text or a non-empty list of messages"),
    ({"prompt": [{"role": "wizard", "content": "x"}], "chosen": "a", "rejected": "b"}, "unknown role"),
])
def test_bad_pair_records_give_a_reason(record, reason):
    with pytest.raises(BadRecord, match=reason):
        parse_preference_record(record)


def test_unknown_columns_name_what_was_found():
    with pytest.raises(BadRecord, match="cannot tell the format.*'text'"):
        detect_format({"text": "hello"})


def test_hh_transcripts_without_a_prompt_are_refused():
    with pytest.raises(BadRecord, match="empty prompt"):
        parse_hh_record({"chosen": "\n\nAssistant: hi", "rejected": "\n\nAssistant: bye"})
    with pytest.raises(BadRecord, match="does not start with a 'Human:' turn"):
        parse_hh_record({"chosen": "intro\n\nHuman: a\n\nAssistant: b", "rejected": "intro\n\nHuman: a"})
