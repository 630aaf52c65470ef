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
from dataclasses import asdict, dataclass, field
from typing import Callable

from pipelines.judges import heuristic_verdict
from pipelines.settings import setting
from store import Store, import_file
from store.filtering import FilterError, filter_by_perplexity
from store.imports import prompt_subset
from store.labelling import add_rule_labels
from store.queries import latest_metrics
from studio import jobs
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
    rows = store.query("""
        SELECT p.id, a.messages AS a, b.messages AS b, a.generation AS ga, b.generation AS gb
        FROM pairs p JOIN responses a ON a.id = p.first_id JOIN responses b ON b.id = p.second_id
        WHERE p.id IN (SELECT pair_id FROM dataset_pairs WHERE dataset_id = ?)
          AND p.id NOT IN (SELECT pair_id FROM labels WHERE annotator = ?)""", [store.dataset_id(dataset), LABELLER])
    verdicts = []
    for r in rows:
        sides = [{"text": " ".join(m["content"] for m in json.loads(r[k])),
                  "finish": json.loads(r[g] or "{}").get("finish", "stop")} for k, g in (("a", "ga"), ("b", "gb"))]
        verdicts.append((r["id"], heuristic_verdict(*sides)))
    add_rule_labels(store, LABELLER, verdicts)
    return {v: sum(verdict == v for _, verdict in verdicts) for v in ("first", "second", "tie")}


def run_demo(store: Store, runner: Runner, settings: DemoSettings, workspace: Workspace, auto: bool,
             follow: Callable[[int], dict], on_stage: Callable[[Stage], None] = lambda stage: None) -> list[Stage]:
    """Run the stages; `follow(run_id)` waits for a job and returns its run row. Raises DemoStop
    when labels are needed (without `auto`), RunError when a job fails."""
    s = settings
    stages: list[Stage] = []

    def stage(name: str, started: float, summary: str, **figures) -> None:
        stages.append(Stage(name, round(time.monotonic() - started, 1), summary, figures))
        (workspace.root / REPORT).write_text(json.dumps({"settings": asdict(s), "stages": [asdict(x) for x in stages]},
                                                        indent=2), encoding="utf-8")
        on_stage(stages[-1])

    def job(run_id: int) -> dict:
        run = follow(run_id)
        if run["status"] != "succeeded":
            raise RunError(f"run {run_id} ({run['kind']}) {run['status']}: {run['message']}")
        return run

    t = time.monotonic()
    if store.dataset_id(DEMO_PROMPTS) is None:
        import_file(store, ASSETS / "demo_prompts.jsonl", DEMO_PROMPTS, internal=True)
    n_train = prompt_subset(store, TRAIN_PROMPTS, DEMO_PROMPTS, 0, s.prompts)
    n_heldout = prompt_subset(store, HELDOUT_PROMPTS, DEMO_PROMPTS, s.prompts, s.heldout)
    stage("prompts", t, f"{n_train} demo prompts get candidates, {n_heldout} others are held out", train=n_train,
          heldout=n_heldout)

    if store.dataset_id(PAIRS) is None:
        t = time.monotonic()
        run = job(jobs.start_generation(runner, TRAIN_PROMPTS, model=s.base, n=s.candidates, max_new_tokens=s.max_new_tokens,
                                          seed=s.seed))
        made = store.scalar("SELECT count(*) FROM responses WHERE model = ?", [s.base])
        stage("candidates", t, f"{made} answers sampled ({s.candidates} per prompt) from {s.base} - {run['message']}",
              responses=made)
        t = time.monotonic()
        try:
            run = job(jobs.start_perplexity(runner, TRAIN_PROMPTS, model=s.base))
            message = run["message"]
        except RunError as e:
            if "no responses left" not in str(e):
                raise
            message = "all were scored already"
        stage("perplexity", t, f"perplexity of every candidate under {s.base}: {message}")
        t = time.monotonic()
        try:
            plan = filter_by_perplexity(store, TRAIN_PROMPTS, s.base, PAIRS, keep_quantile=s.keep_quantile,
                                        per_prompt=True)
        except FilterError as e:
            raise RunError(str(e)) from None
        stage("filter", t, plan.summary(PAIRS), kept_responses=len(plan.kept_responses), pairs=len(plan.formed_pairs))

    t = time.monotonic()
    if auto:
        counts = auto_label(store, PAIRS)
        stage("labels", t, f"the heuristic labeller gave {sum(counts.values())} verdicts: {counts['first']} first, "
              f"{counts['second']} second, {counts['tie']} ties (ties are left out of training)", **counts)
    else:
        given = store.scalar("""SELECT count(DISTINCT pair_id) FROM labels WHERE verdict IN ('first', 'second')
                                AND pair_id IN (SELECT pair_id FROM dataset_pairs WHERE dataset_id = ?)""",
                             [store.dataset_id(PAIRS)])
        if not given:
            raise DemoStop(f"Label the pairs of '{PAIRS}' in the Label tab, then go on from your labels (the Home tab's "
                           "'Go on from my labels', or `alignstudio demo` when the app is not running); or let the "
                           "heuristic label them (the unattended run, or `alignstudio demo --auto`).")
        stage("labels", t, f"{given} pairs have your labels", labelled=given)

    train = dict(base=s.base, batch_size=s.batch_size, max_length=s.max_length, seed=s.seed)
    t = time.monotonic()
    rm_run = jobs.start_training(runner, "rm", PAIRS, max_steps=s.rm_steps, eval_share=0.2, **train)
    job(rm_run)
    m = latest_metrics(store, rm_run)
    stage("reward model", t, f"run {rm_run}: held-out accuracy {m.get('heldout_accuracy', float('nan')):.2f} "
          f"(95% interval {m.get('heldout_accuracy_low', 0):.2f}-{m.get('heldout_accuracy_high', 1):.2f}) on "
          f"{m.get('heldout_pairs', 0):.0f} pairs", run=rm_run, eval_accuracy=m.get("heldout_accuracy"),
          eval_accuracy_low=m.get("heldout_accuracy_low"), eval_accuracy_high=m.get("heldout_accuracy_high"))

    t = time.monotonic()
    dpo_run = jobs.start_training(runner, "dpo", PAIRS, max_steps=s.dpo_steps, learning_rate=s.dpo_learning_rate,
                                  **train)
    job(dpo_run)
    m = latest_metrics(store, dpo_run)
    stage("dpo", t, f"run {dpo_run}: last rewards/margins {m.get('rewards/margins', float('nan')):.3f}, "
          f"accuracies {m.get('rewards/accuracies', float('nan')):.2f}", run=dpo_run,
          margins=m.get("rewards/margins"), accuracies=m.get("rewards/accuracies"))

    t = time.monotonic()
    # The reward model of the same pairs is reported beside the rule: the gap between what the pairs'
    # proxy says and what the rule says is the lesson of the run.
    run = job(jobs.start_evaluation(runner, dpo_run, HELDOUT_PROMPTS, rule="heuristic", proxy_run=rm_run,
                                      limit=s.eval_prompts, max_new_tokens=s.max_new_tokens))
    m = latest_metrics(store, run["id"])
    stage("evaluate", t, f"run {run['id']}: " + run["message"].replace("\n", "; "), run=run["id"],
          win_rate=m.get("rule/win_rate"), win_low=m.get("rule/win_low"), win_high=m.get("rule/win_high"),
          proxy_win_rate=m.get("proxy/win_rate"), proxy_win_low=m.get("proxy/win_low"),
          proxy_win_high=m.get("proxy/win_high"), kl=m.get("kl"), length_change=m.get("length_change"))

    t = time.monotonic()
    run = job(jobs.start_export(runner, run_id=dpo_run, quants=["q8_0"]))
    gguf = store.query("SELECT name, path FROM models WHERE run_id = ? AND kind = 'gguf'", [run["id"]])[0]
    m = latest_metrics(store, run["id"])
    stage("export", t, f"run {run['id']}: {gguf['name']} ({m.get('q8_0_mb', 0):.0f} MB) at {gguf['path']}",
          run=run["id"], model=gguf["name"], mb=m.get("q8_0_mb"))

    t = time.monotonic()
    into = f"demo-compare-run{run['id']}"
    run = job(jobs.start_comparison(runner, "default", gguf["name"], HELDOUT_PROMPTS, into=into, limit=s.compare_prompts,
                                      max_tokens=s.max_new_tokens))
    m = latest_metrics(store, run["id"])
    stage("compare", t, f"run {run['id']}: {run['message']}; the answers are unlabelled pairs in '{into}', and the "
          "Compare tab chats with both", run=run["id"], tokens_per_s_base=m.get("tokens_per_s_a"),
          tokens_per_s_policy=m.get("tokens_per_s_b"), dataset=into)
    return stages


SCALE_UP = ("On a GPU, scale up: more prompts and candidates (--prompts 160 --candidates 8) and more steps "
            "(--rm-steps 200 --dpo-steps 200; with more DPO steps a lower --dpo-learning-rate may do); training "
            "picks bf16 by itself there.")
