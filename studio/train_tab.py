"""Train tab: start a run of any training method from a form generated from its config, follow its
loss and metrics live, cancel, resume, or run it again with the same config and inputs, and
evaluate a policy against its base."""

from __future__ import annotations

import dataclasses
import json

import gradio as gr
import pandas as pd

from common.errors import StudioError
from pipelines.judges import RULES
from pipelines.memory import free_gpu_gb
from pipelines.settings import default_of, help_of, label_of, split_list, user_fields, value_type
from pipelines.training import parameter_count, suggested_settings
from store import Store
from store.queries import dataset_names, latest_metrics
from studio import judging, reports, service
from studio.methods import METHODS, PAIR_POLICIES, TRL_LOSSES, Method, method_by_label
from studio.runner import Runner

FIRST_METHOD = next(iter(METHODS.values()))
EXPLANATION = "\n".join(f"**{m.label}**: {m.summary}." for m in METHODS.values()) + f"""

Pairs take their preference from labels given here, else from the file they came from. The online
methods ({", ".join(m.label for m in METHODS.values() if m.online)}) need a trained reward model.
Training runs a few seconds a step on a CPU with the default model; a GPU is much faster.
"""
# Settings shown in the top row, beside the method and its data, not in the rows of settings.
INPUT_FIELDS = ("base",)


def form_fields() -> dict[str, dataclasses.Field]:
    """Every user setting of every method, by name (the first method's field where several have it)."""
    fields: dict[str, dataclasses.Field] = {}
    for method in METHODS.values():
        for f in user_fields(method.config):
            fields.setdefault(f.name, f)
    return fields


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


def reward_runs(store: Store) -> list[tuple[str, int]]:
    return [(f"{r['name']} (run {r['run_id']})", r["run_id"]) for r in store.query(
        "SELECT name, run_id FROM models WHERE purpose = 'reward' ORDER BY id DESC")]


def training_runs(store: Store) -> list[tuple[str, int]]:
    rows = store.query(f"""SELECT id, kind, status FROM runs WHERE kind IN ({', '.join('?' * len(METHODS))})
                           ORDER BY id DESC""", list(METHODS))
    return [(f"run {r['id']} · {r['kind']} · {r['status']}", r["id"]) for r in rows]


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
    for names in (*(m.plotted for m in METHODS.values()), *(m.losses for m in METHODS.values()), TRL_LOSSES):
        for name, colour in zip(names, COLOURS):
            colours.setdefault(name, colour)
    return colours


COLOUR_OF = metric_colours()
COLOUR_MAP = {name: code for name, (_, code) in COLOUR_OF.items()}


def metric_plot(store: Store, run_id: int, names: list[str], title: str) -> gr.LinePlot:
    """The logged values of `names` by step, one line each, the colours named in the label."""
    rows = store.query(f"""SELECT step, name AS metric, value FROM run_metrics
                           WHERE run_id = ? AND name IN ({', '.join('?' * len(names))}) ORDER BY step, rowid""",
                       [run_id, *names])
    logged = {r["metric"] for r in rows}
    shown = [n for n in names if n in logged]
    first_step = rows[0]["step"] if rows else 0
    frame = pd.DataFrame(rows + [{"step": first_step, "metric": name, "value": None}
                                 for name in COLOUR_OF if name not in logged])
    label = f"{title}: " + ", ".join(f"{name} ({COLOUR_OF[name][0]})" for name in shown) if shown else title
    return gr.LinePlot(value=frame, label=label)


def watch_plot(store: Store, run_id: int) -> gr.LinePlot:
    """The over-optimisation watch of an online run: the proxy's and the judge's win rates against
    the base on held-out prompts, by KL from the base (the gold-vs-proxy picture); hidden for
    runs without a watch."""
    rows = store.query("""SELECT k.value AS kl, m.name AS metric, m.value FROM run_metrics m
                          JOIN run_metrics k ON k.run_id = m.run_id AND k.step = m.step AND k.name = 'watch/kl'
                          WHERE m.run_id = ? AND m.name IN ('watch/proxy_win', 'watch/judge_win')
                          ORDER BY k.value""", [run_id])
    names = ("watch/proxy_win", "watch/judge_win")
    frame = pd.DataFrame(rows + [{"kl": rows[0]["kl"] if rows else 0.0, "metric": n, "value": None}
                                 for n in names if n not in {r["metric"] for r in rows}],
                         columns=["kl", "metric", "value"])
    label = ("Watch, on held-out prompts: win rate against the base by KL from it: proxy (the reward model "
             f"optimised, {COLOUR_OF[names[0]][0]}), judge ({COLOUR_OF[names[1]][0]})")
    return gr.LinePlot(value=frame, label=label, visible=bool(rows))


def bullets(lines) -> str:
    return "".join(f"\n- {line}" for line in lines)


def run_summary(runner: Runner, run_id: int) -> str:
    store = runner.store
    run = store.query("SELECT * FROM runs WHERE id = ?", [run_id])[0]
    config = json.loads(run["config"])
    latest = latest_metrics(store, run_id)
    parts = [f"**Run {run_id}** ({run['kind']}, base `{config['base']}`): **{run['status']}**"]
    path = store.scalar("SELECT path FROM models WHERE run_id = ? AND purpose = 'policy'", [run_id])
    evaluations = store.query("""SELECT id, message FROM runs WHERE kind = 'evaluate' AND status = 'succeeded'
                                 AND json_extract_string(config, '$.policy_adapter') = ? ORDER BY id""", [path]) \
        if path else []
    if run["status"] == "running" and "progress" in latest:
        parts.append(f"{latest['progress']:.0%}" + (f", about {latest['eta_s']:.0f} s left" if latest.get("eta_s") else ""))
    card = []
    if run["kind"] in METHODS and METHODS[run["kind"]].makes == "reward" and run["status"] == "succeeded":
        try:
            card = reports.rm_report(runner, run_id)
        except StudioError as e:  # no held-out pairs, or an older run: said where the card would be
            card = [str(e)]
    if config.get("judge_split"):
        parts.append(f"the {config['judge_split']} half of a judge split")
    if run["message"]:  # with a report card below, only what the run did
        parts.append(run["message"].split(";")[0] if card else run["message"])
    text = " · ".join(parts)
    if card:
        text += "\n\n**Report card** (held-out pairs)" + bullets(card)
    text += "".join(f"\n\n**Evaluation (run {e['id']})**" + bullets(e["message"].splitlines()) for e in evaluations)
    people = reports.people_verdict(store, run_id) if run["status"] == "succeeded" else None
    if people:
        text += "\n\n**People**" + bullets([people.removeprefix("people: ")])
    return text


def build(tab: gr.Tab, store: Store, runner: Runner) -> None:
    fields = form_fields()
    names = dataset_names(store, with_pairs=True)
    gr.Markdown(EXPLANATION)

    def in_first(name):
        return field_of(FIRST_METHOD, name) is not None

    with gr.Row():
        kind = gr.Radio([m.label for m in METHODS.values()], value=FIRST_METHOD.label, label="Train")
        base = setting_component(fields["base"], True)
        dataset = gr.Dropdown(names, value=names[0] if names else None, label="Pairs")
        eval_dataset = gr.Dropdown([""] + names, value="", label="Eval pairs", info="empty: hold out a share")
        reward_run = gr.Dropdown(reward_runs(store), label="Reward model", info="the run that trained it",
                                 visible=FIRST_METHOD.online)
        judge_run = gr.Dropdown([("none", "")] + reward_runs(store), value="", label="Judge reward model",
                                info="for the over-optimisation watch: shares no prompt with the reward model",
                                visible=FIRST_METHOD.online)
        judge_split = gr.Checkbox(False, label="Judge split", visible=FIRST_METHOD.judge_split,
                                  info="two reward models on the two halves of the prompts: a proxy to optimise and "
                                       "a judge that shares no prompt with it, to evaluate policies by")
    controls: dict[str, gr.components.Component] = {"base": base}
    main = [f for name, f in fields.items() if name not in INPUT_FIELDS and not f.metadata.get("advanced")]
    advanced = [f for f in fields.values() if f.metadata.get("advanced")]
    for start in range(0, len(main), 6):
        with gr.Row():
            for f in main[start:start + 6]:
                controls[f.name] = setting_component(f, in_first(f.name))
    with gr.Accordion("All settings", open=False):
        for start in range(0, len(advanced), 4):
            with gr.Row():
                for f in advanced[start:start + 4]:
                    controls[f.name] = setting_component(f, in_first(f.name))
    name_of = {component: name for name, component in controls.items()}
    sizing = gr.Markdown(elem_id="train-sizing")
    with gr.Row(equal_height=True):
        start_button = gr.Button("Start training", variant="primary", scale=3)
        force = gr.Checkbox(False, label="Start anyway", scale=1, elem_id="train-force",
                            info="even if the memory plan says the run will not fit the GPU")
    started = gr.Markdown(elem_id="train-started")

    gr.Markdown("### Runs")
    with gr.Row():
        runs = training_runs(store)
        picked = gr.Dropdown(runs, value=runs[0][1] if runs else None, label="Run", scale=3)
        cancel = gr.Button("Cancel", variant="stop", scale=1, size="sm")
        resume = gr.Button("Resume", scale=1, size="sm")
        again = gr.Button("Run again", scale=1, size="sm")
    summary = gr.Markdown(elem_id="train-summary")
    with gr.Accordion("Evaluate a policy against its base", open=False):
        gr.Markdown("Both answer the same held-out prompts. A policy trained against a reward model is always "
                    "judged by it too, labelled **proxy**: it rises whether or not the model got better (for a "
                    "policy trained on pairs, a reward model of the same pairs can stand as its proxy). Pick at "
                    "least one judge it was not trained against. Each verdict comes with a 95% interval; one that "
                    "includes 50% says *no clear difference*.")
        with gr.Row():
            eval_prompts = gr.Dropdown(dataset_names(store), label="Held-out prompts", scale=2)
            eval_reward = gr.Dropdown([("none", "")] + reward_runs(store), value="", scale=2,
                                      label="Judge reward model",
                                      info="trained on prompts the policy and its proxy never saw (judge split)")
            eval_rule = gr.Dropdown([("none", ""), *((f"{name}: {rule.description}", name) for name, rule in RULES.items())],
                                    value="", label="Judge by a rule", scale=2)
            eval_proxy = gr.Dropdown([("none", "")] + reward_runs(store), value="", scale=2,
                                     label=f"Proxy of the pairs ({PAIR_POLICIES})",
                                     info="trained on the policy's own pairs: shown beside the judges")
            eval_llm = gr.Dropdown([("none", "")] + list(judging.gguf_models(store)), value="", scale=2,
                                   label="LLM judge", info="a GGUF chat model, asked in both orders")
            eval_limit = gr.Number(service.EVAL_PROMPTS, label="At most prompts", precision=0, scale=1)
            evaluate = gr.Button("Evaluate the picked run", scale=1, size="sm")
    with gr.Row():
        # The mean of a step's values: a metric without a value there gets none, not a sum of 0.
        loss_plot = gr.LinePlot(x="step", y="value", color="metric", y_aggregate="mean", color_map=COLOUR_MAP,
                                label="Loss", height=340, elem_id="train-loss-plot")
        metrics_plot = gr.LinePlot(x="step", y="value", color="metric", y_aggregate="mean", color_map=COLOUR_MAP,
                                   label="Metrics", height=340, elem_id="train-metrics-plot")
    watch = gr.LinePlot(x="kl", y="value", color="metric", color_map=COLOUR_MAP, height=300, visible=False,
                        x_title="KL from the base (nats per answer)", y_title="win rate against the base",
                        elem_id="train-watch-plot")

    def method_of_run(run_id) -> Method:
        run_kind = store.scalar("SELECT kind FROM runs WHERE id = ?", [run_id]) if run_id else None
        return METHODS.get(run_kind, FIRST_METHOD)

    # A page opens on the newest run without a change event, so the choices start as that run's.
    first_run_method = method_of_run(picked.value)
    plotted = gr.CheckboxGroup(list(first_run_method.plotted), value=list(first_run_method.plotted_first),
                               label=f"Metrics of run {picked.value} ({first_run_method.label})" if picked.value
                               else "Metrics plotted", elem_id="train-plotted")
    last_shown = gr.State(None)
    # The ticked metrics, kept apart from the checkboxes: the timer reads this, for a tick sent while
    # a newly picked run changes the checkboxes' choices would carry the old run's names, which
    # Gradio refuses ("Value: 'accuracy' is not in the list of choices").
    ticked = gr.State(list(first_run_method.plotted_first))

    def switch_method(label):
        """Each setting shows when the method has it, with that method's default and help."""
        method = method_by_label(label)
        updates = {}
        for name, component in controls.items():
            f = field_of(method, name)
            updates[component] = gr.update(visible=False) if f is None else gr.update(
                visible=True, value=shown_value(f), label=label_of(f), info=help_of(f))
        choices = dataset_names(store) if method.online else dataset_names(store, with_pairs=True)
        updates[dataset] = gr.update(label="Prompts" if method.online else "Pairs", choices=choices)
        updates[eval_dataset] = gr.update(visible=not method.online)
        updates[reward_run] = gr.update(visible=method.online, choices=reward_runs(store))
        updates[judge_split] = gr.update(visible=method.judge_split)
        updates[judge_run] = gr.update(visible=method.online, choices=[("none", "")] + reward_runs(store))
        return updates

    def start_run(values):
        method = method_by_label(values[kind])
        settings = {}
        for component, name in name_of.items():
            f = field_of(method, name)
            if f is None:
                continue
            try:
                value = form_value(f, values[component])
            except (TypeError, ValueError):
                return f"**{label_of(f)}: '{values[component]}' is not a valid value.**", gr.update()
            if value is not None:
                settings[name] = value
        if not values[dataset]:
            return f"**Pick a dataset of {'prompts' if method.online else 'pairs'}.**", gr.update()
        try:
            if method.online:
                if not values[reward_run]:
                    return "**Pick a reward model (train one first).**", gr.update()
                run_id = service.start_training(runner, method.name, prompts=values[dataset],
                                             reward_run=int(values[reward_run]),
                                             judge_run=int(values[judge_run]) if values[judge_run] else None,
                                             force=values[force], **settings)
            elif method.judge_split and values[judge_split]:
                if values[eval_dataset]:
                    return "**A judge split holds out a share of each half: leave Eval pairs empty.**", gr.update()
                proxy, judge = service.start_judge_split(runner, values[dataset], **settings)
                return (f"Runs {proxy} (proxy: for PPO, GRPO and RLOO to optimise) and {judge} (judge: to evaluate "
                        "policies by) started.", gr.update(choices=training_runs(store), value=proxy))
            else:
                run_id = service.start_training(runner, method.name, dataset=values[dataset],
                                             eval_dataset=values[eval_dataset] or None, force=values[force],
                                             **settings)
            estimate = service.memory_plan(runner.workspace.models_dir, method.name, settings)
        except StudioError as e:  # every error a user can act on, said as a sentence
            return f"**{e}**", gr.update()
        plan_line = f" {estimate.describe()[0].upper()}{estimate.describe()[1:]}." if estimate else ""
        return f"Run {run_id} started.{plan_line}", gr.update(choices=training_runs(store), value=run_id)

    def metrics_of(run_id, method: Method, names):
        """The metrics plot of the ticked names that this method logs (its first ones if none)."""
        names = [n for n in names if n in method.plotted] or list(method.plotted_first)
        return metric_plot(store, run_id, names, "Metrics")

    def show(run_id, names):
        if not run_id:
            return "Pick a run to follow it.", None, None, gr.update(visible=False)
        method = method_of_run(run_id)
        return (run_summary(runner, run_id), metric_plot(store, run_id, list(method.losses), "Loss"),
                metrics_of(run_id, method, names), watch_plot(store, run_id))

    def pick(run_id):
        """Show the picked run with the metrics first plotted for its method."""
        method = method_of_run(run_id)
        names = list(method.plotted_first)
        # Named after the run: the method picked in the form above may be another one.
        label = f"Metrics of run {run_id} ({method.label})" if run_id else "Metrics plotted"
        return (*show(run_id, names), gr.update(choices=list(method.plotted), value=names, label=label), names,
                shown_state(run_id))

    def shown_state(run_id):
        """What the shown summary and plots depend on; the timer redraws only when it changes, so a
        finished run's plots stay still."""
        return store.query("""SELECT (SELECT status FROM runs WHERE id = ?) AS status,
                                     (SELECT count(*) FROM run_metrics WHERE run_id = ?) AS metrics,
                                     (SELECT count(*) FROM runs WHERE status NOT IN ('queued', 'running')) AS ended""",
                           [run_id, run_id])[0] | {"run": run_id}

    def tick(run_id, names, last_state):
        state = shown_state(run_id)
        if state == last_state:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return (*show(run_id, names), state)

    def control(action, run_id):
        if not run_id:
            return "**Pick a run first.**", gr.update()
        try:
            if action == "cancel":
                runner.cancel(run_id)
                return f"Run {run_id}: cancel requested (it saves a checkpoint first).", gr.update()
            if action == "resume":
                runner.resume(run_id)
                return f"Run {run_id} resumed from its last checkpoint.", gr.update()
            new_id = runner.rerun(run_id)
        except StudioError as e:  # every error a user can act on, said as a sentence
            return f"**{e}**", gr.update()
        return f"Run {new_id} started with the config and inputs of run {run_id}.", \
            gr.update(choices=training_runs(store), value=new_id)

    suggested = ("learning_rate", "batch_size", "grad_accum", "mini_batch_size", "gradient_checkpointing",
                 "load_in_4bit")

    def suggest(label, base_name):
        """Fill the form with the method's defaults adjusted to the base's size (and the GPU's)."""
        method = method_by_label(label)
        defaults = method.config()
        billions = parameter_count(base_name.strip(), runner.workspace.models_dir)
        gpu_gb = free_gpu_gb()
        settings = {**dataclasses.asdict(defaults), **suggested_settings(defaults, billions, gpu_gb)}
        size = (f"`{base_name.strip()}` has about {billions:.2f}B parameters" if billions is not None
                else f"the size of `{base_name.strip()}` is unknown: its config is not on this machine (a folder, "
                     "or the hub's cache once it has been downloaded)")
        note = f"Settings for this method; {size}." + (
            " Larger bases get a lower learning rate, smaller batches and gradient checkpointing"
            + ("; this GPU also needs a 4-bit base (QLoRA)." if settings.get("load_in_4bit") else ".")
            if billions and billions >= 1 else "")
        return [note] + [gr.update(value=settings[name]) if field_of(method, name) else gr.update()
                         for name in suggested]

    base.submit(suggest, [kind, base], [sizing, *(controls[name] for name in suggested)])
    kind.change(switch_method, kind, [*controls.values(), dataset, eval_dataset, reward_run, judge_run, judge_split])
    def export_note(said: str, label: str, base_name: str):
        """After a policy's run started: whether its base could be exported to GGUF (llama.cpp's
        converter on its tokenizer, a few seconds the first time), added to what the start said."""
        if not said.startswith("Run ") or method_by_label(label).makes != "policy":
            return gr.update()
        warning = service.export_warning((base_name or "").strip() or "default", runner.workspace.models_dir)
        return f"{said} **Note: {warning[0].upper()}{warning[1:]}.**" if warning else gr.update()

    start_button.click(start_run, {kind, dataset, eval_dataset, reward_run, judge_run, judge_split, force,
                                   *controls.values()}, [started, picked]).then(
        export_note, [started, kind, base], started, show_progress="hidden")
    for action, button in (("cancel", cancel), ("resume", resume), ("again", again)):
        button.click(lambda run_id, action=action: control(action, run_id), picked, [started, picked])

    def start_evaluation(run_id, prompts, judge_run_id, rule, limit, proxy_run_id, llm_judge):
        if not run_id or not prompts:
            return "**Pick a policy run above and held-out prompts.**", gr.update()
        try:
            new_id = service.start_evaluation(runner, int(run_id), prompts, int(judge_run_id) if judge_run_id else None,
                                           rule or "", limit=int(limit or service.EVAL_PROMPTS),
                                           proxy_run=int(proxy_run_id) if proxy_run_id else None,
                                           **({"llm_judge": llm_judge} if llm_judge else {}))
        except StudioError as e:  # every error a user can act on, said as a sentence
            return f"**{e}**", gr.update()
        return f"Run {new_id} started: evaluating run {run_id}.", gr.update()

    evaluate.click(start_evaluation, [picked, eval_prompts, eval_reward, eval_rule, eval_limit, eval_proxy, eval_llm],
                   [started, picked])
    picked.change(pick, picked, [summary, loss_plot, metrics_plot, watch, plotted, ticked, last_shown])
    plotted.input(lambda run_id, names: (metrics_of(run_id, method_of_run(run_id), names) if run_id else None, names),
                  [picked, plotted], [metrics_plot, ticked])
    gr.Timer(2.0).tick(tick, [picked, ticked, last_shown], [summary, loss_plot, metrics_plot, watch, last_shown],
                       show_progress="hidden")

    def refresh(label):
        pairs = dataset_names(store, with_pairs=True)
        choices = dataset_names(store) if method_by_label(label).online else pairs
        return (gr.update(choices=choices), gr.update(choices=[""] + pairs), gr.update(choices=training_runs(store)),
                gr.update(choices=reward_runs(store)))

    tab.select(refresh, kind, [dataset, eval_dataset, picked, reward_run]).then(
        lambda: (gr.update(choices=dataset_names(store)),
                 *[gr.update(choices=[("none", "")] + reward_runs(store))] * 2,
                 gr.update(choices=[("none", "")] + list(judging.gguf_models(store)))),
        outputs=[eval_prompts, eval_reward, eval_proxy, eval_llm])
