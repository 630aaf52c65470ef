"""Train tab: start a reward-model or DPO run from a form, follow its loss and metrics live,
cancel, resume, or run it again with the same config and inputs."""

from __future__ import annotations

import dataclasses
import json

import gradio as gr
import pandas as pd

from pipelines.dpo import LOSS_TYPES, DPOTrainConfig
from pipelines.grpo import OnlineTrainConfig
from pipelines.ppo import PPOTrainConfig
from pipelines.reward import RewardTrainConfig
from pipelines.training import parameter_count, suggested_settings
from store import Store
from store.queries import dataset_names, latest_metrics
from studio.runner import MODULES, ONLINE_KINDS, TRAIN_CONFIGS, RunError, Runner

KINDS = {"Reward model": "reward", "DPO": "dpo", "PPO": "ppo", "GRPO": "grpo", "RLOO": "rloo"}
DEFAULTS = {"reward": RewardTrainConfig(), "dpo": DPOTrainConfig(), "ppo": PPOTrainConfig(),
            "grpo": OnlineTrainConfig(), "rloo": OnlineTrainConfig()}
# Per kind, the metrics that can be plotted beside the loss, and those plotted at first: ones on
# one scale, so that a length of 40 tokens does not flatten a reward of 0.3.
PLOTTED = {"reward": ["accuracy", "margin", "eval_accuracy", "eval_margin"],
           "dpo": ["rewards/margins", "rewards/chosen", "rewards/rejected", "rewards/accuracies",
                   "eval_rewards/margins"],
           "ppo": ["reward", "kl", "ended", "entropy", "clip_fraction", "response_length"],
           "grpo": ["reward", "kl", "reward_std", "entropy", "completions/mean_length", "completions/clipped_ratio"],
           "rloo": ["reward", "kl", "reward_std", "entropy", "completions/mean_length", "completions/clipped_ratio"]}
PLOTTED_FIRST = {"reward": PLOTTED["reward"], "dpo": PLOTTED["dpo"], "ppo": ["reward", "kl"],
                 "grpo": ["reward", "kl"], "rloo": ["reward", "kl"]}
TRL_LOSSES = ["loss", "eval_loss"]
LOSSES = {"ppo": ["policy_loss", "value_loss"]}  # the others log TRL_LOSSES
FORM_FIELDS = ("learning_rate", "batch_size", "grad_accum", "max_length", "epochs", "max_steps", "lora_r",
               "lora_alpha", "seed", "eval_share")
EXPLANATION = """
**Reward model**: LoRA on the base with a one-number score head, trained so that the chosen
response of a pair scores above the rejected one (TRL's RewardTrainer); its eval accuracy is the
share of held-out pairs it orders like the labels. **DPO**: LoRA on the policy, trained directly on
the pairs (TRL's DPOTrainer), the base with its adapter disabled as the reference. Pairs take their
preference from labels given here, else from the file they came from. **PPO** (the studio's own:
value head, per-token KL penalty to the base, GAE, clipped objective), **GRPO** and **RLOO** (TRL's)
answer the prompts of a dataset and learn from a trained reward model's scores; GRPO and RLOO need
no value model and suit small GPUs. Training runs a few seconds a step on a CPU with the default
model; a GPU is much faster.
"""


def reward_runs(store: Store) -> list[tuple[str, int]]:
    return [(f"{r['name']} (run {r['run_id']})", r["run_id"]) for r in store.query(
        "SELECT name, run_id FROM models WHERE purpose = 'reward' ORDER BY id DESC")]


def training_runs(store: Store) -> list[tuple[str, int]]:
    rows = store.query(f"""SELECT id, kind, status FROM runs WHERE kind IN ({', '.join('?' * len(TRAIN_CONFIGS))})
                           ORDER BY id DESC""", list(TRAIN_CONFIGS))
    return [(f"run {r['id']} · {r['kind']} · {r['status']}", r["id"]) for r in rows]


# Fixed colours, named in the plot's label: Gradio's own legend is cut off below small plots.
COLOURS = [("blue", "#1f77b4"), ("orange", "#ff7f0e"), ("green", "#2ca02c"), ("red", "#d62728"),
           ("purple", "#9467bd"), ("brown", "#8c564b")]


def metric_colours() -> dict[str, tuple[str, str]]:
    """One colour per metric name, distinct within each kind's plots. Gradio's plot rebuilds its
    colour scale only when its colour map changes, and otherwise only swaps the data; so every plot
    keeps this one map, and every name is in every frame (a row without a value if none), for a metric
    that appears later (an eval metric, another kind's run) to be drawn at all."""
    colours: dict[str, tuple[str, str]] = {}
    for names in (*PLOTTED.values(), *LOSSES.values(), TRL_LOSSES):
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


def run_summary(store: Store, run_id: int) -> str:
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
    if run["message"]:
        parts.append(run["message"])
    text = " · ".join(parts) + "".join(f"\n\nEvaluation (run {e['id']}): {e['message']}" for e in evaluations)
    if run["kind"] == "ppo":  # the studio's own loop runs on one device
        return text
    command = f"accelerate launch -m {MODULES[run['kind']]} --config {run['folder']}/config.json"
    return text + f"\n\nOn several GPUs the same run: `{command}`"


def build(tab: gr.Tab, store: Store, runner: Runner) -> None:
    reward_defaults, dpo_defaults = DEFAULTS["reward"], DEFAULTS["dpo"]
    names = dataset_names(store, with_pairs=True)
    gr.Markdown(EXPLANATION)
    with gr.Row():
        kind = gr.Radio(list(KINDS), value="Reward model", label="Train")
        base = gr.Textbox("default", label="Base model", info="default, a local folder or a hub id; Enter suggests settings")
        dataset = gr.Dropdown(names, value=names[0] if names else None, label="Pairs")
        eval_dataset = gr.Dropdown([""] + names, value="", label="Eval pairs", info="empty: hold out a share")
    with gr.Row():
        learning_rate = gr.Number(reward_defaults.learning_rate, label="Learning rate")
        batch_size = gr.Number(reward_defaults.batch_size, label="Batch size", precision=0, minimum=1)
        grad_accum = gr.Number(reward_defaults.grad_accum, label="Gradient accumulation", precision=0, minimum=1)
        max_length = gr.Number(reward_defaults.max_length, label="Max tokens", precision=0, minimum=16)
        epochs = gr.Number(reward_defaults.epochs, label="Epochs", minimum=0)
        max_steps = gr.Number(reward_defaults.max_steps, label="Max steps", precision=0, info="-1: use epochs")
    with gr.Row():
        lora_r = gr.Number(reward_defaults.lora_r, label="LoRA r", precision=0, minimum=1)
        lora_alpha = gr.Number(reward_defaults.lora_alpha, label="LoRA alpha", precision=0, minimum=1)
        seed = gr.Number(reward_defaults.seed, label="Seed", precision=0)
        eval_share = gr.Number(reward_defaults.eval_share, label="Held-out share", minimum=0, maximum=0.9)
        beta = gr.Number(dpo_defaults.beta, label="DPO beta", visible=False)
        loss_type = gr.Dropdown(list(LOSS_TYPES), value=dpo_defaults.loss_type, label="DPO loss", visible=False)
        precompute = gr.Checkbox(False, label="Precompute reference log-probs", visible=False)
    with gr.Row(visible=False) as online_row:
        reward_run = gr.Dropdown(reward_runs(store), label="Reward model", info="the run that trained it")
        max_new_tokens = gr.Number(DEFAULTS["ppo"].max_new_tokens, label="Max answer tokens", precision=0, minimum=1)
        kl = gr.Number(DEFAULTS["ppo"].kl_coef, label="KL weight", info="PPO kl_coef; GRPO/RLOO beta")
        num_generations = gr.Number(DEFAULTS["grpo"].num_generations, label="Answers per prompt", precision=0,
                                    minimum=2)
        num_iterations = gr.Number(DEFAULTS["grpo"].num_iterations, label="Updates per batch", precision=0,
                                   minimum=1, info="optimizer steps on each batch of answers")
    sizing = gr.Markdown(elem_id="train-sizing")
    start = gr.Button("Start training", variant="primary")
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
        with gr.Row():
            eval_prompts = gr.Dropdown(dataset_names(store), label="Held-out prompts", scale=2)
            eval_reward = gr.Dropdown(reward_runs(store), label="Judged by the reward model", scale=2)
            eval_limit = gr.Number(64, label="At most prompts", precision=0, minimum=1, scale=1)
            evaluate = gr.Button("Evaluate the picked run", scale=1, size="sm")
    with gr.Row():
        # The mean of a step's values: a metric without a value there gets none, not a sum of 0.
        loss_plot = gr.LinePlot(x="step", y="value", color="metric", y_aggregate="mean", color_map=COLOUR_MAP,
                                label="Loss", height=340, elem_id="train-loss-plot")
        metrics_plot = gr.LinePlot(x="step", y="value", color="metric", y_aggregate="mean", color_map=COLOUR_MAP,
                                   label="Metrics", height=340, elem_id="train-metrics-plot")
    def run_kind_of(run_id):
        return store.scalar("SELECT kind FROM runs WHERE id = ?", [run_id]) if run_id else "reward"

    # A page opens on the newest run without a change event, so the choices start as that run's.
    first_kind = run_kind_of(picked.value)
    plotted = gr.CheckboxGroup(PLOTTED[first_kind], value=PLOTTED_FIRST[first_kind], label="Metrics plotted",
                               elem_id="train-plotted")
    last_shown = gr.State(None)

    def switch_kind(label):
        train_kind = KINDS[label]
        defaults = DEFAULTS[train_kind]
        online = train_kind in ONLINE_KINDS
        kl_default = defaults.kl_coef if train_kind == "ppo" else getattr(defaults, "beta", None)
        choices = dataset_names(store) if online else dataset_names(store, with_pairs=True)
        return ([gr.update(value=defaults.learning_rate), gr.update(value=defaults.batch_size),
                 gr.update(value=defaults.max_steps)]
                + [gr.update(visible=train_kind == "dpo")] * 3
                + [gr.update(visible=online), gr.update(value=kl_default),
                   gr.update(label="Prompts" if online else "Pairs", choices=choices),
                   gr.update(visible=not online), gr.update(visible=not online), gr.update(visible=not online)]
                + [gr.update(visible=train_kind in ("grpo", "rloo"))] * 2)

    def start_run(label, base_name, data, eval_pairs, *values):
        form = dict(zip(FORM_FIELDS, values[:len(FORM_FIELDS)]))
        beta_value, loss_value, precompute_value, reward_run_id, new_tokens, kl_value, generations, iterations = \
            values[len(FORM_FIELDS):]
        train_kind = KINDS[label]
        settings = {k: v for k, v in form.items() if v is not None}
        if not data:
            return "**Pick a dataset.**", gr.update()
        try:
            if train_kind in ONLINE_KINDS:
                if not reward_run_id:
                    return "**Pick a reward model (train one first).**", gr.update()
                settings.pop("eval_share", None)
                settings.update(max_new_tokens=int(new_tokens))
                if train_kind == "ppo":
                    settings.update(kl_coef=kl_value)
                else:
                    settings.update(beta=kl_value, num_generations=int(generations), num_iterations=int(iterations))
                run_id = runner.start_online(train_kind, data, int(reward_run_id), base=base_name.strip(), **settings)
            else:
                if train_kind == "dpo":
                    settings.update(beta=beta_value, loss_type=loss_value, precompute_ref_log_probs=precompute_value)
                run_id = runner.start_training(train_kind, data, eval_pairs or None, base=base_name.strip(), **settings)
        except RunError as e:
            return f"**{e}**", gr.update()
        return f"Run {run_id} started.", gr.update(choices=training_runs(store), value=run_id)

    def metrics_of(run_id, run_kind, names):
        """The metrics plot of the ticked names that this kind logs (its first ones if none)."""
        names = [n for n in names if n in PLOTTED[run_kind]] or PLOTTED_FIRST[run_kind]
        return metric_plot(store, run_id, names, "Metrics")

    def show(run_id, names):
        if not run_id:
            return "Pick a run to follow it.", None, None
        run_kind = run_kind_of(run_id)
        return (run_summary(store, run_id), metric_plot(store, run_id, LOSSES.get(run_kind, TRL_LOSSES), "Loss"),
                metrics_of(run_id, run_kind, names))

    def pick(run_id):
        """Show the picked run with the metrics first plotted for its kind."""
        run_kind = run_kind_of(run_id)
        names = PLOTTED_FIRST[run_kind]
        return (*show(run_id, names), gr.update(choices=PLOTTED[run_kind], value=names), shown_state(run_id))

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
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
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
        except RunError as e:
            return f"**{e}**", gr.update()
        return f"Run {new_id} started with the config and inputs of run {run_id}.", \
            gr.update(choices=training_runs(store), value=new_id)

    form = [learning_rate, batch_size, grad_accum, max_length, epochs, max_steps, lora_r, lora_alpha, seed, eval_share]
    def suggest(label, base_name):
        """Fill the form with the method's defaults adjusted to the base's size."""
        defaults = DEFAULTS[KINDS[label]]
        billions = parameter_count(base_name.strip(), runner.workspace.models_dir)
        settings = {**dataclasses.asdict(defaults), **suggested_settings(defaults, billions)}
        size = (f"`{base_name.strip()}` has about {billions:.2f}B parameters" if billions is not None
                else f"the size of `{base_name.strip()}` is unknown until it is on this machine")
        note = f"Settings for this method; {size}." + (
            " Larger bases get a lower learning rate, a smaller batch with gradient accumulation and gradient "
            "checkpointing; on a small GPU add 4-bit loading (CLI: --load-in-4bit)." if billions and billions >= 1 else "")
        return [note] + [gr.update(value=settings[name]) for name in ("learning_rate", "batch_size", "grad_accum")]

    base.submit(suggest, [kind, base], [sizing, learning_rate, batch_size, grad_accum])
    kind.change(switch_kind, kind, [learning_rate, batch_size, max_steps, beta, loss_type, precompute, online_row, kl,
                                    dataset, eval_dataset, eval_share, epochs, num_generations, num_iterations])
    start.click(start_run, [kind, base, dataset, eval_dataset, *form, beta, loss_type, precompute, reward_run,
                            max_new_tokens, kl, num_generations, num_iterations], [started, picked])
    for action, button in (("cancel", cancel), ("resume", resume), ("again", again)):
        button.click(lambda run_id, action=action: control(action, run_id), picked, [started, picked])
    def start_evaluation(run_id, prompts, reward_run_id, limit):
        if not run_id or not prompts or not reward_run_id:
            return "**Pick a policy run above, held-out prompts and a reward model.**", gr.update()
        try:
            new_id = runner.start_evaluation(int(run_id), int(reward_run_id), prompts, int(limit or 64))
        except RunError as e:
            return f"**{e}**", gr.update()
        return f"Run {new_id} started: evaluating run {run_id}.", gr.update()

    evaluate.click(start_evaluation, [picked, eval_prompts, eval_reward, eval_limit], [started, picked])
    picked.change(pick, picked, [summary, loss_plot, metrics_plot, plotted, last_shown])
    plotted.input(lambda run_id, names: metrics_of(run_id, run_kind_of(run_id), names) if run_id else None,
                  [picked, plotted], metrics_plot)
    gr.Timer(2.0).tick(tick, [picked, plotted, last_shown], [summary, loss_plot, metrics_plot, last_shown],
                       show_progress="hidden")

    def refresh(label):
        pairs = dataset_names(store, with_pairs=True)
        choices = dataset_names(store) if KINDS[label] in ONLINE_KINDS else pairs
        return (gr.update(choices=choices), gr.update(choices=[""] + pairs), gr.update(choices=training_runs(store)),
                gr.update(choices=reward_runs(store)))

    tab.select(refresh, kind, [dataset, eval_dataset, picked, reward_run]).then(
        lambda: (gr.update(choices=dataset_names(store)), gr.update(choices=reward_runs(store))),
        outputs=[eval_prompts, eval_reward])
