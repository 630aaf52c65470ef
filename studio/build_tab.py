"""Build dataset tab: score a dataset's responses by perplexity under a model, pick a threshold
while watching what survives, and save the filtered dataset."""

from __future__ import annotations

import math
from types import SimpleNamespace

import gradio as gr
import pandas as pd

from common.errors import StudioError
from pipelines.perplexity import ENGINE
from store import Store
from store.filtering import FilterError, plan_filter, save_filtered
from store.queries import (
    dataset_names,
    dataset_summaries,
    latest_candidate_job,
    latest_metrics,
    pair_sides,
    response_texts,
)
from studio import service
from studio.context import Context, handler
from studio.jobs_bar import progress_words
from studio.rendering import Slider, preview

METHOD = f"""
**Perplexity filtering.** Each response is scored by its perplexity under the target model:
the prompt is rendered with the model's chat template, and the mean negative log-likelihood is
taken over the response tokens only (its end-of-turn marker included); perplexity = exp(that).
Low perplexity means the model could plausibly have written the response. A pair is kept only if
both its responses pass; a share to keep is taken over each pair's worse side, so 0.5 keeps half
of the pairs. Candidates without a pair are kept if they pass, and new pairs are formed among the
kept ones of each prompt. Scoring runs as a job with the `{ENGINE}` engine (float32 on a CPU,
bf16/fp16 on CUDA).
"""
RULES = ("Keep the most plausible share", "Keep up to a maximum perplexity")
PREVIEW_ROWS = 5
SIDE_COLORS = {"chosen": "#2e7d32", "rejected": "#c62828", "candidate": "#1565c0", "unlabelled": "#8e8e8e",
               "none": "#cccccc"}


HISTOGRAM_BINS = 30


def histogram(scores: list[dict], kept: set[str] | None = None) -> gr.BarPlot:
    """Responses per perplexity bin (log-spaced over all scores) and side; `kept` limits the
    counted responses but not the bins, so before and after share their axis."""
    logs = [math.log10(r["ppl"]) for r in scores]
    low, high = (min(logs), max(logs)) if logs else (0.0, 1.0)
    width = (high - low) / HISTOGRAM_BINS or 1.0
    labels = [f"{10 ** (low + (i + 0.5) * width):,.3g}" for i in range(HISTOGRAM_BINS)]
    counts: dict[tuple[str, str], int] = {}
    for r, value in zip(scores, logs):
        if kept is None or r["response_id"] in kept:
            key = (labels[min(int((value - low) / width), HISTOGRAM_BINS - 1)], r.get("side", "candidate"))
            counts[key] = counts.get(key, 0) + 1
    # Every side, with no responses where it has none: Gradio builds a plot's colour scale from its
    # first data only, so a side missing then would never be drawn.
    frame = pd.DataFrame([{"perplexity": k[0], "side": k[1], "responses": n} for k, n in counts.items()]
                         + [{"perplexity": labels[0], "side": side, "responses": 0} for side in SIDE_COLORS])
    return gr.BarPlot(value=frame, sort=labels)


def with_sides(store: Store, scores: list[dict]) -> list[dict]:
    """Label each scored response as the chosen or rejected side of its pair, or a candidate."""
    verdicts = pair_sides(store, {s["pair_id"] for s in scores if s["pair_id"]})
    for s in scores:
        pair = verdicts.get(s["pair_id"])
        if pair is None:
            s["side"] = "candidate"
        elif pair["source_verdict"] is None:
            s["side"] = "unlabelled"
        else:
            is_first = s["response_id"] == pair["first_id"]
            s["side"] = "chosen" if is_first == (pair["source_verdict"] == "first") else "rejected"
    return scores


def extremes(store: Store, scores: list[dict]) -> tuple[list[list], list[list]]:
    ordered = sorted(scores, key=lambda s: s["ppl"])
    picked = ordered[:PREVIEW_ROWS] + ordered[-PREVIEW_ROWS:]
    texts = response_texts(store, [s["response_id"] for s in picked])

    def row(s):
        t = texts[s["response_id"]]
        return [round(s["ppl"], 2), s["side"], preview(t["prompt"], 160), preview(t["response"], 160) or "(empty)"]

    return [row(s) for s in ordered[:PREVIEW_ROWS]], [row(s) for s in reversed(ordered[-PREVIEW_ROWS:])]


# --- handlers ------------------------------------------------------------------------------------

def plan(ctx: Context, dataset_name, model_name, rule_name, share_value, max_value, per_prompt_value):
    if rule_name == RULES[0]:
        return plan_filter(ctx.store, dataset_name, model_name, keep_quantile=share_value, per_prompt=per_prompt_value)
    return plan_filter(ctx.store, dataset_name, model_name, max_ppl=max_value, per_prompt=per_prompt_value)


def show_filter(ctx: Context, *controls):
    """What the filter would keep: the counts, the plots before and after, the extremes."""
    try:
        p = plan(ctx, *controls)
    except FilterError as e:
        return f"*{e}*", gr.update(visible=False), gr.update(), gr.update(), [], []
    scores = with_sides(ctx.store, p.scores)
    best, worst = extremes(ctx.store, scores)
    return p.summary(), gr.update(visible=True), histogram(scores), histogram(scores, p.kept_responses), best, worst


def start_scoring(ctx: Context, dataset_name, model_name, batch):
    try:
        run_id = service.start_perplexity(ctx.runner, dataset_name, model=model_name, batch_size=int(batch or 8))
    except StudioError as e:  # every error a user can act on, said as a sentence
        return f"**{e}**"
    return f"Run {run_id} started: scoring '{dataset_name}' under '{model_name}'."


def start_candidates(ctx: Context, dataset_name, model_name, n, temperature, tokens, engine):
    if not dataset_name:
        return "**Pick a dataset of prompts first (import one in the Data tab).**"
    if None in (n, temperature, tokens):
        return "**Give every generation setting a number.**"
    try:
        run_id = service.start_generation(ctx.runner, dataset_name, model=(model_name or "").strip() or "default",
                                          n=int(n), temperature=float(temperature), max_new_tokens=int(tokens),
                                          engine=engine or "auto")
    except StudioError as e:  # a bad setting, a dataset without prompts, the same job running
        return f"**{e}**"
    return f"Run {run_id} started: {int(n)} answers to each prompt of '{dataset_name}'."


def job_status(ctx: Context, dataset_name, model_name):
    """The newest scoring run under this model, or candidate generation, whichever is newer."""
    r = latest_candidate_job(ctx.store, model_name)
    if r is None:
        return gr.update()
    latest = latest_metrics(ctx.store, r["id"]) if r["status"] == "running" else {}
    progress = f" {progress_words(latest.get('progress'), latest.get('eta_s'))}" if r["status"] == "running" else ""
    what = "generating candidates" if r["kind"] == "generate" else f"perplexity, {ENGINE}"
    return f"Run {r['id']} ({what}): **{r['status']}**{progress}" + (f" - {r['message']}" if r["message"] else "")


def save_dataset(ctx: Context, name, *controls):
    if not name or not name.strip():
        return "**Give the new dataset a name.**", gr.update()
    try:
        summary = save_filtered(ctx.store, plan(ctx, *controls), name.strip())
    except StudioError as e:  # no pairs kept, a taken or unusable name
        return f"**{e}**", gr.update()
    return f"Saved: {summary}.", gr.update(choices=dataset_names(ctx.store))


# --- layout --------------------------------------------------------------------------------------

def job_panel(ctx: Context, ui: SimpleNamespace) -> None:
    """The dataset, scoring its responses, and generating candidates."""
    datasets = dataset_summaries(ctx.store)
    names = [d["name"] for d in datasets]
    with_pairs = [d["name"] for d in datasets if d["pairs"]]
    gr.Markdown("Build a preference set for your model: sample candidate answers, score them by perplexity, and "
                "keep the plausible ones as pairs to label.")
    with gr.Accordion("How the filter works", open=False):
        gr.Markdown(METHOD)
    with gr.Row():
        ui.dataset = gr.Dropdown(names, value=(with_pairs or names or [None])[0], label="Dataset",
                                 elem_id="build-dataset")
        ui.model = gr.Textbox("default", label="Target model", info="default, a local folder or a hub id")
        ui.batch_size = gr.Number(8, label="Batch size", precision=0)
        ui.score = gr.Button("Score perplexity", variant="primary", elem_id="build-score")
    with gr.Accordion("Generate candidates: answers to the dataset's prompts, to pair and filter", open=False,
                      elem_id="build-generate-box") as ui.generate_box:
        gr.Markdown("For a dataset of prompts (or to add answers to one of pairs): a model writes N answers to "
                    "every prompt, stored as candidates of the dataset. Score them above, and the filter pairs the "
                    "plausible ones of each prompt; label the pairs in the Label tab.")
        with gr.Row():
            ui.generation = [
                gr.Textbox("default", label="Model", info="default, a .gguf file, a folder or a hub id",
                           elem_id="build-gen-model"),
                gr.Number(4, label="Answers per prompt", precision=0, elem_id="build-gen-n"),
                gr.Number(0.8, label="Temperature"),
                gr.Number(256, label="Max tokens", precision=0),
                gr.Dropdown(["auto", "llama.cpp", "transformers"], value="auto", label="Engine",
                            info="llama.cpp runs a model folder too, converted to GGUF once (faster on a CPU); "
                                 "auto: llama.cpp only for GGUF files")]
            ui.generate = gr.Button("Generate candidates", variant="primary", elem_id="build-generate")
    ui.said = gr.Markdown(elem_id="build-said")  # the answer to a click (kept: the status line below refreshes)
    ui.job = gr.Markdown(elem_id="build-job")


def filter_panel(ctx: Context, ui: SimpleNamespace) -> None:
    """The filter's rule, what it keeps, and saving the kept pairs as a dataset."""
    with gr.Row():
        ui.rule = gr.Radio(list(RULES), value=RULES[0], label="Rule")
        ui.share = Slider(0.05, 1.0, value=0.5, step=0.05, label="Share to keep (lowest perplexity first)")
        ui.max_ppl = gr.Number(20.0, label="Maximum perplexity", visible=False)
        ui.per_prompt = gr.Checkbox(False, label="Per prompt", info="apply the share within each prompt")
    ui.counts = gr.Markdown(elem_id="filter-counts")
    with gr.Row(visible=False) as ui.plots:
        ui.before = gr.BarPlot(x="perplexity", y="responses", color="side", x_label_angle=-45,
                               color_map=SIDE_COLORS, label="Before: all scored responses", height=280,
                               elem_id="filter-before")
        ui.after = gr.BarPlot(x="perplexity", y="responses", color="side", x_label_angle=-45, color_map=SIDE_COLORS,
                              label="After: what the filter keeps", height=280, elem_id="filter-after")
    headers, widths = ["perplexity", "side", "prompt (last turn)", "response"], ["14%", "14%", "36%", "36%"]
    with gr.Row():  # side by side where there is room, one above the other in a narrow window
        ui.plausible = gr.Dataframe(headers=headers, label="Most plausible", interactive=False, wrap=True,
                                    column_widths=widths, min_width=480)
        ui.implausible = gr.Dataframe(headers=headers, label="Least plausible", interactive=False, wrap=True,
                                      column_widths=widths, min_width=480)
    with gr.Row():
        ui.into = gr.Textbox(label="New dataset name", placeholder="e.g. hh-plausible")
        ui.save = gr.Button("Save filtered dataset")
    ui.saved = gr.Markdown()


def wire(ctx: Context, app: gr.Blocks, tab: gr.Tab, ui: SimpleNamespace) -> None:
    controls = [ui.dataset, ui.model, ui.rule, ui.share, ui.max_ppl, ui.per_prompt]
    outputs = [ui.counts, ui.plots, ui.before, ui.after, ui.plausible, ui.implausible]
    shown = handler(show_filter, ctx)
    for control in (ui.dataset, ui.rule, ui.per_prompt):
        control.change(shown, controls, outputs)
    ui.share.release(shown, controls, outputs)
    ui.share.input(shown, controls, outputs, trigger_mode="always_last")  # a share typed in its box, Enter or not
    ui.max_ppl.submit(shown, controls, outputs)
    ui.model.submit(shown, controls, outputs)
    ui.rule.change(lambda r: (gr.update(visible=r == RULES[0]), gr.update(visible=r == RULES[1])), ui.rule,
                   [ui.share, ui.max_ppl])
    ui.score.click(handler(start_scoring, ctx), [ui.dataset, ui.model, ui.batch_size], ui.said)
    ui.generate.click(handler(start_candidates, ctx), [ui.dataset, *ui.generation], ui.said)
    gr.Timer(2.0).tick(handler(job_status, ctx), [ui.dataset, ui.model], ui.job, show_progress="hidden")
    ui.job.change(lambda text, *c: show_filter(ctx, *c) if text and "succeeded" in text else (gr.update(),) * 6,
                  [ui.job] + controls, outputs)
    ui.save.click(handler(save_dataset, ctx), [ui.into] + controls, [ui.saved, ui.dataset])
    app.load(shown, controls, outputs)
    tab.select(lambda: gr.update(choices=dataset_names(ctx.store)), outputs=ui.dataset)


def build(ctx: Context, app: gr.Blocks, tab: gr.Tab) -> SimpleNamespace:
    ui = SimpleNamespace()
    job_panel(ctx, ui)
    filter_panel(ctx, ui)
    wire(ctx, app, tab, ui)
    return ui
