"""Home tab: what the workspace holds, its datasets, and its runs (live, with cancel/resume)."""

from __future__ import annotations

import html
import json
import threading
import time
import traceback
from types import SimpleNamespace

import gradio as gr

from common.errors import StudioError
from pipelines.judges import HEURISTIC_RULE
from pipelines.models import DEFAULT_DESCRIPTION
from store import Store
from store.loop import loop_state
from store.queries import dataset_names, dataset_summaries, run_summaries, runs_of_kinds
from studio import picks, rounds_panel
from studio.context import Context, handler
from studio.demo import REPORT, SCALE_UP, DemoSettings, DemoStop, run_demo
from studio.loop_map import (
    LINEAGE_COLUMNS,
    NextStep,
    furthest_along,
    lineage,
    lineage_step,
    lineage_table,
    map_markdown,
    stages_and_next,
)
from studio.runner import FINAL, Runner
from studio.workspace import Workspace

RUN_COLUMNS = ["run", "kind", "status", "done", "message", "started", "ended"]


def stat_cards(store: Store) -> str:
    cards = "".join(
        f'<div class="stat-card"><div class="stat-value" data-stat="{name}">{count:,}</div>'
        f'<div class="stat-name">{name}</div></div>'
        for name, count in store.stats().items())
    return f'<div class="stat-cards">{cards}</div>'


def short(name: str, limit: int = 40) -> str:
    """A long name cut for a table cell, so that it cannot push the other columns out of view."""
    return name if len(name) <= limit else name[: limit - 1] + "…"


def datasets_table(store: Store) -> list[list]:
    return [[short(d["name"]), d["pairs"], d["prompts"], str(d["created_at"])[:19]] for d in dataset_summaries(store)]


def controllable_runs(store: Store) -> list[tuple[str, int]]:
    """Runs that can be cancelled (queued, running) or resumed (cancelled, failed), newest first."""
    return [(f"run {r['id']} · {r['kind']} · {r['status']}", r["id"])
            for r in runs_of_kinds(store, None, ("queued", "running", "cancelled", "failed"), limit=100)]


def runs_table(store: Store) -> list[list]:
    rows = []
    for r in run_summaries(store, limit=50):
        progress = r["metrics"].get("progress")
        rows.append([r["id"], r["kind"], r["status"],
                     f"{progress:.0%}" if progress is not None else "",
                     # An evaluation says one judge a line; a table cell runs lines together.
                     (r["message"] or "").replace("\n", "; "), str(r["started_at"] or "")[5:16],
                     str(r["finished_at"] or "")[5:16]])
    return rows


GUIDE = f"""
**Guided run.** The whole loop on the demo prompts: sample candidate answers from the default model,
keep the plausible ones by perplexity and pair them, label the pairs, train a reward model, run
DPO, evaluate the policy against the base, export it to a q8_0 GGUF and compare the two in llama.cpp.
To label yourself: *Prepare pairs to label* makes the pairs of `demo-pairs` for the Label tab,
and *Go on from my labels* (the same button) trains on them. *Run the whole loop unattended* does
it all in about 25 minutes on a 2-core CPU with the sizes below (on a GPU, raise them), with a
plain, stated rule as labeller: {HEURISTIC_RULE}.
"""


class GuidedRun:
    """The unattended demo started from the page: one at a time, in a thread; the jobs it starts
    are followed through the store (the app's sync thread moves them on)."""

    def __init__(self, store: Store, runner: Runner, workspace: Workspace):
        self.store, self.runner, self.workspace = store, runner, workspace
        self.thread: threading.Thread | None = None
        self.outcome = ""

    def follow(self, run_id: int) -> dict:
        while (run := self.runner.get(run_id))["status"] not in FINAL:
            time.sleep(1.0)
        return run

    def start(self, settings: DemoSettings, auto: bool = True) -> str:
        """The loop in a thread: unattended (`auto`: the heuristic labels), or up to the pairs to
        label and, once they have labels, on from them."""
        if self.thread is not None and self.thread.is_alive():
            return "The guided run is already running."
        (self.workspace.root / REPORT).unlink(missing_ok=True)
        self.outcome = "Started."
        self.thread = threading.Thread(target=self._run, args=(settings, auto), daemon=True)
        self.thread.start()
        return self.outcome

    def _run(self, settings: DemoSettings, auto: bool) -> None:
        started = time.monotonic()
        try:
            run_demo(self.store, self.runner, settings, self.workspace, auto=auto, follow=self.follow)
        except DemoStop as e:  # waiting for the user's labels: what to do next
            self.outcome = f"**Your turn:** {e}"
        except StudioError as e:  # a sentence for the user; the runs keep their own logs
            self.outcome = f"**Stopped:** {e}"
        except Exception as e:  # a bug: said in the panel, and its traceback in the server's log
            traceback.print_exc()
            self.outcome = f"**Stopped by an internal error** ({type(e).__name__}); the server's log has the details."
        else:
            self.outcome = (
                f"**Done in {(time.monotonic() - started) / 60:.1f} minutes.** Open the Compare tab to chat "
                f"with the base and the aligned model side by side. {SCALE_UP}"
            )

    def report(self) -> str:
        path = self.workspace.root / REPORT
        if not path.exists():
            return self.outcome
        stages = json.loads(path.read_text())["stages"]
        lines = [f"{i}. **{s['name']}** ({s['seconds']:.0f} s): {s['summary']}" for i, s in enumerate(stages, 1)]
        running = self.thread is not None and self.thread.is_alive()
        return "\n".join(lines) + ("\n\n*working on the next stage…*" if running else f"\n\n{self.outcome}")


def refresh(ctx: Context):
    """The counters, the tables, and the run controls (usable only when a run can be cancelled or resumed)."""
    anything = bool(controllable_runs(ctx.store))  # Cancel is red only when there is a run to act on
    return (stat_cards(ctx.store), datasets_table(ctx.store), runs_table(ctx.store),
            gr.update(interactive=anything, variant="stop" if anything else "secondary"),
            gr.update(interactive=anything))


def show_map(ctx: Context, dataset: str | None):
    """The loop map of the picked dataset, its next step's button and sentence, and its models' lineage."""
    if not dataset:
        step = NextStep("data", "Import prompts or pairs", "The workspace has no dataset yet: import a file of "
                        "prompts or preference pairs, or run the guided demo below.")
        return "", gr.update(value=f"Next step: {step.label}"), step.why, gr.update(visible=False)
    state = loop_state(ctx.store, dataset)  # read once for the map and the lineage (every 3 s, per tab)
    stages, step = stages_and_next(ctx.store, dataset, state)
    rows = lineage_table(lineage(ctx.store, dataset, state))
    return (map_markdown(stages), gr.update(value=f"Next step: {step.label}"), step.why,
            gr.update(value=rows, visible=bool(rows)))


def follow_map(ctx: Context, dataset: str | None):
    """The timer's view of the map: as show_map, and a dataset picked as soon as there is one, the
    one furthest along the loop (a newcomer who imports a file, then comes back, finds its map and
    next step without opening the menu); a picked dataset is left as it is."""
    names = dataset_names(ctx.store)
    if dataset in names or not names:
        return (gr.update(), *show_map(ctx, dataset))
    picked = furthest_along(ctx.store, names)
    return (gr.update(choices=names, value=picked), *show_map(ctx, picked))


def next_step_of(ctx: Context, dataset: str | None) -> NextStep:
    if not dataset:
        return NextStep("data", "Import prompts or pairs", "")
    return stages_and_next(ctx.store, dataset)[1]


def fresh_projects(ctx: Context, picked: str | None):
    names = dataset_names(ctx.store)
    return gr.update(choices=names, value=picked if picked in names else (furthest_along(ctx.store, names)
                                                                         if names else None))


def control(ctx: Context, action: str, run):
    if not run:
        return "Pick a run first.", gr.update(choices=controllable_runs(ctx.store))
    try:
        (ctx.runner.cancel if action == "cancel" else ctx.runner.resume)(int(run))
    except StudioError as e:  # every error a user can act on, said as a sentence
        return f"**{e}**", gr.update(choices=controllable_runs(ctx.store))
    done = 'cancel requested (it saves a checkpoint first)' if action == 'cancel' else 'resumed'
    return f"Run {int(run)}: {done}.", gr.update(choices=controllable_runs(ctx.store), value=None)


def start_guided(ctx: Context, guided: GuidedRun, auto: bool, base, prompts, candidates, max_new_tokens, rm_steps,
                 dpo_steps):
    if None in (prompts, candidates, max_new_tokens, rm_steps, dpo_steps):
        return "**Give every size a number first.**"
    if min(prompts, max_new_tokens, rm_steps, dpo_steps) < 1 or candidates < 2:
        return "**Every size must be at least 1, and candidates per prompt at least 2 (to make pairs).**"
    return guided.start(DemoSettings(base=base.strip() or "default", prompts=int(prompts), candidates=int(candidates),
                                     max_new_tokens=int(max_new_tokens), rm_steps=int(rm_steps),
                                     dpo_steps=int(dpo_steps)), auto)


def build(ctx: Context) -> None:
    store, runner, workspace = ctx.store, ctx.runner, ctx.workspace
    gr.Markdown(
        f"Workspace `{html.escape(str(workspace.root))}` &middot; default model: {DEFAULT_DESCRIPTION}.")
    cards = gr.HTML(lambda: stat_cards(store))  # a callable: read again at each page load
    names = dataset_names(store)
    with gr.Row(equal_height=True):
        project = gr.Dropdown(names, value=furthest_along(store, names) if names else None,
                              label="Where a dataset stands in the loop",
                              info="prompts → candidates → perplexity → pairs → labels → reward model → policy → "
                                   "verdict → export → votes", scale=3, elem_id="home-project")
        step = gr.Button("Next step", variant="primary", scale=1, elem_id="home-next")
    loop = gr.Markdown(elem_id="home-map")
    why = gr.Markdown(elem_id="home-why")
    # The verdict is a sentence: without widths it pushed the exports and votes out of sight.
    lineage_frame = gr.Dataframe(headers=LINEAGE_COLUMNS, interactive=False, wrap=True, max_height=300,
                                 column_widths=["11%", "11%", "11%", "12%", "33%", "13%", "9%"],
                                 label="Models made from it (click a cell: the run, its pairs, its exports, its votes)",
                                 elem_id="home-lineage", visible=False)
    with gr.Row():
        with gr.Column(scale=2, min_width=380):  # below 900 px or so the two tables stack
            datasets = gr.Dataframe(lambda: datasets_table(store), headers=["dataset", "pairs", "prompts", "created"],
                                    label="Datasets", interactive=False, max_height=320, wrap=True,
                                    elem_id="datasets-table", column_widths=["38%", "14%", "18%", "30%"])
        with gr.Column(scale=3, min_width=520):
            runs = gr.Dataframe(lambda: runs_table(store), headers=RUN_COLUMNS, label="Runs", interactive=False,
                                max_height=320, wrap=True, elem_id="runs-table",
                                column_widths=["6%", "14%", "14%", "8%", "36%", "12%", "10%"])
            with gr.Row(equal_height=True):
                run_id = gr.Dropdown(controllable_runs(store), value=None, label="Run to cancel or resume", scale=2,
                                     elem_id="home-run", info="queued or running: cancel; cancelled or failed: resume")
                anything = bool(controllable_runs(store))  # no red button with nothing to act on
                cancel = gr.Button("Cancel run", variant="stop" if anything else "secondary", scale=1, size="sm",
                                   interactive=anything)
                resume = gr.Button("Resume run", scale=1, size="sm", interactive=anything)
            outcome = gr.Markdown()
    rounds_panel.build(ctx, project)
    guided = GuidedRun(store, runner, workspace)
    with gr.Accordion("Guided run: from demo prompts to an aligned GGUF model", open=False):
        gr.Markdown(GUIDE)
        sizes = DemoSettings()
        with gr.Row():
            guided_base = gr.Textbox(sizes.base, label="Base model", elem_id="guided-base", scale=2)
            guided_prompts = gr.Number(sizes.prompts, label="Prompts", precision=0, elem_id="guided-prompts")
            guided_candidates = gr.Number(sizes.candidates, label="Candidates per prompt", precision=0)
            guided_tokens = gr.Number(sizes.max_new_tokens, label="Max new tokens", precision=0,
                                      elem_id="guided-tokens")
            guided_rm_steps = gr.Number(sizes.rm_steps, label="RM steps", precision=0, elem_id="guided-rm-steps")
            guided_dpo_steps = gr.Number(sizes.dpo_steps, label="DPO steps", precision=0,
                                         elem_id="guided-dpo-steps")
        with gr.Row():
            unattended = gr.Button("Run the whole loop unattended", variant="primary", elem_id="guided-start")
            manual = gr.Button("Prepare pairs to label / Go on from my labels", elem_id="guided-manual")
        guided_report = gr.Markdown(guided.report(), elem_id="guided-report")

    gr.Timer(2.0).tick(handler(refresh, ctx), outputs=[cards, datasets, runs, cancel, resume], show_progress="hidden")
    gr.Timer(3.0).tick(handler(follow_map, ctx), project, [project, loop, step, why, lineage_frame],
                       show_progress="hidden")
    project.change(handler(show_map, ctx), project, [loop, step, why, lineage_frame])
    project.focus(handler(fresh_projects, ctx), project, project)
    gr.Timer(3.0).tick(guided.report, outputs=guided_report, show_progress="hidden")
    sizes_in = [guided_base, guided_prompts, guided_candidates, guided_tokens, guided_rm_steps, guided_dpo_steps]
    unattended.click(handler(start_guided, ctx, guided, True), inputs=sizes_in, outputs=guided_report)
    manual.click(handler(start_guided, ctx, guided, False), inputs=sizes_in, outputs=guided_report)
    cancel.click(handler(control, ctx, "cancel"), inputs=run_id, outputs=[outcome, run_id])
    resume.click(handler(control, ctx, "resume"), inputs=run_id, outputs=[outcome, run_id])
    run_id.focus(lambda: gr.update(choices=controllable_runs(store)), outputs=run_id)
    return SimpleNamespace(project=project, step=step, loop=loop, why=why, lineage=lineage_frame)


def wire_next_step(ctx: Context, app: gr.Blocks, home: SimpleNamespace, tabs: gr.Tabs, targets: dict,
                   choices: dict):
    """The next-step button opens the tab that takes the step with its inputs chosen. `targets`:
    the other tabs' components it sets, by name (label_dataset, build_dataset, build_generate_box: an
    accordion it opens, train_method, train_dataset, train_run, train_eval_box, export_model,
    compare_model, compare_base, compare_blind, scroll_to: a hidden box given the id of the element
    to scroll to). `choices`: for the menus among them,
    their choices as they are now."""
    order = list(targets)

    def opening(step: NextStep) -> tuple:
        """The outputs that open `step.tab` with its inputs chosen."""
        base = step.inputs.get("base")  # the policy's base beside it in Compare, when Compare runs it
        base = base if base in picks.values_of(choices["compare_base"]()) else None
        values = {"data": {}, "build": {"build_dataset": step.inputs.get("dataset"),
                                        "build_generate_box": step.inputs.get("open_generate")},
                  "label": {"label_dataset": step.inputs.get("dataset")},
                  "train": {"train_method": step.inputs.get("method"), "train_dataset": step.inputs.get("dataset"),
                            "train_run": step.inputs.get("run"), "train_eval_box": step.inputs.get("open_evaluate")},
                  "export": {"export_model": step.inputs.get("model")},
                  "compare": {"compare_model": step.inputs.get("model"), "compare_blind": step.inputs.get("blind"),
                              "compare_base": base}}[step.tab]
        # Where the page scrolls once the tab is open (an element id; "" for the top of the page).
        values["scroll_to"] = "train-eval-box" if step.inputs.get("open_evaluate") else ""
        return (gr.Tabs(selected=step.tab), *(gr.update() if values.get(name) is None
                                              else gr.update(open=True) if name.endswith("_box")  # an accordion
                                              else gr.update(value=values[name], choices=choices[name]())
                                              if name in choices else gr.update(value=values[name])
                                              for name in order))

    def go(dataset):
        return opening(next_step_of(ctx, dataset))

    def open_lineage(dataset, event: gr.SelectData):
        rows = lineage(ctx.store, dataset)
        row, column = event.index if isinstance(event.index, (list, tuple)) else (event.index, 0)
        if not rows or row >= len(rows):  # the table was older than the store: stay
            return (gr.update(),) * (len(order) + 1)
        return opening(lineage_step(rows[row], column))

    events = [home.step.click(go, home.project, [tabs, *targets.values()]),
              home.lineage.select(open_lineage, home.project, [tabs, *targets.values()])]
    # A page opens on the dataset furthest along the loop now, not on the one picked when the server started.
    app.load(handler(follow_map, ctx, None), None, [home.project, home.loop, home.step, home.why, home.lineage])
    # What opens a step's tab with its inputs, for the other places that open one (the jobs bar), and
    # the events that open one (for what follows an opening).
    return opening, [tabs, *targets.values()], events
