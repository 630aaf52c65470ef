"""The Gradio app: one tab per file under studio/, one store, one runner, one sync thread."""

from __future__ import annotations

import threading
import traceback

import gradio as gr

from pipelines.chat import ChatModels
from store.labelling import LabelQueue
from store.queries import dataset_names
from studio import (
    agreement_tab,
    build_tab,
    compare_tab,
    data_tab,
    export_tab,
    home_tab,
    jobs_bar,
    judging,
    label_tab,
    picks,
    train_tab,
)
from studio.context import Context
from studio.runner import Runner
from studio.workspace import Workspace

CSS = """
.stat-cards { display: flex; flex-wrap: wrap; gap: 12px; }
.stat-card { flex: 1 1 110px; padding: 12px 16px; border-radius: 10px;
             border: 1px solid var(--border-color-primary); background: var(--background-fill-secondary); }
.stat-value { font-size: 1.6em; font-weight: 600; }
.stat-name { opacity: 0.7; text-transform: capitalize; }
/* Chatbot's own Clear (trash) button would only blank the view, never the store: prompts shown to
   read, and the Compare panes (whose reset is "New conversation"), go without it. */
#pair-prompt button[aria-label="Clear"], #label-prompt button[aria-label="Clear"],
#compare-left button[aria-label="Clear"], #compare-right button[aria-label="Clear"] { display: none; }
/* Table cells and headers break between words, never inside one ("candidat e", "perplexi ty"); a word
   longer than its column still wraps rather than overflowing. */
table th, table td, table th span, table td span { word-break: normal !important; overflow-wrap: break-word; }
"""
SYNC_EVERY_S = 1.0
# After the Next step or the jobs bar opens a tab: scroll to the element the opening named (the
# evaluation form, a screen below the Train tab's top), once the tab has drawn it.
SCROLL_JS = """(target) => { if (target) setTimeout(() => document.getElementById(target)
    ?.scrollIntoView({behavior: "smooth", block: "start"}), 300); }"""


def build_app(workspace: Workspace):
    """The Blocks app and the runner it drives (the caller owns both)."""
    store = workspace.open_store()
    runner = Runner(store, workspace)
    runner.recover()
    ctx = Context(workspace, store, runner, LabelQueue(store), ChatModels())
    with gr.Blocks(title="Alignment Studio") as app:
        gr.Markdown("# Alignment Studio")
        jobs = jobs_bar.build(ctx)
        with gr.Tabs() as tabs:
            with gr.Tab("Home", id="home"):
                home = home_tab.build(ctx)
            with gr.Tab("Data", id="data") as tab:
                data = data_tab.build(ctx, app, tab)
            with gr.Tab("Label", id="label") as tab:
                label = label_tab.build(ctx, app, tab)
            with gr.Tab("Agreement", id="agreement") as tab:
                agreement = agreement_tab.build(ctx, tab)
            with gr.Tab("Build dataset", id="build") as tab:
                building = build_tab.build(ctx, app, tab)
            with gr.Tab("Train", id="train") as tab:
                train = train_tab.build(ctx, tab)
            with gr.Tab("Export", id="export") as tab:
                export = export_tab.build(ctx, tab)
            with gr.Tab("Compare", id="compare") as tab:
                compare = compare_tab.build(ctx, app, tab)
        scroll_to = gr.Textbox(visible=False)  # set by an opening: where the page scrolls
        opening, opened, openings = home_tab.wire_next_step(ctx, app, home, tabs, {
            "label_dataset": label.dataset, "build_dataset": building.dataset,
            "build_generate_box": building.generate_box, "train_method": train.kind,
            "train_dataset": train.dataset, "train_run": train.picked, "train_eval_box": train.eval_box,
            "train_eval_prompts": train.eval_prompts, "export_model": export.model,
            "compare_model": compare.model_b, "compare_base": compare.model_a,
            "compare_blind": compare.blind, "scroll_to": scroll_to}, choices={
            # A tab built before the step's dataset, run or model existed lists them only from now.
            "label_dataset": lambda: dataset_names(store, with_pairs=True),
            "build_dataset": lambda: dataset_names(store), "train_dataset": lambda: dataset_names(store),
            "train_run": lambda: train_tab.training_runs(store),
            "export_model": lambda: export_tab.exportable(store),
            "compare_model": lambda: judging.gguf_choices(store),
            "compare_base": lambda: judging.gguf_choices(store)})

        def open_job(run_id):
            step = jobs_bar.where_followed(ctx, run_id)
            return opening(step) if step else (gr.update(),) * len(opened)

        openings.append(jobs.open.click(open_job, jobs.job, opened))
        for event in openings:
            # The evaluation form opened for a policy: its menus for that policy (the run picked may be
            # the one picked before, whose change event does not fire again), then the scroll.
            event.then(lambda target, run_id: train_tab.evaluation_defaults(ctx, run_id) if target else
                       (gr.update(),) * 3, [scroll_to, train.picked],
                       [train.eval_prompts, train.eval_reward, train.eval_proxy], show_progress="hidden").then(
                None, scroll_to, None, js=SCROLL_JS)
        first = lambda choices: picks.values_of(choices)[0] if choices else None  # noqa: E731
        picks.remember(app, workspace, {
            "data_dataset": picks.Menu(data.dataset, lambda: dataset_names(store), first),
            "label_dataset": picks.Menu(label.dataset, lambda: dataset_names(store, with_pairs=True), first),
            "label_reward_model": picks.Menu(label.reward_model, lambda: label_tab.reward_models(store), first),
            "agreement_dataset": picks.Menu(agreement, lambda: dataset_names(store, with_pairs=True), first),
            "build_dataset": picks.Menu(building.dataset, lambda: dataset_names(store)),
            "train_dataset": picks.Menu(train.dataset, lambda: train_tab.data_choices(store, train_tab.FIRST_METHOD),
                                        first),
            "train_run": picks.Menu(train.picked, lambda: train_tab.training_runs(store), first),
            "export_model": picks.Menu(export.model, lambda: export_tab.exportable(store), first),
        })
    # The studio is a page, not an API: no event is described to clients. Gradio embeds the API
    # description (every dataset name among its allowed values) even in the login page.
    for fn in app.fns.values():
        fn.api_visibility = "private"
    return app, runner


def _sync_forever(runner: Runner, stop: threading.Event) -> None:
    """Tail running jobs into the store, off the UI threads."""
    while not stop.wait(SYNC_EVERY_S):
        try:
            runner.sync_all()
        except Exception:  # keep following the other runs; the whole error goes to the server's log
            print("run sync failed:", flush=True)
            traceback.print_exc()


def serve(workspace: Workspace, host: str, port: int, auth: list[tuple[str, str]] | None) -> None:
    app, runner = build_app(workspace)
    stop = threading.Event()
    threading.Thread(target=_sync_forever, args=(runner, stop), daemon=True).start()
    print(f"Alignment Studio: workspace {workspace.root}", flush=True)
    try:
        app.launch(server_name=host, server_port=port, auth=auth, css=CSS, head=label_tab.KEYBOARD_JS,
                   show_error=True, footer_links=[], ssr_mode=False, allowed_paths=[str(workspace.exports_dir)])
    finally:
        stop.set()
        runner.store.close()
