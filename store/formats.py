"""Turn one record of an imported file into a normalised pair or prompt.

Everything here is pure Python on already-decoded records (dicts), so it can be tested without
files or a database. A record that cannot be used raises `BadRecord` with a reason a user can act
on; the reader that called us adds the file and line.

Conversations are lists of ``{"role": ..., "content": ...}`` messages. A pair is a prompt (the
conversation up to and including the last shared user turn) and two responses (the messages that
follow it on each side; usually one assistant message, several where the sides diverge earlier).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

Messages = list[dict]

FORMATS = ("auto", "preference", "hh", "prompts", "demonstrations")
ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant",
         "gpt": "assistant", "bot": "assistant", "model": "assistant", "chatgpt": "assistant"}


class BadRecord(ValueError):
    """A record that cannot be imported; the message is the reason shown to the user."""


@dataclass(frozen=True)
class PairRecord:
    prompt: Messages
    chosen: Messages
    rejected: Messages


@dataclass(frozen=True)
class PromptRecord:
    prompt: Messages
    reference: Messages | None = None  # an answer that came with the prompt, kept as a response


# --- HH-RLHF transcripts ---------------------------------------------------------------------

# A turn starts with a blank line and the speaker; "Human:" elsewhere in a line is just text.
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLE = {"Human": "user", "Assistant": "assistant"}


def looks_like_hh(text: object) -> bool:
    return isinstance(text, str) and text.startswith("\n\nHuman:")


def parse_hh(text: str) -> Messages:
    """Split a ``\\n\\nHuman: ...\\n\\nAssistant: ...`` transcript into messages.

    The single space after the speaker's colon belongs to the marker; anything else is content,
    so `render_hh(parse_hh(t)) == t` for every well-formed transcript (the import tests check it
    on real data).
    """
    if text.startswith("Human:"):
        text = "\n\n" + text
    marks = list(_HH_TURN.finditer(text))
    if not marks or marks[0].start() != 0:
        raise BadRecord("transcript does not start with a 'Human:' turn")
    messages = []
    for mark, following in zip(marks, marks[1:] + [None]):
        content = text[mark.end(): following.start() if following else len(text)]
        if content.startswith(" "):
            content = content[1:]
        messages.append({"role": _HH_ROLE[mark.group(1)], "content": content})
    return messages


def render_hh(messages: Messages) -> str:
    out = []
    for m in messages:
        speaker = "Human" if m["role"] == "user" else "Assistant"
        out.append(f"\n\n{speaker}:" + (f" {m['content']}" if m["content"] else ""))
    return "".join(out)


# --- helpers -----------------------------------------------------------------------------------

def _messages(value: object, column: str) -> Messages:
    """Validate a list of chat messages (OpenAI or ShareGPT keys) and normalise roles."""
    if not isinstance(value, list) or not value:
        raise BadRecord(f"'{column}' must be text or a non-empty list of messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise BadRecord(f"'{column}'[{i}] is not a message object")
        role = m.get("role", m.get("from"))
        content = m.get("content", m.get("value"))
        if not isinstance(role, str) or role.lower() not in ROLES:
            raise BadRecord(f"'{column}'[{i}] has unknown role {role!r}")
        if not isinstance(content, str):
            raise BadRecord(f"'{column}'[{i}] has no text content")
        out.append({"role": ROLES[role.lower()], "content": content})
    return out


def _text(record: dict, column: str) -> str:
    value = record.get(column)
    if value is None:
        raise BadRecord(f"missing column '{column}'")
    if not isinstance(value, str):
        raise BadRecord(f"'{column}' must be text, got {type(value).__name__}")
    return value


def _check_prompt(prompt: Messages) -> Messages:
    if not any(m["role"] == "user" and m["content"].strip() for m in prompt):
        raise BadRecord("empty prompt")
    return prompt


def _check_pair(prompt: Messages, chosen: Messages, rejected: Messages) -> PairRecord:
    _check_prompt(prompt)
    if chosen == rejected:
        raise BadRecord("chosen and rejected are identical")
    return PairRecord(prompt, chosen, rejected)


def split_shared_prompt(chosen: Messages, rejected: Messages) -> PairRecord:
    """Prompt = the shared conversation up to its last user turn; the rest is each side's answer."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    last_user = max((i for i in range(shared) if chosen[i]["role"] == "user"), default=None)
    if last_user is None:
        raise BadRecord("empty prompt: the two sides share no user turn")
    cut = last_user + 1
    return _check_pair(chosen[:cut], chosen[cut:], rejected[cut:])


def _split_text_prompt(chosen: str, rejected: str) -> PairRecord:
    """Implicit prompt in plain text (TRL): the common prefix, backed off to a word boundary."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    while n > 0 and not chosen[n - 1].isspace():
        n -= 1
    prompt = [{"role": "user", "content": chosen[:n]}]
    return _check_pair(prompt, [{"role": "assistant", "content": chosen[n:]}],
                       [{"role": "assistant", "content": rejected[n:]}])


# --- the formats --------------------------------------------------------------------------------

def detect_format(record: dict) -> str:
    if "chosen" in record or "rejected" in record:
        sides = (record.get("chosen"), record.get("rejected"), record.get("prompt"))
        return "hh" if any(looks_like_hh(s) for s in sides) else "preference"
    if "completion" in record:
        return "demonstrations"
    if any(k in record for k in ("prompt", "instruction", "conversations", "messages")):
        return "prompts"
    raise BadRecord("cannot tell the format: expected columns 'chosen'/'rejected' (pairs) or "
                    "'prompt', 'instruction', 'conversations' or 'messages' (prompts); found "
                    + ", ".join(repr(k) for k in list(record)[:8]))


def parse_hh_record(record: dict) -> PairRecord:
    """HH-RLHF: whole transcripts, or (explicit prompt) a transcript prompt plus continuations."""
    chosen, rejected = _text(record, "chosen"), _text(record, "rejected")
    prompt = record.get("prompt") or ""
    if not isinstance(prompt, str):
        raise BadRecord("'prompt' must be text in HH format")
    return split_shared_prompt(parse_hh(prompt + chosen), parse_hh(prompt + rejected))


def parse_preference_record(record: dict) -> PairRecord:
    """TRL's preference formats: explicit or implicit prompt, plain text or conversational;
    rows in HH-RLHF transcript form are accepted too (a TRL plain-text export writes multi-turn
    prompts that way)."""
    if looks_like_hh(record.get("prompt")) or looks_like_hh(record.get("chosen")):
        return parse_hh_record(record)
    for column in ("chosen", "rejected"):
        if record.get(column) is None:
            raise BadRecord(f"missing column '{column}'")
    chosen, rejected, prompt = record["chosen"], record["rejected"], record.get("prompt")
    if prompt is None:
        if isinstance(chosen, str) and isinstance(rejected, str):
            return _split_text_prompt(chosen, rejected)
        return split_shared_prompt(_messages(chosen, "chosen"), _messages(rejected, "rejected"))
    if isinstance(prompt, str):
        prompt_messages = [{"role": "user", "content": prompt}]
    else:
        prompt_messages = _messages(prompt, "prompt")

    def answer(value: object, column: str) -> Messages:
        if isinstance(value, str):
            return [{"role": "assistant", "content": value}]
        return _messages(value, column)

    return _check_pair(prompt_messages, answer(chosen, "chosen"), answer(rejected, "rejected"))


def parse_prompt_record(record: dict) -> PromptRecord:
    """Prompt-only sets: prompt / instruction(+input) / ShareGPT conversations / messages."""
    if "instruction" in record:
        text = _text(record, "instruction")
        extra = record.get("input")
        if isinstance(extra, str) and extra.strip():
            text = f"{text}\n\n{extra}"
        reference = record.get("output")
        return PromptRecord(_check_prompt([{"role": "user", "content": text}]),
                            [{"role": "assistant", "content": reference}]
                            if isinstance(reference, str) and reference else None)
    if "prompt" in record:
        value = record["prompt"]
        if isinstance(value, str):
            return PromptRecord(_check_prompt([{"role": "user", "content": value}]))
        if value is None:
            raise BadRecord("empty prompt")
        return PromptRecord(_check_prompt(_messages(value, "prompt")))
    column = "conversations" if "conversations" in record else "messages"
    chat = _messages(record.get(column), column)
    last_user = max((i for i, m in enumerate(chat) if m["role"] == "user"), default=None)
    if last_user is None:
        raise BadRecord("empty prompt: the conversation has no user turn")
    rest = chat[last_user + 1:]
    return PromptRecord(_check_prompt(chat[:last_user + 1]), rest or None)


def _check_turns(chat: Messages, column: str) -> None:
    """An optional system turn, then user and assistant turns in turn."""
    roles = [m["role"] for m in chat]
    body = roles[1:] if roles[:1] == ["system"] else roles
    if body != (["user", "assistant"] * len(body))[:len(body)]:
        raise BadRecord(f"'{column}': roles out of order ({', '.join(roles)}); a conversation is an optional system "
                        "turn, then user and assistant turns in turn")


def parse_demonstration_record(record: dict) -> PromptRecord:
    """A demonstration: a prompt and the answer to learn (SFT). `prompt` and `completion` (text or
    messages), `instruction` (+ `input`) and `output`, or a `messages` / `conversations`
    conversation ending on the assistant's answer (every assistant turn of it is trained)."""
    if "completion" in record:
        prompt, completion = record.get("prompt"), record.get("completion")
        if prompt is None or (isinstance(prompt, str) and not prompt.strip()):
            raise BadRecord("empty prompt")
        prompt_messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else \
            _messages(prompt, "prompt")
        if completion is None or (isinstance(completion, str) and not completion.strip()):
            raise BadRecord("empty completion: a demonstration needs the answer to learn")
        answer = [{"role": "assistant", "content": completion}] if isinstance(completion, str) else \
            _messages(completion, "completion")
        _check_turns(prompt_messages + answer, "prompt + completion")
        if answer[-1]["role"] != "assistant":
            raise BadRecord("the completion ends on a user turn, not on an answer to learn")
        return PromptRecord(_check_prompt(prompt_messages), answer)
    if "instruction" in record and not (isinstance(record.get("output"), str) and record["output"].strip()):
        raise BadRecord("empty output: a demonstration needs the answer to learn")
    item = parse_prompt_record(record)
    if item.reference is None:
        raise BadRecord("the conversation ends on a user turn, not on an answer to learn")
    _check_turns(item.prompt + item.reference, "conversations" if "conversations" in record else "messages")
    if not item.reference[-1]["content"].strip():
        raise BadRecord("empty answer: the conversation's last assistant turn has no text")
    return item


PARSERS = {"preference": parse_preference_record, "hh": parse_hh_record,
           "prompts": parse_prompt_record, "demonstrations": parse_demonstration_record}
