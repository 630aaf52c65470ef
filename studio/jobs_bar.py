"""The jobs bar, above every tab: the workspace's running and waiting jobs of every kind (generation,
scoring, training, evaluation, export, comparison), each with its progress, an estimate once one
exists, and its last message; Cancel, and Open, which takes the job to the tab that follows it. A
reload or a second browser tab shows the same jobs: they are read from the store, every 2 s."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from store.queries import active_jobs, run_row
from studio.context import Context, handler
from studio.kinds import RunError
from studio.loop_map import NextStep
from studio.methods import METHODS

KIND_WORDS = {"generate": "generating candidates", "perplexity": "scoring perplexity",
              "reward-scoring": "scoring with a reward model", "judge-labels": "labelling with an LLM judge",
              "evaluate": "evaluating a policy", "best-of-n": "best-of-N", "benchmark": "running benchmarks",
              "export": "exporting to GGUF",
              "compare": "comparing two models"}
REFRESH_S = 2.0


def progress_words(progress: float | None, eta_s: float | None) -> str:
    """How far a running job is: "starting" until its first step is done (loading the model,
    converting, the first batch: 0% there read as stuck), then its share done and, once there is
    one, the time left."""
    if progress is None or (progress == 0 and eta_s is None):
        return "starting"
    where = f"{progress:.0%}"
    if eta_s is not None and progress < 1:
        minutes = eta_s / 60
        where += f", about {minutes:.0f} min left" if minutes >= 1 else f", about {eta_s:.0f} s left"
    return where


def describe(job: dict) -> str:
    kind = job["kind"]
    what = f"training {METHODS[kind].label}" if kind in METHODS else KIND_WORDS.get(kind, kind)
    where = "waiting to start" if job["status"] == "queued" else progress_words(job["progress"], job["eta_s"])
    message = f" — {job['message']}" if job["message"] else ""
    return f"**run {job['id']}** {what}" + (f" on '{job['dataset']}'" if job["dataset"] else "") + \
        f": {where}{message}"


def bar(ctx: Context, picked):
    """The bar's text, its job menu (the picked job kept while it is active) and whether it shows."""
    jobs = active_jobs(ctx.store)
    if not jobs:
        return "", gr.update(choices=[], value=None), gr.update(visible=False)
    text = "▶ " + "  \n▶ ".join(describe(j) for j in jobs)
    ids = [j["id"] for j in jobs]
    choices = [(f"run {j['id']} · {j['kind']}", j["id"]) for j in jobs]
    return text, gr.update(choices=choices, value=picked if picked in ids else ids[0]), gr.update(visible=True)


def cancel(ctx: Context, run_id) -> str:
    if run_id is None:
        return "Pick a job to cancel."
    try:
        ctx.runner.cancel(int(run_id))
    except RunError as e:
        return str(e)
    return f"Run {run_id}: asked to stop (a training run saves a checkpoint first, and can be resumed)."


def where_followed(ctx: Context, run_id) -> NextStep | None:
    """The tab that follows a job, with it picked there."""
    if run_id is None:
        return None
    run = run_row(ctx.store, int(run_id))
    if not run:
        return None
    kind, dataset = run["kind"], run["dataset"]
    if kind in METHODS or kind in ("evaluate", "best-of-n", "benchmark"):
        return NextStep("train", "", "", {"run": run["id"]})
    if kind == "judge-labels":
        return NextStep("label", "", "", {"dataset": dataset})
    if kind in ("export", "compare"):
        return NextStep(kind, "", "", {})
    return NextStep("build", "", "", {"dataset": dataset})


def build(ctx: Context) -> SimpleNamespace:
    ui = SimpleNamespace()
    text, menu, shown = bar(ctx, None)
    with gr.Row(visible=shown["visible"], elem_id="jobs-bar", equal_height=True) as ui.row:
        ui.text = gr.Markdown(text, elem_id="jobs-bar-text", scale=6)
        ui.job = gr.Dropdown(menu.get("choices", []), value=menu.get("value"), label="Job", scale=1, min_width=160,
                             elem_id="jobs-bar-job")
        ui.open = gr.Button("Open", size="sm", scale=0, min_width=80, elem_id="jobs-bar-open")
        ui.cancel = gr.Button("Cancel", size="sm", variant="stop", scale=0, min_width=80, elem_id="jobs-bar-cancel")
    ui.said = gr.Markdown(elem_id="jobs-bar-said")
    gr.Timer(REFRESH_S).tick(handler(bar, ctx), ui.job, [ui.text, ui.job, ui.row], show_progress="hidden")
    ui.cancel.click(handler(cancel, ctx), ui.job, ui.said)
    return ui
