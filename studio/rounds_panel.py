"""Home's Next round: the loop closes itself from the page (studio.rounds, as `alignstudio round`).
The current policy answers the prompts N times, the reward model picks each prompt's best and
worst, a new policy trains from it (iterative DPO, or SFT on the best: rejection sampling), and an
independent judge compares it with the previous one. Its settings start from the dataset Home
shows: its newest policy, its reward model, held-out prompts the policy never trained on and a
judge independent of it. The rounds run in a thread, one set at a time; the jobs they start show in
the jobs bar, and the panel keeps each round's line."""

from __future__ import annotations

import threading
import traceback
from types import SimpleNamespace

import gradio as gr

from common.errors import StudioError
from pipelines.judges import RULES
from pipelines.settings import help_of, label_of
from store.loop import loop_state
from store.models import policy_adapters, reward_models
from store.queries import dataset_names
from studio import judging
from studio.context import Context, handler
from studio.rounds import RoundSettings, check_start, run_rounds

FIELDS = {f.name: f for f in RoundSettings.__dataclass_fields__.values()}  # shown: mode, rounds, n, max_new_tokens


class RoundsInThread:
    """One set of rounds at a time, in a thread; its lines as they come."""

    def __init__(self, ctx: Context):
        self.ctx, self.thread, self.lines = ctx, None, []

    def start(self, **arguments) -> str:
        if self.thread is not None and self.thread.is_alive():
            return "**Rounds are running already: follow them below (and in the jobs bar), or cancel their run.**"
        self.lines = ["Started."]
        self.thread = threading.Thread(target=self._run, kwargs=arguments, daemon=True)
        self.thread.start()
        return "Started: the lines below follow each round."

    def _run(self, **arguments) -> None:
        try:
            run_rounds(self.ctx.runner, say=self.lines.append, **arguments)
        except StudioError as e:  # a sentence for the user; each run keeps its own log
            self.lines.append(f"**Stopped:** {e}")
        except Exception as e:  # a bug: said here, its traceback in the server's log
            traceback.print_exc()
            self.lines.append(f"**Stopped by an internal error** ({type(e).__name__}); the server's log has it.")

    def report(self) -> str:
        running = self.thread is not None and self.thread.is_alive()
        return "\n".join(f"- {line}" for line in self.lines) + ("\n\n*working…*" if running else "")


def defaults(ctx: Context, dataset: str | None) -> tuple:
    """The menus as the store is now, set for `dataset`: its newest policy (else the default model),
    its newest reward model, prompts the policy never trained on and an independent judge (else the
    heuristic rule), the pairs' prompts to answer."""
    store = ctx.store
    names = dataset_names(store)
    rms = [r["name"] for r in reward_models(store)]
    policies = ["default", *policy_adapters(store)]
    state = loop_state(store, dataset) if dataset else None
    mine = [p for p in (state or {}).get("policies", []) if p["status"] == "succeeded"]
    policy = mine[0]["model"] if mine else "default"
    reward = next((r["model"] for r in (state or {}).get("reward_models", []) if r["status"] == "succeeded"),
                  rms[0] if rms else None)
    held_out, judge, rule = None, "", "heuristic"
    if mine:
        offered = judging.evaluation_choices(ctx.runner, mine[0]["id"])
        held_out = offered.prompts if offered.held_out else None
        if offered.judges:
            judge, rule = offered.judges[0], ""
    judges = [("none", "")] + judging.reward_runs(store)
    prompts = state["pairs_dataset"] if state else (names[0] if names else None)
    return (gr.update(choices=policies, value=policy), gr.update(choices=names, value=prompts),
            gr.update(choices=rms, value=reward), gr.update(choices=names, value=held_out),
            gr.update(choices=judges, value=judge), gr.update(value=rule))


def start(ctx: Context, rounds: RoundsInThread, policy, prompts, reward_model, eval_prompts, judge_run, rule,
          mode, count, n, max_new_tokens) -> str:
    if not (policy and prompts and reward_model and eval_prompts):
        return "**Pick the policy, the prompts it answers, the reward model that picks, and held-out prompts.**"
    if not judge_run and not rule:
        return "**Pick an independent judge: a reward model trained on other prompts, or a rule.**"
    try:
        settings = RoundSettings(mode=mode, rounds=int(count or 1), n=int(n or 4),
                                 max_new_tokens=int(max_new_tokens or 128))
        # What a round needs, said here before the thread starts: no dataset, no reward model, a run
        # still running.
        check_start(ctx.runner, prompts, reward_model, eval_prompts, int(judge_run) if judge_run else None, rule)
    except (TypeError, ValueError) as e:
        return f"**Round settings: {e}**"
    except StudioError as e:
        return f"**{e}**"
    return rounds.start(prompts=prompts, reward_model=reward_model, eval_prompts=eval_prompts, policy=policy,
                        judge_run=int(judge_run) if judge_run else None, rule=rule or "", settings=settings)


def build(ctx: Context, project: gr.Dropdown) -> SimpleNamespace:
    rounds = RoundsInThread(ctx)
    ui = SimpleNamespace()
    with gr.Accordion("Next round: the policy answers, the reward model picks, a new policy trains", open=False,
                      elem_id="rounds-box") as ui.box:
        gr.Markdown("Each round the current policy answers every prompt N times, the reward model scores the "
                    "answers, each prompt's best is paired against its worst, and a new policy trains from the "
                    "current one: by DPO on those pairs (iterative DPO), or by SFT on the best answers (rejection "
                    "sampling). An independent judge then compares it with the previous policy on held-out "
                    "prompts; a round it calls worse stops the rounds, and the best round by the judge is kept, "
                    "never by the reward model alone.")
        with gr.Row():
            ui.policy = gr.Dropdown([], label="Start from", info="the current policy (or the base)", scale=2)
            ui.prompts = gr.Dropdown([], label="Prompts it answers", scale=2)
            ui.reward = gr.Dropdown([], label="Reward model", info="picks best and worst", scale=2)
            ui.eval_prompts = gr.Dropdown([], label="Judged on", info="prompts the policy never trained on", scale=2)
            ui.judge = gr.Dropdown([("none", "")], value="", label="Judge reward model", scale=2,
                                   info="trained on other prompts than the reward model")
            ui.rule = gr.Dropdown([("none", ""), *((name, name) for name in RULES)], value="heuristic",
                                  label="Or judge by a rule", scale=1)
        with gr.Row():
            ui.mode = gr.Radio(list(FIELDS["mode"].metadata["choices"]), value=FIELDS["mode"].default,
                               label=label_of(FIELDS["mode"]), info=help_of(FIELDS["mode"]), scale=3)
            ui.count, ui.n, ui.tokens = (gr.Number(FIELDS[name].default, label=label_of(FIELDS[name]), precision=0,
                                                   info=help_of(FIELDS[name]), scale=1)
                                         for name in ("rounds", "n", "max_new_tokens"))
            ui.start = gr.Button("Start the rounds", variant="primary", scale=1, elem_id="rounds-start")
        ui.said = gr.Markdown(elem_id="rounds-said")
        ui.log = gr.Markdown(elem_id="rounds-log")
    menus = [ui.policy, ui.prompts, ui.reward, ui.eval_prompts, ui.judge, ui.rule]
    project.change(handler(defaults, ctx), project, menus, show_progress="hidden")
    ui.box.expand(handler(defaults, ctx), project, menus, show_progress="hidden")
    ui.start.click(handler(start, ctx, rounds), [*menus, ui.mode, ui.count, ui.n, ui.tokens], ui.said)
    gr.Timer(3.0).tick(rounds.report, outputs=ui.log, show_progress="hidden")
    return ui
