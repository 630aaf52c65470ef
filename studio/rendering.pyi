"""How prompts and responses look in the tabs: a prompt as a conversation, a response as markdown."""

from __future__ import annotations

import json

import gradio as gr


def as_chat(messages: list[dict]) -> list[dict]:
    """Messages for gr.Chatbot: user and assistant turns as bubbles, a system prompt as a
    collapsed note (Chatbot has no system role)."""
    chat = []
    for m in messages:
        if m["role"] == "system":
            chat.append({"role": "assistant", "content": m["content"], "metadata": {"title": "System prompt"}})
        else:
            chat.append({"role": "user" if m["role"] == "user" else "assistant", "content": m["content"]})
    return chat


def as_markdown(messages: list[dict]) -> str:
    """A response (usually one assistant message) as markdown; an empty one says so."""
    text = "\n\n".join(m["content"] for m in messages if m["content"].strip())
    return text if text else "*(empty response)*"


def preview(messages: list[dict] | str, limit: int = 120) -> str:
    """The last message of a list (JSON text or parsed), on one line, cut to `limit` characters."""
    if isinstance(messages, str):
        messages = json.loads(messages)
    text = " ".join((messages[-1]["content"] if messages else "").split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


# The two responses of a stored pair are A and B everywhere but the Label tab (which shows them in
# random order as left and right). A is the side the file listed first: its preferred one when the
# file came with verdicts.
SIDES_EXPLAINED = ("A and B are a pair's two responses as stored: A is the one its file listed first (the "
                   "preferred one, when the file came with verdicts). The Label tab shows them in random order, "
                   "as left and right, and stores each answer as A or B.")
VERDICT_WORDS = {"first": "A better", "second": "B better", "tie": "tie", "both-bad": "both bad", "skip": "skip",
                 None: ""}

from gradio.events import Dependency

class Slider(gr.Slider):
    """gr.Slider whose number box takes any number typed into it, moved into the range (Gradio's
    own refuses one outside it with an error badge and a "Value -3 is less than minimum" toast).
    A template of gr.Slider: the page draws it as one."""

    is_template = True

    def preprocess(self, payload: float | None) -> float | None:
        if payload is not None:
            payload = min(max(payload, self.minimum), self.maximum)
        return super().preprocess(payload)
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component