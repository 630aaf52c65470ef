"""Train tab: start a run of any training method from a form generated from its config, follow its
loss and metrics live, cancel, resume, or run it again with the same config and inputs, and
evaluate a policy against its base.

The layout (`build` and the panels it is made of) is apart from the behaviour: the handlers are
module-level functions of the shared context (`studio.context`), tested without a browser."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import gradio as gr
import pandas as pd

from common.errors import StudioError
from pipelines.judges import RULES
from pipelines.settings import default_of, help_of, label_of, split_list, user_fields, value_type
from store import Store
from store.models import model_path
from store.queries import (
    benchmarks_of,
    dataset_names,
    evaluations_of,
    latest_metrics,
    metric_by_kl,
    metric_series,
    run_row,
    run_view_state,
    runs_of_kinds,
)
from studio import judging, reports, service
from studio.context import Context, handler
from studio.jobs_bar import progress_words
from studio.judging import reward_runs
from studio.methods import METHODS, ONLINE_METHODS, PAIR_POLICIES, TRL_LOSSES, Method, method_by_label

FIRST_METHOD = METHODS["rm"]  # what the Train tab opens on
PURPOSE = ("Train a reward model or a policy on your pairs (labelled here, or with the verdicts their file came "
           "with), or a policy against a trained reward model. On a CPU a step takes seconds with the default model.")
# Settings shown in the top row, beside the method and its data, not in the rows of settings.
INPUT_FIELDS = ("base",)
# What the size of the base suggests (pipelines.training.suggested_settings), filled in on Enter in Base.
SUGGESTED = ("learning_rate", "batch_size", "grad_accum", "mini_batch_size", "gradient_checkpointing", "load_in_4bit")


def form_fields() -> dict[str, dataclasses.Field]:
    """Every user setting of every method, by name (the first method's field where several have it)."""
    fields: dict[str, dataclasses.Field] = {}
    for method in METHODS.values():
        for f in user_fields(method.config):
            fields.setdefault(f.name, f)
    return fields


FIELDS = form_fields()
MAIN_FIELDS = [n for n, f in FIELDS.items() if n not in INPUT_FIELDS and not f.metadata.get("advanced")]
ADVANCED_FIELDS = [n for n, f in FIELDS.items() if f.metadata.get("advanced")]
# The order of the settings' controls, as the handlers take and return them.
CONTROL_ORDER = [*INPUT_FIELDS, *MAIN_FIELDS, *ADVANCED_FIELDS]


def field_of(method: Method, name: str) -> dataclasses.Field | None:
    return next((f for f in user_fields(method.config) if f.name == name), None)


def shown_value(f: dataclasses.Field):
    value = default_of(f)
    return ", ".join(value) if isinstance(value, list) else value


def setting_component(f: dataclasses.Field, visible: bool):
    """The form control of one config field: its label, help, default and type from the field."""
    kind, common = value_type(f), dict(value=shown_value(f), label=label_of(f), info=help_of(f), visible=visible,
                                       elem_id=f"train-{f.name.replace('_', '-')}")
    if kind is bool:
        return gr.Checkbox(**common)
    if f.metadata.get("choices"):
        return gr.Dropdown(list(f.metadata["choices"]), **common)
    if kind in (int, float):
        return gr.Number(precision=0 if kind is int else None, **common)
    return gr.Textbox(**common)


def form_value(f: dataclasses.Field, value):
    """A form value as the config field takes it; None when left empty (the default applies)."""
    if value is None or value == "":
        return None
    kind = value_type(f)
    if kind is list:
        return split_list(value)
    if kind is int:
        return int(value)
    if kind is float:
        return float(value)
    return value.strip() if isinstance(value, str) else value


def explanation(method: Method) -> str:
    """The picked method, in a line: what it is and what it learns from."""
    needs = "a dataset of prompts and a trained reward model" if method.online else \
        "a dataset of pairs with a preference (it learns their preferred answers) or of demonstrations" \
        if method.name == "sft" else "a dataset of pairs with a preference"
    return f"**{method.label}**: {method.summary}. It needs {needs}."


FOLLOWED_KINDS = (*METHODS, "evaluate", "best-of-n", "benchmark")  # the Train tab follows training and judging

BEST_OF_N = ("proxy/win_rate", "judge/win_rate", "proxy/win_low", "proxy/win_high", "judge/win_low", "judge/win_high")
# The runs the Train tab follows that train nothing, as the plots read them: best-of-N's curves (by N,
# the run's steps); an evaluation's and a benchmark's figures are in their summary.
JUDGING_VIEWS = {
    "best-of-n": Method("best-of-n", "Best-of-N", "pipelines.best_of_n", object, reads="prompts", makes="verdict",
                        summary="the proxy's pick of N answers against one, by the proxy and by a judge",
                        plotted=BEST_OF_N, plotted_first=BEST_OF_N[:2], losses=()),
    "evaluate": Method("evaluate", "Evaluation", "pipelines.evaluate", object, reads="prompts", makes="verdict",
                       summary="a policy against its base", plotted=(), plotted_first=(), losses=()),
    "benchmark": Method("benchmark", "Benchmark", "pipelines.benchmark", object, reads="prompts", makes="verdict",
                        summary="lm-evaluation-harness tasks", plotted=(), plotted_first=(), losses=()),
}


def training_runs(store: Store) -> list[tuple[str, int]]:
    return [(f"run {r['id']} · {r['kind']} · {r['status']}", r["id"]) for r in runs_of_kinds(store, FOLLOWED_KINDS)]


# Fixed colours, named in the plot's label: Gradio's own legend is cut off below small plots.
COLOURS = [("blue", "#1f77b4"), ("orange", "#ff7f0e"), ("green", "#2ca02c"), ("red", "#d62728"),
           ("purple", "#9467bd"), ("brown", "#8c564b"), ("pink", "#e377c2"), ("grey", "#7f7f7f"),
           ("olive", "#bcbd22"), ("cyan", "#17becf")]


def metric_colours() -> dict[str, tuple[str, str]]:
    """One colour per metric name, distinct within each method's plots. Gradio's plot rebuilds its
    colour scale only when its colour map changes, and otherwise only swaps the data; so every plot
    keeps this one map, and every name is in every frame (a row without a value if none), for a metric
    that appears later (an eval metric, another method's run) to be drawn at all."""
    colours: dict[str, tuple[str, str]] = {}
    for names in (*(m.plotted for m in METHODS.values()), *(m.losses for m in METHODS.values()), TRL_LOSSES,
                  BEST_OF_N):
        for name, colour in zip(names, COLOURS):
            colours.setdefault(name, colour)
    return colours


COLOUR_OF = metric_colours()
COLOUR_MAP = {name: code for name, (_, code) in COLOUR_OF.items()}


def plot_frame(rows: list[dict], x: str, names=()) -> pd.DataFrame:
    """Rows as the plots take them: `x` and value numbers (float), the series' names as text, in
    the order of `x`; and a row without a value (NaN) for each of `names` not logged yet. Gradio's
    plot builds its colour scale from the first frame it draws and only swaps the data after, so a
    series that appears later (an evaluation's) must be named from the start to be drawn at all; as
    a number that is not there, not as None: a column of Nones made the plot take its axis for
    labels (a "null" tick, values unsorted) while a run was watched from its start."""
    logged = {r["metric"] for r in rows}
    first = rows[0][x] if rows else 0.0
    frame = pd.DataFrame([*rows, *({x: first, "metric": n, "value": float("nan")} for n in names if n not in logged)],
                         columns=[x, "metric", "value"])
    frame[x] = pd.to_numeric(frame[x], errors="coerce").astype("float64")
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce").astype("float64")
    frame["metric"] = frame["metric"].astype("string")
    return frame.dropna(subset=[x]).sort_values([x, "metric"], kind="stable").reset_index(drop=True)


def metric_plot(store: Store, run_id: int, names: list[str], title: str) -> gr.LinePlot:
    """The logged values of `names` by step, one line each, the colours named in the label (the
    plot's own legend holds this plot's names only: those of its run's method)."""
    rows = metric_series(store, run_id, names) if names else []
    logged = {r["metric"] for r in rows}
    shown = [n for n in names if n in logged]
    label = f"{title}: " + ", ".join(f"{name} ({COLOUR_OF[name][0]})" for name in shown) if shown else title
    return gr.LinePlot(value=plot_frame(rows, "step", names), label=label)


def watch_plot(store: Store, run_id: int) -> gr.LinePlot:
    """The over-optimisation watch of an online run: the proxy's and the judge's win rates against
    the base on held-out prompts, by KL from the base (the gold-vs-proxy picture); hidden for
    runs without a watch."""
    names = ("watch/proxy_win", "watch/judge_win")
    rows = metric_by_kl(store, run_id, names)
    label = ("Watch, on held-out prompts: win rate against the base by KL from it: proxy (the reward model "
             f"optimised, {COLOUR_OF[names[0]][0]}), judge ({COLOUR_OF[names[1]][0]})")
    return gr.LinePlot(value=plot_frame(rows, "kl", names), label=label, visible=bool(rows))


def bullets(lines) -> str:
    return "".join(f"\n- {line}" for line in lines)


def evaluation_text(run_id: int, message: str) -> str:
    """An evaluation's message as the summary shows it: its verdicts, then its cost card (the lines
    `cost: ...`, base against policy) under a heading of its own."""
    lines = (message or "").splitlines()
    costs = [line.removeprefix("cost: ") for line in lines if line.startswith("cost: ")]
    text = f"\n\n**Evaluation (run {run_id})**" + bullets(line for line in lines if not line.startswith("cost: "))
    if costs:
        text += f"\n\n**What it cost** (run {run_id}: base -> policy, each change with its 95% interval)" + \
            bullets(costs)
    return text


def benchmark_text(run_id: int, message: str) -> str:
    return f"\n\n**Benchmarks (run {run_id}, lm-evaluation-harness)**" + bullets((message or "").splitlines())


def run_summary(ctx: Context, run_id: int) -> str:
    """The picked run in words: its state, its report card (a reward model), its evaluations and
    people's votes (a policy)."""
    store = ctx.store
    run = run_row(store, run_id)
    config = json.loads(run["config"])
    latest = latest_metrics(store, run_id)
    model = config.get("base") or config.get("model") or config.get("policy_adapter") or "-"
    parts = [f"**Run {run_id}** ({run['kind']}, {'base' if 'base' in config else 'model'} `{model}`): "
             f"**{run['status']}**"]
    path = model_path(store, "policy", run_id=run_id)
    evaluations = evaluations_of(store, path) if path else []
    if run["status"] == "running":
        parts.append(progress_words(latest.get("progress"), latest.get("eta_s")))
    card = []
    if run["kind"] in METHODS and METHODS[run["kind"]].makes == "reward" and run["status"] == "succeeded":
        try:
            card = reports.rm_report(ctx.runner, run_id)
        except StudioError as e:  # no held-out pairs, or an older run: said where the card would be
            card = [str(e)]
    if config.get("judge_split"):
        parts.append(f"the {config['judge_split']} half of a judge split")
    judged = run["kind"] in ("evaluate", "benchmark") and run["status"] == "succeeded"
    if run["message"] and not judged:  # with a report card below, only what the run did
        parts.append(run["message"].split(";")[0] if card else run["message"])
    text = " · ".join(parts)
    if card:
        text += "\n\n**Report card** (held-out pairs)" + bullets(card)
    if judged:
        text += (evaluation_text if run["kind"] == "evaluate" else benchmark_text)(run_id, run["message"])
    text += "".join(evaluation_text(e["id"], e["message"]) for e in evaluations)
    text += "".join(benchmark_text(b["id"], b["message"]) for b in (benchmarks_of(store, path) if path else []))
    people = reports.people_verdict(store, run_id) if run["status"] == "succeeded" else None
    if people:
        text += "\n\n**People**" + bullets([people.removeprefix("people: ")])
    return text


# --- handlers ------------------------------------------------------------------------------------

def method_of_run(ctx: Context, run_id) -> Method:
    run = run_row(ctx.store, run_id) if run_id else None
    kind = run["kind"] if run else None
    return METHODS.get(kind) or JUDGING_VIEWS.get(kind) or FIRST_METHOD


def data_choices(store, method: Method) -> list[str]:
    """The datasets a method can learn from: any (prompts) for the online methods and SFT (which also
    learns from demonstrations), else those holding pairs."""
    return dataset_names(store) if method.online or method.name == "sft" else dataset_names(store, with_pairs=True)


def data_label(method: Method) -> str:
    return "Prompts" if method.online else "Pairs or demonstrations" if method.name == "sft" else "Pairs"


def switch_method(ctx: Context, label: str) -> tuple:
    """Each setting shows when the method has it, with that method's default and help (the base
    keeps what was typed: it is the user's, not the method's); then the data pickers of the method,
    and its explanation."""
    method = method_by_label(label)
    settings = [gr.update(visible=False) if (f := field_of(method, name)) is None else
                gr.update(visible=True, label=label_of(f), info=help_of(f)) if name in INPUT_FIELDS else
                gr.update(visible=True, value=shown_value(f), label=label_of(f), info=help_of(f))
                for name in CONTROL_ORDER]
    choices = data_choices(ctx.store, method)
    return (*settings, gr.update(label=data_label(method), choices=choices),
            gr.update(visible=not method.online), gr.update(visible=method.online, choices=reward_runs(ctx.store)),
            gr.update(visible=method.online, choices=[("none", "")] + reward_runs(ctx.store)),
            gr.update(visible=method.judge_split), explanation(method))


def start_run(ctx: Context, label, dataset, eval_dataset, reward_run, judge_run, judge_split, force, *values):
    """Start a run from the form (the settings' values in CONTROL_ORDER): what it started, in words,
    and the run list with the new run picked."""
    method = method_by_label(label)
    settings = {}
    for name, value in zip(CONTROL_ORDER, values):
        f = field_of(method, name)
        if f is None:
            continue
        try:
            value = form_value(f, value)
        except (TypeError, ValueError):
            return f"**{label_of(f)}: '{value}' is not a valid value.**", gr.update()
        if value is not None:
            settings[name] = value
    if not dataset:
        return f"**Pick a dataset of {'prompts' if method.online else 'pairs'}.**", gr.update()
    if method.online and not reward_run:
        return "**Pick a reward model (train one first).**", gr.update()
    data = dict(prompts=dataset, reward_run=int(reward_run), judge_run=int(judge_run) if judge_run else None) \
        if method.online else dict(dataset=dataset, eval_dataset=eval_dataset or None,
                                   judge_split=bool(method.judge_split and judge_split))
    try:
        started = service.start_training(ctx.runner, method.name, force=bool(force), **data, **settings)
    except StudioError as e:  # every error a user can act on, said as a sentence
        return f"**{e}**", gr.update()
    if started.roles == ("proxy", "judge"):
        said = (f"Runs {started.run_ids[0]} (proxy: for {ONLINE_METHODS} to optimise) and {started.run_ids[1]} "
                "(judge: to evaluate policies by) started.")
    else:
        said = f"Run {started.run_id} started."
    if started.plan is not None:
        said += f" {service.plan_words(started.plan, started.free_gb)}."
    return said, gr.update(choices=training_runs(ctx.store), value=started.run_id)


def export_note(ctx: Context, said: str, label: str, base_name: str):
    """After a policy's run started: whether its base could be exported to GGUF (llama.cpp's
    converter on its tokenizer, a few seconds the first time), added to what the start said."""
    if not said.startswith("Run ") or method_by_label(label).makes != "policy":
        return gr.update()
    warning = service.export_warning((base_name or "").strip() or "default", ctx.workspace.models_dir)
    return f"{said} **Note: {warning[0].upper()}{warning[1:]}.**" if warning else gr.update()


def suggest(ctx: Context, label: str, base_name: str) -> list:
    """Fill the form with the method's defaults adjusted to the base's size (and the GPU's)."""
    from pipelines.memory import free_gpu_gb
    from pipelines.training import parameter_count, suggested_settings

    method = method_by_label(label)
    defaults = method.config()
    billions = parameter_count(base_name.strip(), ctx.workspace.models_dir)
    settings = {**dataclasses.asdict(defaults), **suggested_settings(defaults, billions, free_gpu_gb())}
    size = (f"`{base_name.strip()}` has about {billions:.2f}B parameters" if billions is not None
            else f"the size of `{base_name.strip()}` is unknown: its config is not on this machine (a folder, "
                 "or the hub's cache once it has been downloaded)")
    note = f"Settings for this method; {size}." + (
        " Larger bases get a lower learning rate, smaller batches and gradient checkpointing"
        + ("; this GPU also needs a 4-bit base (QLoRA)." if settings.get("load_in_4bit") else ".")
        if billions and billions >= 1 else "")
    return [note] + [gr.update(value=settings[name]) if field_of(method, name) else gr.update()
                     for name in SUGGESTED]


def metrics_of(ctx: Context, run_id, method: Method, names):
    """The metrics plot of the ticked names that this method logs (its first ones if none)."""
    names = [n for n in names if n in method.plotted] or list(method.plotted_first)
    return metric_plot(ctx.store, run_id, names, "Metrics")


def show_run(ctx: Context, run_id, names) -> tuple:
    """The run's summary, loss plot, metrics plot and watch plot."""
    if not run_id:
        return "Pick a run to follow it.", None, None, gr.update(visible=False)
    method = method_of_run(ctx, run_id)
    return (run_summary(ctx, run_id), metric_plot(ctx.store, run_id, list(method.losses), "Loss"),
            metrics_of(ctx, run_id, method, names), watch_plot(ctx.store, run_id))


def pick_run(ctx: Context, run_id) -> tuple:
    """Show the picked run with the metrics first plotted for its method."""
    method = method_of_run(ctx, run_id)
    names = list(method.plotted_first)
    # Named after the run: the method picked in the form above may be another one.
    label = f"Metrics of run {run_id} ({method.label})" if run_id else "Metrics plotted"
    return (*show_run(ctx, run_id, names), gr.update(choices=list(method.plotted), value=names, label=label), names,
            run_view_state(ctx.store, run_id), *run_controls(ctx, run_id))


def tick(ctx: Context, run_id, names, last_state) -> tuple:
    """Redraw only when what the view shows changed, so a finished run's plots stay still."""
    state = run_view_state(ctx.store, run_id)
    if state == last_state:
        return (gr.skip(),) * 9
    # The run menu names each run's status: redrawn when a status changed, not at every new metric.
    status_changed = not last_state or any(state[k] != last_state.get(k) for k in ("run", "status", "ended"))
    menu = gr.update(choices=training_runs(ctx.store)) if status_changed else gr.skip()
    return (*show_run(ctx, run_id, names), state, *run_controls(ctx, run_id), menu)


def run_controls(ctx: Context, run_id) -> tuple:
    """Cancel, Resume and Run again, each usable only when the picked run can take it."""
    run = run_row(ctx.store, run_id) if run_id else None
    status = run["status"] if run else None
    cancellable = status in ("queued", "running")  # red only when there is something to stop
    return (gr.update(interactive=cancellable, variant="stop" if cancellable else "secondary"),
            gr.update(interactive=status in ("cancelled", "failed")), gr.update(interactive=run is not None))


def control_run(ctx: Context, action: str, run_id):
    if not run_id:
        return "**Pick a run first.**", gr.update()
    try:
        if action == "cancel":
            ctx.runner.cancel(run_id)
            return f"Run {run_id}: cancel requested (it saves a checkpoint first).", gr.update()
        if action == "resume":
            ctx.runner.resume(run_id)
            return f"Run {run_id} resumed from its last checkpoint.", gr.update()
        new_id = ctx.runner.rerun(run_id)
    except StudioError as e:  # every error a user can act on, said as a sentence
        return f"**{e}**", gr.update()
    return (f"Run {new_id} started with the config and inputs of run {run_id}.",
            gr.update(choices=training_runs(ctx.store), value=new_id))


def start_evaluation(ctx: Context, run_id, prompts, judge_run, rule, limit, proxy_run, llm_judge):
    if not run_id or not prompts:
        return "**Pick a policy run (Runs, above) and held-out prompts.**", gr.update()
    try:
        new_id = service.start_evaluation(ctx.runner, int(run_id), prompts, int(judge_run) if judge_run else None,
                                          rule or "", limit=int(limit or service.EVAL_PROMPTS),
                                          proxy_run=int(proxy_run) if proxy_run else None,
                                          **({"llm_judge": llm_judge} if llm_judge else {}))
    except StudioError as e:  # every error a user can act on, said as a sentence
        return f"**{e}**", gr.update()
    # Picked in Runs, to be followed there (its verdict ends up in the policy run's summary too).
    return (f"Run {new_id} started: evaluating run {run_id}; followed in Runs above.",
            gr.update(choices=training_runs(ctx.store), value=new_id))


def evaluation_defaults(ctx: Context, run_id) -> tuple:
    """The evaluation's menus for the picked run, when it trained a policy: held-out prompts it never
    trained on, judge reward models independent of what taught it (never its own proxy), and the
    reward models of its pairs as their proxy; the menus as they were for any other run."""
    run = run_row(ctx.store, run_id) if run_id else None
    if not run or not model_path(ctx.store, "policy", run_id=run_id):
        return gr.update(), gr.update(), gr.update()
    choices = judging.evaluation_choices(ctx.runner, int(run_id))
    names = dict((run_id, label) for label, run_id in reward_runs(ctx.store))
    judges = [("none", "")] + [(names[r], r) for r in choices.judges]
    proxies = [("none", "")] + [(names[r], r) for r in choices.proxies]
    judge_info = ("trained on prompts the policy and its proxy never saw (judge split)" if choices.judges else
                  f"none here is independent of run {run_id}'s training data: train one on other prompts "
                  "(Judge split), or judge by a rule or an LLM")
    prompts_info = ("prompts the policy never trained on" if choices.held_out else
                    f"every dataset shares prompts with run {run_id}'s training data (the verdict will say how "
                    "many): split one by prompt (alignstudio split) for prompts it never saw")
    return (gr.update(value=choices.prompts, info=prompts_info),
            gr.update(choices=judges, value=judges[1][1] if len(judges) > 1 else "", info=judge_info),
            gr.update(choices=proxies, value=proxies[1][1] if len(proxies) > 1 else ""))


def fresh_lists(ctx: Context, label: str) -> tuple:
    """The form's and the evaluation's lists as the store is now (the page may be older)."""
    store = ctx.store
    pairs = dataset_names(store, with_pairs=True)
    none_or_reward = [("none", "")] + reward_runs(store)
    return (gr.update(choices=data_choices(store, method_by_label(label))),
            gr.update(choices=[""] + pairs), gr.update(choices=training_runs(store)),
            gr.update(choices=reward_runs(store)), gr.update(choices=none_or_reward),
            gr.update(choices=dataset_names(store)), gr.update(choices=none_or_reward),
            gr.update(choices=none_or_reward), gr.update(choices=[("none", "")] + list(judging.gguf_models(store))))


# --- layout --------------------------------------------------------------------------------------

def form(ctx: Context) -> SimpleNamespace:
    """The method, its data and its settings, and the start button."""
    names = dataset_names(ctx.store, with_pairs=True)
    ui = SimpleNamespace()
    gr.Markdown(PURPOSE)
    ui.explanation = gr.Markdown(explanation(FIRST_METHOD), elem_id="train-explanation")
    with gr.Row():
        ui.kind = gr.Radio([m.label for m in METHODS.values()], value=FIRST_METHOD.label, label="Train")
        base = setting_component(FIELDS["base"], True)
        # Wide enough to read a name: at a narrow window the row wraps instead of squeezing them.
        ui.dataset = gr.Dropdown(names, value=names[0] if names else None, label="Pairs", min_width=200)
        ui.eval_dataset = gr.Dropdown([""] + names, value="", label="Eval pairs", info="empty: hold out a share",
                                      min_width=200)
        ui.reward_run = gr.Dropdown(reward_runs(ctx.store), label="Reward model", info="the run that trained it",
                                    visible=FIRST_METHOD.online, min_width=200)
        ui.judge_run = gr.Dropdown([("none", "")] + reward_runs(ctx.store), value="", label="Judge reward model",
                                   info="for the over-optimisation watch: shares no prompt with the reward model",
                                   visible=FIRST_METHOD.online, min_width=200)
        ui.judge_split = gr.Checkbox(False, label="Judge split", visible=FIRST_METHOD.judge_split, min_width=240,
                                     info="two reward models on the two halves of the prompts: a proxy to optimise "
                                          "and a judge that shares no prompt with it, to evaluate policies by")
    ui.controls = {"base": base}
    for start in range(0, len(MAIN_FIELDS), 6):
        with gr.Row():
            for name in MAIN_FIELDS[start:start + 6]:
                ui.controls[name] = setting_component(FIELDS[name], field_of(FIRST_METHOD, name) is not None)
    with gr.Accordion("All settings", open=False):
        for start in range(0, len(ADVANCED_FIELDS), 4):
            with gr.Row():
                for name in ADVANCED_FIELDS[start:start + 4]:
                    ui.controls[name] = setting_component(FIELDS[name], field_of(FIRST_METHOD, name) is not None)
    ui.sizing = gr.Markdown(elem_id="train-sizing")
    with gr.Row(equal_height=True):
        ui.start = gr.Button("Start training", variant="primary", scale=3)
        ui.force = gr.Checkbox(False, label="Start anyway", scale=1, elem_id="train-force",
                               info="even if the memory plan says the run will not fit the GPU")
    ui.started = gr.Markdown(elem_id="train-started")
    return ui


def runs_panel(ctx: Context, ui: SimpleNamespace) -> None:
    gr.Markdown("### Runs")
    with gr.Row():
        runs = training_runs(ctx.store)
        ui.picked = gr.Dropdown(runs, value=runs[0][1] if runs else None, label="Run", scale=3, min_width=300,
                                elem_id="train-run")
        usable = [u["interactive"] for u in run_controls(ctx, ui.picked.value)]
        ui.cancel = gr.Button("Cancel", variant="stop" if usable[0] else "secondary", scale=1, size="sm",
                              interactive=usable[0])
        ui.resume = gr.Button("Resume", scale=1, size="sm", interactive=usable[1])
        ui.again = gr.Button("Run again", scale=1, size="sm", interactive=usable[2])
    ui.summary = gr.Markdown(elem_id="train-summary")


def evaluation_panel(ctx: Context, ui: SimpleNamespace) -> None:
    store = ctx.store
    with gr.Accordion("Evaluate a policy against its base", open=False, elem_id="train-eval-box") as ui.eval_box:
        gr.Markdown("Both answer the same held-out prompts. A policy trained against a reward model is always "
                    "judged by it too, labelled **proxy**: it rises whether or not the model got better (for a "
                    "policy trained on pairs, a reward model of the same pairs can stand as its proxy). Pick at "
                    "least one judge it was not trained against. Each verdict comes with a 95% interval; one that "
                    "includes 50% says *no clear difference*.")
        with gr.Row():
            ui.eval_prompts = gr.Dropdown(dataset_names(store), label="Held-out prompts", scale=2)
            ui.eval_reward = gr.Dropdown([("none", "")] + reward_runs(store), value="", scale=2,
                                         label="Judge reward model",
                                         info="trained on prompts the policy and its proxy never saw (judge split)")
            ui.eval_rule = gr.Dropdown([("none", ""), *((f"{name}: {rule.description}", name)
                                                        for name, rule in RULES.items())],
                                       value="", label="Judge by a rule", scale=2)
            ui.eval_proxy = gr.Dropdown([("none", "")] + reward_runs(store), value="", scale=2,
                                        label=f"Proxy of the pairs ({PAIR_POLICIES})",
                                        info="trained on the policy's own pairs: shown beside the judges")
            ui.eval_llm = gr.Dropdown([("none", "")] + list(judging.gguf_models(store)), value="", scale=2,
                                      label="LLM judge", info="a GGUF chat model, asked in both orders")
            ui.eval_limit = gr.Number(service.EVAL_PROMPTS, label="At most prompts", precision=0, scale=1)
            ui.evaluate = gr.Button("Evaluate the picked run", scale=1, size="sm")
        ui.eval_said = gr.Markdown(elem_id="train-eval-said")  # the answer beside the button, not above the runs


def plots(ctx: Context, ui: SimpleNamespace) -> None:
    with gr.Row():
        # The mean of a step's values: a metric without a value there gets none, not a sum of 0.
        ui.loss_plot = gr.LinePlot(x="step", y="value", color="metric", y_aggregate="mean", color_map=COLOUR_MAP,
                                   label="Loss", height=340, elem_id="train-loss-plot")
        ui.metrics_plot = gr.LinePlot(x="step", y="value", color="metric", y_aggregate="mean", color_map=COLOUR_MAP,
                                      label="Metrics", height=340, elem_id="train-metrics-plot")
    ui.watch = gr.LinePlot(x="kl", y="value", color="metric", color_map=COLOUR_MAP, height=300, visible=False,
                           x_title="KL from the base (nats per answer)", y_title="win rate against the base",
                           elem_id="train-watch-plot")
    # A page opens on the newest run without a change event, so the choices start as that run's.
    first = method_of_run(ctx, ui.picked.value)
    ui.plotted = gr.CheckboxGroup(list(first.plotted), value=list(first.plotted_first),
                                  label=f"Metrics of run {ui.picked.value} ({first.label})" if ui.picked.value
                                  else "Metrics plotted", elem_id="train-plotted")
    ui.last_shown = gr.State(None)
    # The ticked metrics, kept apart from the checkboxes: the timer reads this, for a tick sent while
    # a newly picked run changes the checkboxes' choices would carry the old run's names, which
    # Gradio refuses ("Value: 'accuracy' is not in the list of choices").
    ui.ticked = gr.State(list(first.plotted_first))


def wire(ctx: Context, tab: gr.Tab, ui: SimpleNamespace) -> None:
    controls = [ui.controls[name] for name in CONTROL_ORDER]
    ui.controls["base"].submit(handler(suggest, ctx), [ui.kind, ui.controls["base"]],
                               [ui.sizing, *(ui.controls[name] for name in SUGGESTED)])
    ui.kind.change(handler(switch_method, ctx), ui.kind,
                   [*controls, ui.dataset, ui.eval_dataset, ui.reward_run, ui.judge_run, ui.judge_split,
                    ui.explanation])
    ui.start.click(handler(start_run, ctx), [ui.kind, ui.dataset, ui.eval_dataset, ui.reward_run, ui.judge_run,
                                             ui.judge_split, ui.force, *controls], [ui.started, ui.picked]).then(
        handler(export_note, ctx), [ui.started, ui.kind, ui.controls["base"]], ui.started, show_progress="hidden")
    for action, button in (("cancel", ui.cancel), ("resume", ui.resume), ("again", ui.again)):
        button.click(handler(control_run, ctx, action), ui.picked, [ui.started, ui.picked])
    ui.evaluate.click(handler(start_evaluation, ctx), [ui.picked, ui.eval_prompts, ui.eval_reward, ui.eval_rule,
                                                       ui.eval_limit, ui.eval_proxy, ui.eval_llm],
                      [ui.eval_said, ui.picked])
    ui.picked.change(handler(pick_run, ctx), ui.picked, [ui.summary, ui.loss_plot, ui.metrics_plot, ui.watch,
                                                         ui.plotted, ui.ticked, ui.last_shown, ui.cancel, ui.resume,
                                                         ui.again]).then(
        handler(evaluation_defaults, ctx), ui.picked, [ui.eval_prompts, ui.eval_reward, ui.eval_proxy],
        show_progress="hidden")
    ui.plotted.input(lambda run_id, names: (metrics_of(ctx, run_id, method_of_run(ctx, run_id), names)
                                            if run_id else None, names),
                     [ui.picked, ui.plotted], [ui.metrics_plot, ui.ticked])
    controls_of_run = [ui.cancel, ui.resume, ui.again]
    gr.Timer(2.0).tick(handler(tick, ctx), [ui.picked, ui.ticked, ui.last_shown],
                       [ui.summary, ui.loss_plot, ui.metrics_plot, ui.watch, ui.last_shown, *controls_of_run,
                        ui.picked],
                       show_progress="hidden")
    tab.select(handler(fresh_lists, ctx), ui.kind,
               [ui.dataset, ui.eval_dataset, ui.picked, ui.reward_run, ui.judge_run, ui.eval_prompts, ui.eval_reward,
                ui.eval_proxy, ui.eval_llm])


def build(ctx: Context, tab: gr.Tab) -> SimpleNamespace:
    ui = form(ctx)
    runs_panel(ctx, ui)
    evaluation_panel(ctx, ui)
    plots(ctx, ui)
    wire(ctx, tab, ui)
    return ui
