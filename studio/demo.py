"""The whole loop on the demo prompts, stage by stage: candidates, perplexity filter, labels,
reward model, DPO, evaluation, GGUF export, comparison.

`alignstudio demo --auto` runs it unattended; without `--auto` it stops once the pairs are ready
and asks for labels in the Label tab; run again, it goes on from those labels (stages whose
output exists are not repeated). The
Home tab's "Guided run" starts the unattended run in the app. Every stage reports what it did,
its figures and how long it took; the report is kept in `<workspace>/demo-report.json`.

The automatic labeller is a plain, stated rule (`HEURISTIC_RULE`), not a judge of quality. The
demo teaches the model to finish its answers, not ramble, and keep them short; a user can see each
verdict in the Label tab (annotator `heuristic`). The evaluation judges the policy by that same
rule on fresh answers to held-out prompts: the rule is the gold standard the labels came from. The
demo's reward model, trained on the same pairs, is reported beside it as their proxy.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from pipelines.judges import heuristic_verdict
from pipelines.settings import setting
from store import Store, import_file
from store.filtering import FilterError, filter_by_perplexity
from store.imports import prompt_subset
from store.labelling import add_rule_labels
from store.models import gguf_files
from store.queries import latest_metrics, pairs_not_labelled_by, pairs_with_a_preference, responses_of_model
from studio import service
from studio.runner import RunError, Runner
from studio.workspace import ASSETS, Workspace

DEMO_PROMPTS = "demo-prompts"
TRAIN_PROMPTS, HELDOUT_PROMPTS, PAIRS = "demo-train", "demo-heldout", "demo-pairs"
LABELLER = "heuristic"
REPORT = "demo-report.json"
class DemoStop(Exception):
    """The demo waits for the user (labels); the message says what to do."""


@dataclass
class DemoSettings:
    """Small defaults: the unattended demo finishes in under 30 minutes on a 2-core CPU. On a GPU,
    raise prompts, candidates and steps (the report says how)."""
    base: str = setting("default", "the model to align")
    prompts: int = setting(40, "demo prompts that get candidates")
    heldout: int = setting(48, "other prompts, for the evaluation and the comparison")
    candidates: int = setting(4, "answers sampled per prompt")
    # Long enough that about a quarter of the default model's answers end on their own: the rule's
    # first criterion (end the answer) can only be taught by pairs where one answer ended.
    max_new_tokens: int = setting(256, "answer length limit in tokens")
    keep_quantile: float = setting(0.75, "per prompt, the share of candidates kept by perplexity (3 of 4: 3 pairs "
                                   "per prompt)")
    rm_steps: int = setting(30, "reward model steps")
    dpo_steps: int = setting(30, "DPO steps")
    # 5e-5 (the training default) moved the policy 0.1 nats in 30 steps and it won 48% of the
    # held-out prompts; 5e-4 moved it 6.6 nats, to answers 61 tokens shorter, and it won 88%.
    dpo_learning_rate: float = setting(5e-4, "DPO learning rate (LoRA); 30 steps need a high one")
    batch_size: int = setting(4, "training batch size")
    max_length: int = setting(384, "training tokens of prompt + answer")
    eval_prompts: int = setting(48, "held-out prompts in the evaluation")
    compare_prompts: int = setting(8, "held-out prompts in the comparison")
    seed: int = setting(0, "seed of sampling and training")


@dataclass
class Stage:
    name: str
    seconds: float
    summary: str
    figures: dict = field(default_factory=dict)


def auto_label(store: Store, dataset: str) -> dict:
    """Label every pair of `dataset` not yet labelled by the heuristic; counts per verdict."""
    verdicts = []
    for r in pairs_not_labelled_by(store, store.dataset_id(dataset), LABELLER):
        sides = [{"text": " ".join(m["content"] for m in json.loads(r[k])),
                  "finish": json.loads(r[g] or "{}").get("finish", "stop")} for k, g in (("a", "ga"), ("b", "gb"))]
        verdicts.append((r["id"], heuristic_verdict(*sides)))
    add_rule_labels(store, LABELLER, verdicts)
    return {v: sum(verdict == v for _, verdict in verdicts) for v in ("first", "second", "tie")}


@dataclass
class DemoRun:
    """The demo's stages in order, each timed and written to the report as it ends."""
    store: Store
    runner: Runner
    s: DemoSettings
    workspace: Workspace
    follow: Callable[[int], dict]
    on_stage: Callable[[Stage], None]
    stages: list[Stage] = field(default_factory=list)
    started: float = 0.0

    def begin(self) -> None:
        self.started = time.monotonic()

    def stage(self, name: str, summary: str, **figures) -> None:
        self.stages.append(Stage(name, round(time.monotonic() - self.started, 1), summary, figures))
        report = {"settings": asdict(self.s), "stages": [asdict(x) for x in self.stages]}
        (self.workspace.root / REPORT).write_text(json.dumps(report, indent=2), encoding="utf-8")
        self.on_stage(self.stages[-1])

    def job(self, run_id: int) -> dict:
        run = self.follow(run_id)
        if run["status"] != "succeeded":
            raise RunError(f"run {run_id} ({run['kind']}) {run['status']}: {run['message']}")
        return run

    def prompts(self) -> None:
        s, store = self.s, self.store
        self.begin()
        if store.dataset_id(DEMO_PROMPTS) is None:
            import_file(store, ASSETS / "demo_prompts.jsonl", DEMO_PROMPTS, internal=True)
        n_train = prompt_subset(store, TRAIN_PROMPTS, DEMO_PROMPTS, 0, s.prompts)
        n_heldout = prompt_subset(store, HELDOUT_PROMPTS, DEMO_PROMPTS, s.prompts, s.heldout)
        self.stage("prompts", f"{n_train} demo prompts get candidates, {n_heldout} others are held out",
                   train=n_train, heldout=n_heldout)

    def pairs(self) -> None:
        """Candidates, their perplexity, and the pairs the filter keeps."""
        s = self.s
        self.begin()
        run = self.job(service.start_generation(self.runner, TRAIN_PROMPTS, model=s.base, n=s.candidates,
                                                max_new_tokens=s.max_new_tokens, seed=s.seed))
        made = responses_of_model(self.store, s.base)
        self.stage("candidates", f"{made} answers sampled ({s.candidates} per prompt) from {s.base} - "
                   f"{run['message']}", responses=made)
        self.begin()
        try:
            message = self.job(service.start_perplexity(self.runner, TRAIN_PROMPTS, model=s.base))["message"]
        except RunError as e:
            if "no responses left" not in str(e):
                raise
            message = "all were scored already"
        self.stage("perplexity", f"perplexity of every candidate under {s.base}: {message}")
        self.begin()
        try:
            plan = filter_by_perplexity(self.store, TRAIN_PROMPTS, s.base, PAIRS, keep_quantile=s.keep_quantile,
                                        per_prompt=True)
        except FilterError as e:
            raise RunError(str(e)) from None
        self.stage("filter", plan.summary(PAIRS), kept_responses=len(plan.kept_responses),
                   pairs=len(plan.formed_pairs))

    def labels(self, auto: bool) -> None:
        self.begin()
        if auto:
            counts = auto_label(self.store, PAIRS)
            self.stage("labels", f"the heuristic labeller gave {sum(counts.values())} verdicts: {counts['first']} "
                       f"first, {counts['second']} second, {counts['tie']} ties (ties are left out of training)",
                       **counts)
            return
        given = pairs_with_a_preference(self.store, self.store.dataset_id(PAIRS))
        if not given:
            raise DemoStop(f"Label the pairs of '{PAIRS}' in the Label tab, then go on from your labels (the Home "
                           "tab's 'Go on from my labels', or `alignstudio demo` when the app is not running); or let "
                           "the heuristic label them (the unattended run, or `alignstudio demo --auto`).")
        self.stage("labels", f"{given} pairs have your labels", labelled=given)

    def train(self) -> tuple[int, int]:
        """The reward model and the DPO policy on the pairs; their run ids."""
        s = self.s
        train = dict(base=s.base, batch_size=s.batch_size, max_length=s.max_length, seed=s.seed)
        self.begin()
        rm_run = self.job(service.start_training(self.runner, "rm", PAIRS, max_steps=s.rm_steps, eval_share=0.2,
                                                 **train).run_id)["id"]
        m = latest_metrics(self.store, rm_run)
        self.stage("reward model", f"run {rm_run}: held-out accuracy {m.get('heldout_accuracy', float('nan')):.2f} "
                   f"(95% interval {m.get('heldout_accuracy_low', 0):.2f}-{m.get('heldout_accuracy_high', 1):.2f}) "
                   f"on {m.get('heldout_pairs', 0):.0f} pairs", run=rm_run, eval_accuracy=m.get("heldout_accuracy"),
                   eval_accuracy_low=m.get("heldout_accuracy_low"), eval_accuracy_high=m.get("heldout_accuracy_high"))
        self.begin()
        dpo_run = self.job(service.start_training(self.runner, "dpo", PAIRS, max_steps=s.dpo_steps,
                                                  learning_rate=s.dpo_learning_rate, **train).run_id)["id"]
        m = latest_metrics(self.store, dpo_run)
        self.stage("dpo", f"run {dpo_run}: last rewards/margins {m.get('rewards/margins', float('nan')):.3f}, "
                   f"accuracies {m.get('rewards/accuracies', float('nan')):.2f}", run=dpo_run,
                   margins=m.get("rewards/margins"), accuracies=m.get("rewards/accuracies"))
        return rm_run, dpo_run

    def evaluate(self, rm_run: int, dpo_run: int) -> None:
        self.begin()
        # The reward model of the same pairs is reported beside the rule: the gap between what the pairs'
        # proxy says and what the rule says is the lesson of the run.
        run = self.job(service.start_evaluation(self.runner, dpo_run, HELDOUT_PROMPTS, rule="heuristic",
                                                proxy_run=rm_run, limit=self.s.eval_prompts,
                                                max_new_tokens=self.s.max_new_tokens))
        m = latest_metrics(self.store, run["id"])
        self.stage("evaluate", f"run {run['id']}: " + run["message"].replace("\n", "; "), run=run["id"],
                   win_rate=m.get("rule/win_rate"), win_low=m.get("rule/win_low"), win_high=m.get("rule/win_high"),
                   proxy_win_rate=m.get("proxy/win_rate"), proxy_win_low=m.get("proxy/win_low"),
                   proxy_win_high=m.get("proxy/win_high"), kl=m.get("kl"), length_change=m.get("length_change"))

    def export_and_compare(self, dpo_run: int) -> None:
        self.begin()
        run = self.job(service.start_export(self.runner, run_id=dpo_run, quants=["q8_0"]))
        gguf = gguf_files(self.store, run_id=run["id"])[0]
        m = latest_metrics(self.store, run["id"])
        self.stage("export", f"run {run['id']}: {gguf['name']} ({m.get('q8_0_mb', 0):.0f} MB) at {gguf['path']}",
                   run=run["id"], model=gguf["name"], mb=m.get("q8_0_mb"))
        self.begin()
        into = f"demo-compare-run{run['id']}"
        run = self.job(service.start_comparison(self.runner, "default", gguf["name"], HELDOUT_PROMPTS, into=into,
                                                limit=self.s.compare_prompts, max_tokens=self.s.max_new_tokens))
        m = latest_metrics(self.store, run["id"])
        self.stage("compare", f"run {run['id']}: {run['message']}; the answers are unlabelled pairs in '{into}', and "
                   "the Compare tab chats with both", run=run["id"], tokens_per_s_base=m.get("tokens_per_s_a"),
                   tokens_per_s_policy=m.get("tokens_per_s_b"), dataset=into)


def run_demo(store: Store, runner: Runner, settings: DemoSettings, workspace: Workspace, auto: bool,
             follow: Callable[[int], dict], on_stage: Callable[[Stage], None] = lambda stage: None) -> list[Stage]:
    """Run the stages; `follow(run_id)` waits for a job and returns its run row. Raises DemoStop
    when labels are needed (without `auto`), RunError when a job fails."""
    demo = DemoRun(store, runner, settings, workspace, follow, on_stage)
    demo.prompts()
    if store.dataset_id(PAIRS) is None:
        demo.pairs()
    demo.labels(auto)
    rm_run, dpo_run = demo.train()
    demo.evaluate(rm_run, dpo_run)
    demo.export_and_compare(dpo_run)
    return demo.stages


SCALE_UP = ("On a GPU, scale up: more prompts and candidates (--prompts 160 --candidates 8) and more steps "
            "(--rm-steps 200 --dpo-steps 200; with more DPO steps a lower --dpo-learning-rate may do); training "
            "picks bf16 by itself there.")
