"""Label tab: one prompt, two responses side by side (order randomised per pair), answered with
buttons or keys 1-4, S and U. Each answer is committed before the next pair is shown.

The handlers are module-level functions of the shared context (`studio.context`), tested without
a browser; `build` and its panels are the layout."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from common.errors import StudioError
from store import Store
from store.labelling import (
    LabelError,
    ServedPair,
    judge_disagreements,
    progress,
    reward_disagreements,
    reward_opinion,
)
from store.models import reward_models as reward_model_rows
from store.queries import dataset_names
from studio import judging, kinds, service
from studio.context import Context, handler
from studio.logins import logged_in, who
from studio.rendering import as_chat, as_markdown, preview

# Button label, element id (the keyboard script clicks it), answer.
ANSWER_BUTTONS = [
    ("1 · Left is better", "label-left", "left"),
    ("2 · Right is better", "label-right", "right"),
    ("3 · Tie", "label-tie", "tie"),
    ("4 · Both bad", "label-both-bad", "both-bad"),
    ("S · Skip", "label-skip", "skip"),
]
# The queue's orders as the Order menu shows them (store.labelling.ORDERS says what each does).
ORDER_CHOICES = [("Fewest labels first, shuffled", "shuffled"),
                 ("Least certain first (reward model)", "uncertain"),
                 ("Reward model vs AI judge disagree first", "disagree")]
ANSWER_WORDS = {"left": "left is better", "right": "right is better", "tie": "tie", "both-bad": "both bad",
                "skip": "skipped"}

# Keys 1-4, S and U click the buttons while the Label tab is shown and no text field has focus.
# After a key, further keys are ignored until the shown pair or the annotator's count changes
# (every answer and undo changes one) or 3 s pass, so a quick double press cannot answer the
# same pair twice.
KEYBOARD_JS = """
<script>
(() => {
  const keys = {"1": "label-left", "2": "label-right", "3": "label-tie", "4": "label-both-bad",
                "s": "label-skip", "u": "label-undo"};
  const text = (id) => (document.getElementById(id) || {}).innerText || "";
  const found = (id, pattern) => (text(id).match(pattern) || [""])[0];
  // Only the count and the pair id: the loading timer Gradio shows in these fields must not count.
  const statusText = () => found("label-status", /: [\\d,]+ of/) + found("label-pair-id", /Pair\\s+\\w+/);
  let pending = null;  // {status, until} of the last key still being answered
  document.addEventListener("keydown", (event) => {
    const id = keys[event.key.toLowerCase()];
    if (!id || event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.target.closest && event.target.closest("input, textarea, select, [contenteditable=true]")) return;
    const button = document.getElementById(id);
    if (!button || button.offsetParent === null || button.disabled) return;
    if (pending && Date.now() < pending.until && statusText() === pending.status) return;
    pending = {status: statusText(), until: Date.now() + 3000};
    event.preventDefault();
    button.click();
  });
})();
</script>
"""


def progress_line(store: Store, dataset: str, annotator: str) -> str:
    p = progress(store, dataset)

    def answered(verdicts: dict) -> int:  # a skip is not a label
        return sum(n for verdict, n in verdicts.items() if verdict != "skip")

    counts = p["annotators"].get(annotator, {})
    skipped = f" ({counts['skip']:,} skipped)" if counts.get("skip") else ""
    others = ", ".join(f"{name} {answered(v):,}" for name, v in p["annotators"].items() if name != annotator)
    return (f"{annotator}: {answered(counts):,} of {p['pairs']:,} pairs labelled{skipped} · labelled by anyone: "
            f"{p['labelled_by_anyone']:,}" + (f" · others: {others}" if others else ""))


def pair_note(store: Store, served: ServedPair, show_reward: bool) -> str:
    """The line under a pair: its id (to find it in the Data tab), the models when known, and,
    when asked for, the newest reward model's scores of the two sides."""
    note = f"Pair `{served.pair_id}`"
    if served.left_model or served.right_model:
        note += f" · left: {served.left_model or 'unknown model'}, right: {served.right_model or 'unknown model'}"
    if show_reward:
        opinion = reward_opinion(store, served.pair_id)
        if opinion is None:
            note += " · no reward model has scored this pair"
        else:
            left, right = (
                (opinion["second"], opinion["first"]) if served.swapped else (opinion["first"], opinion["second"])
            )
            note += (f" · reward model `{opinion['model']}`: left {left:.3f}, right {right:.3f} "
                     f"(prefers {'left' if left > right else 'right'})")
    return note


def disagreement_rows(store: Store, dataset: str | None, reward_model: str | None) -> tuple[str, list[list]]:
    if not dataset or not reward_model:
        return "Pick a dataset and a reward model.", []
    try:
        rows = reward_disagreements(store, dataset, reward_model)
    except LabelError as e:
        return f"*{e}*", []
    return (f"{len(rows):,} pairs of '{dataset}' where `{reward_model}` prefers the other response "
            "(most confident first); search a pair id in the Data tab to open it, or relabel it here.",
            [[r["pair_id"], preview(r["prompt"]), r["verdict"], round(r["margin"], 3)] for r in rows])


def reward_models(store: Store) -> list[str]:
    return [r["name"] for r in reward_model_rows(store)]


def judge_rows(store: Store, dataset: str | None) -> tuple[str, list[list]]:
    """The pairs where an AI judge's label and a person's (or the file's) verdict disagree."""
    if not dataset:
        return "Pick a dataset.", []
    try:
        rows = judge_disagreements(store, dataset)
    except LabelError as e:
        return f"*{e}*", []
    if not rows:
        return (f"No pair of '{dataset}' where an AI judge's label and a person's disagree (label with the judge "
                "first, or no one has labelled its pairs yet).", [])
    return (f"{len(rows):,} pairs of '{dataset}' where an AI judge and people disagree, most contested first; "
            "label them here (people's labels outrank the judge's in training).",
            [[r["pair_id"], preview(r["prompt"]), f"{r['judge']}: {r['judge_verdict']}", r["people"]] for r in rows])


def start_reward_scores(ctx: Context, dataset: str | None, reward_model: str | None) -> str:
    """Score the dataset's answers with the picked reward model, so that the 'uncertain' and
    'disagree' orders can read its scores."""
    if not dataset or not reward_model:
        return "**Pick a dataset and a reward model.**"
    try:
        run_id = service.start_reward_scoring(ctx.runner, dataset, reward_model)
    except StudioError as e:
        return f"**{e}**"
    return (f"Run {run_id} started: `{reward_model}` is scoring the answers of '{dataset}' (the Home tab follows "
            "it); when it is done, the least certain pairs come first.")


def start_judge_labels(ctx: Context, dataset: str | None, judge: str | None) -> str:
    if not dataset or not judge:
        return "**Pick a dataset and a judge model.**"
    try:
        run_id = service.start_judge_labels(ctx.runner, dataset, judge)
    except StudioError as e:
        return f"**{e}**"
    return (f"Run {run_id} started: {kinds.judge_annotator(judging.gguf_models(ctx.store).get(judge, judge))} is "
            f"labelling '{dataset}' (the Home tab follows it); list its disagreements when it is done.")


# --- handlers: each takes the context, and the gr.Request of the browser tab that asks -----------

# What the labelling view shows, in order: the pair shown, the status line, the workbench (shown or
# not), the prompt, the left and the right answer, the note under them.
VIEW = ("current", "status", "workbench", "prompt", "left", "right", "note")


def view(ctx: Context, dataset_name: str, name: str, served: ServedPair | None, said: str, show_rm: bool) -> tuple:
    """The VIEW outputs for showing `served` (or the end of the queue), with `said` before the progress."""
    line = progress_line(ctx.store, dataset_name, name.strip())
    if served is None:
        done = f"No more pairs for **{name.strip()}** in '{dataset_name}' (others may still hold some)."
        return (None, f"{said}{done} {line}", gr.update(visible=False), [], "", "", "")
    return (served, f"{said}{line}", gr.update(visible=True), as_chat(served.prompt),
            f"**Left**\n\n{as_markdown(served.left)}", f"**Right**\n\n{as_markdown(served.right)}",
            pair_note(ctx.store, served, show_rm))


def unchanged(message: str) -> tuple:
    """The VIEW outputs that leave the pair on the screen and say `message`."""
    return (gr.update(), f"**{message}**", gr.update(), gr.update(), gr.update(), gr.update(), gr.update())


def begin(ctx: Context, dataset_name, name, show_rm, order, reward_model, request: gr.Request) -> tuple:
    """The first pair, and the name locked (keys now answer pairs, never type into it): VIEW, then
    the name field and the Change annotator button."""
    if not dataset_name:
        return unchanged("Pick a dataset that has pairs (import one in the Data tab).") + (gr.update(),) * 2
    name = who(name, request)
    try:
        served = ctx.label_queue.next_pair(dataset_name, name, request.session_hash, order, reward_model)
    except LabelError as e:
        return unchanged(str(e)) + (gr.update(),) * 2
    return view(ctx, dataset_name, name, served, "", show_rm) + (
        gr.update(interactive=False), gr.update(visible=not getattr(request, "username", None)))


def change_annotator(ctx: Context, confirmed: bool, request: gr.Request) -> tuple:
    """Asked first (a confirm in the browser): labels given so far stay under the old name."""
    if not confirmed:
        return (gr.update(),) * 9
    if getattr(request, "username", None):
        return (gr.update(), f"**You label as your login, {request.username}.**") + (gr.update(),) * 7
    ctx.label_queue.release(request.session_hash)
    return (None, "Type the new name and start again; the labels given so far stay under the old name.",
            gr.update(visible=False), [], "", "", "", gr.update(interactive=True), gr.update(visible=False))


def answer(ctx: Context, choice: str, dataset_name, name, served: ServedPair | None, show_rm, order, reward_model,
           request: gr.Request) -> tuple:
    """Commit `choice` for the shown pair, then show the next one."""
    if served is None:
        return unchanged("Start labelling first.")
    name = who(name, request)
    try:
        ctx.label_queue.label(request.session_hash, name, served, choice)
        following = ctx.label_queue.next_pair(dataset_name, name, request.session_hash, order, reward_model)
    except LabelError as e:
        return unchanged(str(e))
    return view(ctx, dataset_name, name, following, f"Saved: {ANSWER_WORDS[choice]}. ", show_rm)


def take_back(ctx: Context, dataset_name, name, served: ServedPair | None, show_rm, order, reward_model,
              request: gr.Request) -> tuple:
    name = who(name, request)
    try:
        back = ctx.label_queue.undo(dataset_name, name, request.session_hash)
    except LabelError as e:
        return unchanged(str(e))
    if back is None:
        return unchanged("Nothing to undo.")
    return view(ctx, dataset_name, name, back, "Undone: the last label is taken back. ", show_rm)


def switch_dataset(ctx: Context, request: gr.Request):
    ctx.label_queue.release(request.session_hash)
    return None, gr.update(visible=False)


def release_claims(ctx: Context, request: gr.Request) -> None:  # the browser tab closed
    ctx.label_queue.release(request.session_hash)


def fresh_lists(ctx: Context, picked: str | None, model: str | None):
    """The datasets and reward models as they are now (the page may be older than them)."""
    names, rms = dataset_names(ctx.store, with_pairs=True), reward_models(ctx.store)
    return (gr.update(choices=names, value=picked if picked in names else (names[0] if names else None)),
            gr.update(choices=rms, value=model if model in rms else (rms[0] if rms else None)))


# --- layout --------------------------------------------------------------------------------------

def workbench(ctx: Context, ui: SimpleNamespace) -> None:
    """The dataset and annotator, and the pair with its answer buttons."""
    with_pairs = dataset_names(ctx.store, with_pairs=True)
    with gr.Row(equal_height=True):
        ui.dataset = gr.Dropdown(with_pairs, value=with_pairs[0] if with_pairs else None, label="Dataset", scale=2)
        ui.annotator = gr.Textbox(label="Annotator", placeholder="your name", scale=2, elem_id="label-annotator")
        with gr.Column(scale=1, min_width=160):
            ui.start = gr.Button("Start labelling", variant="primary")
            ui.undo = gr.Button("U · Undo last label", elem_id="label-undo", size="sm")
            ui.rename = gr.Button("Change annotator", size="sm", visible=False, elem_id="label-rename")
    models = reward_models(ctx.store)
    with gr.Row():
        ui.order = gr.Dropdown(ORDER_CHOICES, value="shuffled", label="Order", scale=2, elem_id="label-order",
                               info="which pairs come first; every order serves the pairs with fewest labels first")
        ui.reward_model = gr.Dropdown(models, value=models[0] if models else None, label="Reward model", scale=2,
                                      elem_id="label-reward-model",
                                      info="for the order, the disagreements and the scores under a pair")
        with gr.Column(scale=1, min_width=160):
            ui.score = gr.Button("Score the dataset with it", size="sm", elem_id="label-score")
    ui.status = gr.Markdown("Pick a dataset, type your name and start. Keys: **1** left better, **2** right better, "
                            "**3** tie, **4** both bad, **S** skip, **U** undo.", elem_id="label-status")
    ui.current = gr.State(None)
    with gr.Column(visible=False) as ui.workbench:
        ui.prompt = gr.Chatbot(label="Prompt", height=None, max_height=340, elem_id="label-prompt",
                               buttons=["copy_all"])
        with gr.Row(equal_height=True):
            ui.left = gr.Markdown(elem_id="label-left-text", container=True, min_height=160)
            ui.right = gr.Markdown(elem_id="label-right-text", container=True, min_height=160)
        with gr.Row():
            ui.buttons = [gr.Button(text, elem_id=elem_id,
                                    variant="primary" if choice in ("left", "right") else "secondary")
                          for text, elem_id, choice in ANSWER_BUTTONS]
        ui.note = gr.Markdown(elem_id="label-pair-id")
    ui.show_reward = gr.Checkbox(False, label="Show the reward model's scores under each pair",
                                 info="off by default: seeing them first would sway the label")


def disagreement_panels(ctx: Context, ui: SimpleNamespace) -> None:
    """The pairs a reward model, or an AI judge, sees the other way."""
    with gr.Accordion("Reward model disagreements", open=False):
        gr.Markdown("The labelled pairs where the reward model picked above prefers the other answer.")
        ui.list_disagreements = gr.Button("List", size="sm")
        ui.disagreements_line = gr.Markdown()
        ui.disagreements = gr.Dataframe(headers=["pair", "prompt (last turn)", "preference", "RM margin"],
                                        interactive=False, wrap=True, max_height=360,
                                        column_widths=["24%", "52%", "12%", "12%"])
    with gr.Accordion("Label with an AI judge", open=False):
        gr.Markdown("A GGUF chat model labels the pairs as the annotator `judge:<file>`, asked in both orders (a tie "
                    "where they disagree). People's labels and a file's verdicts outrank its labels in training; "
                    "its disagreements with people are the pairs to look at first.")
        judges = list(judging.gguf_models(ctx.store))
        with gr.Row():
            ui.judge_model = gr.Dropdown(judges, value=judges[0] if judges else None, label="Judge model", scale=3)
            ui.judge_start = gr.Button("Label with the judge", scale=1, size="sm")
            ui.judge_list = gr.Button("List disagreements", scale=1, size="sm")
        ui.judge_line = gr.Markdown()
        ui.judge_table = gr.Dataframe(headers=["pair", "prompt (last turn)", "judge", "people"], interactive=False,
                                      wrap=True, max_height=360, column_widths=["22%", "44%", "17%", "17%"])


def wire(ctx: Context, app: gr.Blocks, tab: gr.Tab, ui: SimpleNamespace) -> None:
    outputs = [getattr(ui, name) for name in VIEW]
    order = [ui.order, ui.reward_model]
    labelling = [ui.dataset, ui.annotator, ui.current, ui.show_reward] + order
    # No progress overlay: the next pair takes a few ms, and a flickering timer would only distract.
    ui.start.click(handler(begin, ctx), [ui.dataset, ui.annotator, ui.show_reward] + order,
                   outputs + [ui.annotator, ui.rename], show_progress="hidden")
    ui.annotator.submit(handler(begin, ctx), [ui.dataset, ui.annotator, ui.show_reward] + order,
                        outputs + [ui.annotator, ui.rename], show_progress="hidden",
                        js="(...args) => { document.activeElement && document.activeElement.blur(); return args; }")
    confirmed = gr.Checkbox(visible=False)
    ui.rename.click(handler(change_annotator, ctx), confirmed, outputs + [ui.annotator, ui.rename],
                    show_progress="hidden",
                    js="() => confirm('Label under another name from now on? The labels given so far keep the old "
                       "name.')")
    for button, (_, _, choice) in zip(ui.buttons, ANSWER_BUTTONS):
        button.click(handler(answer, ctx, choice), labelling, outputs, show_progress="hidden")
    ui.undo.click(handler(take_back, ctx), labelling, outputs, show_progress="hidden")
    ui.show_reward.change(lambda served, show_rm: pair_note(ctx.store, served, show_rm) if served else "",
                          [ui.current, ui.show_reward], ui.note)
    ui.list_disagreements.click(lambda d, m: disagreement_rows(ctx.store, d, m), [ui.dataset, ui.reward_model],
                                [ui.disagreements_line, ui.disagreements])
    ui.score.click(handler(start_reward_scores, ctx), [ui.dataset, ui.reward_model], ui.status)
    ui.judge_start.click(handler(start_judge_labels, ctx), [ui.dataset, ui.judge_model], ui.judge_line)
    ui.judge_list.click(lambda d: judge_rows(ctx.store, d), ui.dataset, [ui.judge_line, ui.judge_table])
    ui.dataset.change(handler(switch_dataset, ctx), None, [ui.current, ui.workbench])
    app.load(handler(logged_in, ctx), None, [ui.annotator, ui.rename])
    tab.select(handler(fresh_lists, ctx), [ui.dataset, ui.reward_model], [ui.dataset, ui.reward_model])
    app.unload(handler(release_claims, ctx))


def build(ctx: Context, app: gr.Blocks, tab: gr.Tab) -> SimpleNamespace:
    ui = SimpleNamespace()
    workbench(ctx, ui)
    disagreement_panels(ctx, ui)
    wire(ctx, app, tab, ui)
    return ui
