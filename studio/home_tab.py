"""Home tab: what the workspace holds, its datasets, and its runs (live, with cancel/resume)."""

from __future__ import annotations

import html

import gradio as gr

from pipelines.models import DEFAULT_DESCRIPTION
from store import Store
from store.queries import dataset_summaries, run_summaries
from studio.runner import RunError, Runner
from studio.workspace import Workspace

RUN_COLUMNS = ["run", "kind", "status", "progress", "message", "started", "finished"]


def stat_cards(store: Store) -> str:
    cards = "".join(
        f'<div class="stat-card"><div class="stat-value" data-stat="{name}">{count:,}</div>'
        f'<div class="stat-name">{name}</div></div>'
        for name, count in store.stats().items())
    return f'<div class="stat-cards">{cards}</div>'


def datasets_table(store: Store) -> list[list]:
    return [[d["name"], d["pairs"], d["prompts"], str(d["created_at"])[:19]] for d in dataset_summaries(store)]


def runs_table(store: Store) -> list[list]:
    rows = []
    for r in run_summaries(store, limit=50):
        progress = r["metrics"].get("progress")
        rows.append([r["id"], r["kind"], r["status"],
                     f"{progress:.0%}" if progress is not None else "",
                     r["message"] or "", str(r["started_at"] or "")[:19], str(r["finished_at"] or "")[:19]])
    return rows


def build(store: Store, runner: Runner, workspace: Workspace) -> None:
    gr.Markdown(
        f"Workspace `{html.escape(str(workspace.root))}` &middot; default model: {DEFAULT_DESCRIPTION}.")
    cards = gr.HTML(stat_cards(store))
    with gr.Row():
        with gr.Column(scale=2):
            datasets = gr.Dataframe(datasets_table(store), headers=["dataset", "pairs", "prompts", "created"],
                                    label="Datasets", interactive=False, max_height=320,
                                    elem_id="datasets-table")
        with gr.Column(scale=3):
            runs = gr.Dataframe(runs_table(store), headers=RUN_COLUMNS, label="Runs", interactive=False,
                                max_height=320, wrap=True, elem_id="runs-table")
            with gr.Row():
                run_id = gr.Number(label="Run", value=None, precision=0, scale=1)
                cancel = gr.Button("Cancel run", variant="stop", scale=1)
                resume = gr.Button("Resume run", scale=1)
            outcome = gr.Markdown()

    def refresh():
        return stat_cards(store), datasets_table(store), runs_table(store)

    def control(action, run):
        if not run:
            return "Pick a run by its number first."
        try:
            (runner.cancel if action == "cancel" else runner.resume)(int(run))
        except RunError as e:
            return f"**{e}**"
        return f"Run {int(run)}: {'cancel requested (it saves a checkpoint first)' if action == 'cancel' else 'resumed'}."

    gr.Timer(2.0).tick(refresh, outputs=[cards, datasets, runs], show_progress="hidden")
    cancel.click(lambda run: control("cancel", run), inputs=run_id, outputs=outcome)
    resume.click(lambda run: control("resume", run), inputs=run_id, outputs=outcome)
