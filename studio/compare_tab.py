"""Compare tab: two GGUF models answer the same conversation side by side, streamed from
llama.cpp with the same sampling. In the blind arena the sides are shuffled and the names hidden
until the vote; every vote is stored as a labelled pair (dataset `arena`), and the leaderboard
rates the models by all labelled comparisons."""

from __future__ import annotations

import random
import time
from types import SimpleNamespace

import gradio as gr

from pipelines.chat import Sampling
from store import Store
from store.arena import ARENA_DATASET, MIN_BATTLES_TO_RANK, leaderboard, record_vote
from store.labelling import LabelError
from store.queries import dataset_names, random_prompt
from studio import judging
from studio.context import Context, handler
from studio.logins import login_field, who
from studio.rendering import Slider, as_chat

VOTE_BUTTONS = [("Left is better", "vote-left", "left"), ("Right is better", "vote-right", "right"),
                ("Tie", "vote-tie", "tie"), ("Both bad", "vote-both-bad", "both-bad")]
LEADERBOARD_COLUMNS = ["model", "rating (95% interval)", "battles", "wins", "losses", "ties", "both bad", "online Elo"]
STREAM_EVERY_S = 0.05  # the page is updated at most this often while answers stream


def side_by_side(left, right):
    """Pieces of two streams in turn, as (side, piece), side 0 or 1, until both end: each model
    runs while the other's piece is shown, so neither waits for the other's whole answer."""
    streams, live = [iter(left), iter(right)], [True, True]
    while any(live):
        for side in (0, 1):
            if live[side]:
                piece = next(streams[side], None)
                if piece is None:
                    live[side] = False
                else:
                    yield side, piece


def leaderboard_rows(store: Store) -> list[list]:
    return [[r["model"], f"{r['rating']:.0f} ({r['rating_low']:.0f}-{r['rating_high']:.0f})"
             + ("" if r["ranked"] else f", fewer than {MIN_BATTLES_TO_RANK} battles: not settled"),
             r["battles"], r["wins"], r["losses"], r["ties"], r["both_bad"], r["elo"]]
            for r in leaderboard(store)]


def new_conversation(model_a: str, model_b: str, blind: bool, history: list[dict] | None = None) -> dict:
    """Which model answers on which side (shuffled when blind) and the conversation so far."""
    left, right = (model_b, model_a) if blind and random.random() < 0.5 else (model_a, model_b)
    history = history or []
    return {"left": left, "right": right, "blind": blind, "sides": [list(history), list(history)],
            "prompt_turns": None, "voted": False}


def chatbots(state: dict | None, left=None, right=None) -> tuple[dict, dict]:
    """Updates for the two chat panes: their conversations (when given) and their titles, which
    name the models unless a blind battle has no vote yet."""
    if state is None:
        titles = ("Left", "Right")
    elif state["blind"] and not state["voted"]:
        titles = ("Left: hidden until you vote", "Right: hidden until you vote")
    else:
        titles = (f"Left: {state['left']}", f"Right: {state['right']}")
    values = (left, right)
    return tuple(gr.update(label=t) if v is None else gr.update(label=t, value=v) for t, v in zip(titles, values))


ONLY_ONE_MODEL = ("Only one model is available ({name}): a model compared with itself differs by sampling noise "
                  "alone. Train a policy (Train tab) and export it (Export tab) to compare it with its base.")


def model_note(models: list[str]) -> str:
    return ONLY_ONE_MODEL.format(name=models[0]) if len(models) == 1 else ""


# --- handlers ------------------------------------------------------------------------------------

def reset(ctx: Context, a, b, is_blind):
    conversation = new_conversation(a, b, is_blind) if a and b else None
    return (conversation, *chatbots(conversation, [], []),
            "Blind arena: the sides are shuffled and the names hidden." if is_blind else "")


def pick_prompt(ctx: Context, a, b, is_blind, dataset):
    messages = random_prompt(ctx.store, dataset)
    if messages is None:
        return gr.update(), gr.update(), gr.update(), gr.update(), "**Pick a dataset that has prompts.**"
    conversation = new_conversation(a, b, is_blind, history=messages[:-1])
    shown = as_chat(messages[:-1])
    return conversation, *chatbots(conversation, shown, shown), messages[-1]["content"], ""


def refused(message: str):
    """Nothing on the screen changes but the status line (the conversation stays)."""
    return gr.update(), gr.update(), gr.update(), gr.update(), f"**{message}**"


def chat_refusal(text, a, b, tokens, conversation, available) -> str | None:
    if not text or not text.strip():
        return "Type a message first."
    if not a or not b:
        return "Pick two models (export one in the Export tab)."
    for name in (conversation["left"], conversation["right"]):
        if name not in available:
            return f"Model '{name}' is not available (its GGUF file is gone?); pick another."
    if tokens is not None and tokens < 1:
        return "Max answer tokens must be at least 1."
    return None


def chat(ctx: Context, text, a, b, is_blind, temp, p, tokens, sample_seed, conversation):
    """Both models answer the message, streamed side by side."""
    available = judging.gguf_models(ctx.store)
    if a and b and (conversation is None or conversation["voted"]):
        conversation = new_conversation(a, b, is_blind, history=None)
    refusal = chat_refusal(text, a, b, tokens, conversation or {"left": a, "right": b}, available)
    if refusal:
        yield refused(refusal)
        return
    sampling = Sampling(float(temp), float(p), int(tokens or 256), int(sample_seed or 0))
    sides = conversation["sides"]
    for messages in sides:
        messages.append({"role": "user", "content": text.strip()})
    if conversation["prompt_turns"] is None:
        conversation["prompt_turns"] = len(sides[0])
    answers = ["", ""]
    streams = [ctx.chat_models.stream(available[conversation[name]], sides[i], sampling, slot=i)
               for i, name in enumerate(("left", "right"))]

    def shown():
        return [as_chat(sides[i] + [{"role": "assistant", "content": answers[i] or "…"}]) for i in (0, 1)]

    yield conversation, *chatbots(conversation, *shown()), "", "Both models are answering…"
    last = time.monotonic()
    for side, piece in side_by_side(*streams):
        answers[side] += piece
        if time.monotonic() - last >= STREAM_EVERY_S:
            last = time.monotonic()
            yield conversation, *chatbots(conversation, *shown()), "", "Both models are answering…"
    for i in (0, 1):
        sides[i].append({"role": "assistant", "content": answers[i]})
    yield (conversation, *chatbots(conversation, as_chat(sides[0]), as_chat(sides[1])), "",
           "Vote below, or send another message to continue both conversations.")


def vote(ctx: Context, answer, name, conversation, request: gr.Request = None):
    name = who(name, request)  # under logins the login, never the name typed
    def unchanged(message: str):  # the conversation stays on the screen
        return conversation, gr.update(), gr.update(), gr.update(), f"**{message}**"

    if conversation is None or conversation["prompt_turns"] is None:
        return unchanged("Send a message first: a vote judges two answers.")
    if conversation["voted"]:
        return unchanged("This conversation has its vote; send a new message to start the next one.")
    turns = conversation["prompt_turns"]
    left_side, right_side = conversation["sides"]
    try:
        record_vote(ctx.store, left_side[:turns], (conversation["left"], left_side[turns:]),
                    (conversation["right"], right_side[turns:]), answer, name)
    except (LabelError, ValueError) as e:
        return unchanged(str(e))
    conversation["voted"] = True
    words = {"left": f"{conversation['left']} (left) is better", "right": f"{conversation['right']} (right) is better",
             "tie": "a tie", "both-bad": "both bad"}[answer]
    return (conversation, *chatbots(conversation), leaderboard_rows(ctx.store),
            f"Vote stored: {words}. Left was **{conversation['left']}**, right was **{conversation['right']}**. "
            "Send a new message for the next battle.")


def refresh(ctx: Context, a, b):
    menu = judging.gguf_choices(ctx.store)
    choices = [name for _, name in menu]
    a = a if a in choices else (choices[0] if choices else None)
    b = b if b in choices else next((m for m in choices if m != a), a)
    return (gr.update(choices=menu, value=a), gr.update(choices=menu, value=b),
            gr.update(choices=dataset_names(ctx.store)), leaderboard_rows(ctx.store), model_note(choices))


# --- layout --------------------------------------------------------------------------------------

def conversation_panel(ctx: Context, ui: SimpleNamespace) -> None:
    """The two models, their sampling, and the two conversations."""
    menu = judging.gguf_choices(ctx.store)  # an export's label says what its quantisation cost
    models = [name for _, name in menu]
    gr.Markdown("Two models answer the same messages with the same sampling, from llama.cpp. In the **blind "
                "arena** the sides are shuffled and the names hidden until you vote; each vote is stored as a "
                f"labelled pair in the dataset `{ARENA_DATASET}`, ready for the next reward model or DPO run.")
    with gr.Row(equal_height=True):
        ui.model_a = gr.Dropdown(menu, value=models[0] if models else None, label="Model A",
                                 elem_id="compare-model-a")
        # two different models by default: the first two listed (the newest export and the next)
        ui.model_b = gr.Dropdown(menu, value=models[1] if len(models) > 1 else (models[0] if models else None),
                                 label="Model B", elem_id="compare-model-b")
        ui.blind = gr.Checkbox(False, label="Blind arena", info="shuffle the sides, hide the names until the vote",
                               elem_id="compare-blind")
    with gr.Accordion("Sampling (the same for both)", open=False):
        with gr.Row():
            ui.sampling = [Slider(0.0, 2.0, value=0.7, step=0.05, label="Temperature"),
                           Slider(0.05, 1.0, value=0.95, step=0.05, label="Top-p"),
                           gr.Number(256, label="Max answer tokens", precision=0),
                           gr.Number(0, label="Seed", precision=0)]
    with gr.Row(equal_height=True):
        ui.left = gr.Chatbot(label="Left", height=420, elem_id="compare-left", buttons=["copy"])
        ui.right = gr.Chatbot(label="Right", height=420, elem_id="compare-right", buttons=["copy"])
    with gr.Row(equal_height=True):
        ui.message = gr.Textbox(placeholder="Type a message for both models, or pick a prompt from a dataset",
                                show_label=False, scale=5, elem_id="compare-input")
        ui.send = gr.Button("Send", variant="primary", scale=1, elem_id="compare-send")
        ui.new = gr.Button("New conversation", scale=1, elem_id="compare-new")
    ui.models = models


def vote_panel(ctx: Context, ui: SimpleNamespace) -> None:
    """Prompts from a dataset, the vote buttons and the leaderboard."""
    with gr.Row():
        datasets = dataset_names(ctx.store)
        ui.prompts_from = gr.Dropdown(datasets, value=datasets[0] if datasets else None, label="Prompts from",
                                      scale=3)
        with gr.Column(scale=1):
            ui.pick = gr.Button("Random prompt from the dataset", size="sm")
        ui.annotator = gr.Textbox("arena", label="Your name (votes are labels)", scale=2, elem_id="vote-annotator")
    with gr.Row():
        ui.votes = [gr.Button(text, elem_id=elem_id, scale=1, size="md") for text, elem_id, _ in VOTE_BUTTONS]
    ui.status = gr.Markdown(model_note(ui.models), elem_id="compare-status")
    with gr.Accordion("Leaderboard", open=True):
        gr.Markdown("Every labelled comparison of two models counts: arena votes and labels given in the Label "
                    "tab on compared pairs. Ratings are a Bradley-Terry fit on the Elo scale (1000 = average, "
                    "+200 = wins about 3 of 4 against it) with a 95% bootstrap interval: two models whose "
                    "intervals overlap are not clearly ranked. Ties and 'both bad' count half a win; online "
                    "Elo (which depends on the order of the votes) is kept for reference.")
        ui.board = gr.Dataframe(leaderboard_rows(ctx.store), headers=LEADERBOARD_COLUMNS, interactive=False,
                                elem_id="leaderboard")
    ui.state = gr.State(None)


def wire(ctx: Context, tab: gr.Tab, ui: SimpleNamespace) -> None:
    chat_inputs = [ui.message, ui.model_a, ui.model_b, ui.blind, *ui.sampling, ui.state]
    chat_outputs = [ui.state, ui.left, ui.right, ui.message, ui.status]
    ui.send.click(handler(chat, ctx), chat_inputs, chat_outputs)
    ui.message.submit(handler(chat, ctx), chat_inputs, chat_outputs)
    for trigger in (ui.new.click, ui.model_a.change, ui.model_b.change, ui.blind.change):
        trigger(handler(reset, ctx), [ui.model_a, ui.model_b, ui.blind], [ui.state, ui.left, ui.right, ui.status])
    ui.pick.click(handler(pick_prompt, ctx), [ui.model_a, ui.model_b, ui.blind, ui.prompts_from],
                  [ui.state, ui.left, ui.right, ui.message, ui.status])
    for button, (_, _, answer) in zip(ui.votes, VOTE_BUTTONS):
        button.click(handler(vote, ctx, answer), [ui.annotator, ui.state],
                     [ui.state, ui.left, ui.right, ui.board, ui.status])
    tab.select(handler(refresh, ctx), [ui.model_a, ui.model_b],
               [ui.model_a, ui.model_b, ui.prompts_from, ui.board, ui.status])


def build(ctx: Context, app: gr.Blocks, tab: gr.Tab) -> SimpleNamespace:
    ui = SimpleNamespace()
    conversation_panel(ctx, ui)
    vote_panel(ctx, ui)
    wire(ctx, tab, ui)
    # Under logins a vote carries the login: the name field shows it and cannot be edited.
    app.load(handler(login_field, ctx), None, ui.annotator)
    return ui
