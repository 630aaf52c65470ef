"""The Home tab's map of the loop: for the dataset a user picks, each stage (prompts, candidates,
perplexity, filtered pairs, labels, reward model, policy, verdict, export, votes) with its state and
counts, and the one next step, with the tab that takes it and the inputs to choose there."""

from __future__ import annotations

from dataclasses import dataclass, field

from common.stats import win_summary
from store import Store
from store.arena import votes_against_base
from store.loop import loop_state

DONE, NEXT, LATER, RUNNING, WEAK = "done", "next", "later", "running", "weak"
MARK = {DONE: "✓", NEXT: "→", LATER: "·", RUNNING: "▶", WEAK: "!"}
# Which stage of the map a run in progress works on, by its kind (training methods: by what they make).
STAGE_OF_KIND = {"generate": "candidates", "perplexity": "perplexity", "reward-scoring": "labels",
                 "judge-labels": "labels", "rm": "reward model", "evaluate": "verdict", "best-of-n": "verdict"}
POLICY_KINDS = ("sft", "dpo", "kto", "orpo", "ppo", "grpo", "rloo")


@dataclass(frozen=True)
class NextStep:
    tab: str                # the tab's id in the app (studio.app.TABS)
    label: str              # the button's words
    why: str                # one sentence under the map
    inputs: dict = field(default_factory=dict)  # what to choose there: dataset, method, model, run


@dataclass(frozen=True)
class Stage:
    name: str
    state: str              # DONE, NEXT or LATER
    detail: str             # counts, in words


def votes_line(store: Store, policy: dict) -> tuple[int, str]:
    """People's blind votes between a policy's exports and its base: how many, and in words."""
    _, outcomes = votes_against_base(store, policy["exports"], policy.get("base") or "default")
    if not outcomes:
        return 0, "no blind votes yet"
    result = win_summary(outcomes)
    return result["n"], (f"{result['n']} votes: the policy wins {result['win_rate']:.0%} "
                         f"({result['win_low']:.0%}-{result['win_high']:.0%})")


def stages_and_next(store: Store, dataset: str, state: dict | None = None) -> tuple[list[Stage], NextStep]:
    """The map of `dataset` and its next step (from `state`, its loop_state, when the caller has it)."""
    s = state or loop_state(store, dataset)
    if s is None:
        return [], NextStep("data", "Import prompts or pairs", "Start with a file of prompts or preference pairs.")
    pairs_of, rms, policies = s["pairs_dataset"], s["reward_models"], s["policies"]
    labelled = {a: n for a, n in s["labels"].items()}
    rm = rms[0] if rms else None
    policy = policies[0] if policies else None
    votes, votes_words = votes_line(store, policy) if policy else (0, "")
    facts = [
        ("prompts", s["prompts"] > 0, f"{s['prompts']:,} prompts"),
        ("candidates", s["generated"] > 0 or s["pairs"] > 0,
         f"{s['answers']:,} answers ({s['generated']:,} generated here)"),
        ("perplexity", s["scored"] > 0 or (s["pairs"] > 0 and not s["generated"]), f"{s['scored']:,} answers scored"),
        ("pairs", s["pairs"] > 0, f"{s['pairs']:,} pairs in '{pairs_of}'"
         + (f" (kept by the filter from '{dataset}')" if pairs_of != dataset else "")),
        ("labels", s["preferred"] > 0, f"{s['preferred']:,} pairs with a preference; labels by "
         + (", ".join(f"{a} {n:,}" for a, n in labelled.items()) or "nobody yet")),
        ("reward model", rm is not None, "none yet" if rm is None else
         f"{rm['model']}: held-out accuracy {rm['metrics'].get('heldout_accuracy', float('nan')):.2f} "
         f"({rm['metrics'].get('heldout_accuracy_low', 0):.2f}-{rm['metrics'].get('heldout_accuracy_high', 1):.2f})"
         if "heldout_accuracy" in rm["metrics"] else f"{rm['model']} (run {rm['id']})"),
        ("policy", policy is not None, "none yet" if policy is None else f"{policy['model']} (run {policy['id']})"),
        ("verdict", bool(policy and policy["evaluations"]), "not judged yet" if not (policy and policy["evaluations"])
         else policy["evaluations"][-1]["message"].splitlines()[0]),
        ("export", bool(policy and policy["exports"]), ", ".join(policy["exports"]) if policy and policy["exports"]
         else "not exported yet"),
        ("votes", votes > 0, votes_words or "no blind votes yet"),
    ]
    first_missing = next((i for i, (_, done, _) in enumerate(facts) if not done), None)
    under_way = {}
    for run in s.get("running", []):
        stage = "policy" if run["kind"] in POLICY_KINDS else STAGE_OF_KIND.get(run["kind"])
        if stage:
            under_way.setdefault(stage, run)
    weak = rm is not None and "heldout_accuracy_low" in rm["metrics"] and rm["metrics"]["heldout_accuracy_low"] <= 0.5
    stages = []
    for i, (name, done, detail) in enumerate(facts):
        state = DONE if done else NEXT if i == first_missing else LATER
        if name in under_way:
            run = under_way[name]
            progress = f" {run['progress']:.0%}" if run["progress"] is not None else ""
            detail = (f"run {run['id']} ({run['kind']}) {'waiting' if run['status'] == 'queued' else 'in progress'}"
                      f"{progress}" + (f": {run['message']}" if run["message"] else "") + f"; {detail}")
            state = RUNNING
        elif name == "reward model" and weak:
            state = WEAK
            detail += ": not clearly better than chance (its interval holds 50%); label more pairs and train it again"
        stages.append(Stage(name, state, detail))
    if first_missing is not None and facts[first_missing][0] in under_way:
        # Never invite a second run of what is running: follow the one under way.
        run = under_way[facts[first_missing][0]]
        tab = "train" if run["kind"] in POLICY_KINDS or run["kind"] in ("rm", "evaluate") else "build"
        return stages, NextStep(tab, f"Follow run {run['id']}", f"Run {run['id']} ({run['kind']}) is under way for "
                                f"this stage: follow it; the next step comes when it ends.",
                                {"run": run["id"]} if tab == "train" else {"dataset": dataset})
    return stages, next_step(dataset, s, first_missing, rm, policy)


def furthest_along(store: Store, names: list[str]) -> str:
    """Of these datasets (in creation order), the one whose loop has the most stages done, the
    oldest of those: where a user coming back to the workspace left off. After the guided demo that
    is the prompts the candidates came from, not the pool of every demo prompt created first."""
    done = {name: sum(st.state == DONE for st in stages_and_next(store, name)[0]) for name in names}
    return max(names, key=lambda name: (done[name], -names.index(name)))


def next_step(dataset: str, s: dict, missing: int | None, rm: dict | None, policy: dict | None) -> NextStep:
    pairs_of = s["pairs_dataset"]
    steps = [
        NextStep("data", "Import prompts or pairs", f"'{dataset}' holds nothing yet: import a file into it."),
        NextStep("build", "Generate candidates", f"Sample answers to the prompts of '{dataset}' from your model.",
                 {"dataset": dataset, "open_generate": True}),
        NextStep("build", "Score perplexity", f"Score the candidates of '{dataset}' under the model, to filter them.",
                 {"dataset": dataset}),
        NextStep("build", "Filter into pairs", "Keep the plausible candidates and pair them (Save filtered dataset).",
                 {"dataset": dataset}),
        NextStep("label", "Label the pairs", f"Give the pairs of '{pairs_of}' a preference (keys 1-4).",
                 {"dataset": pairs_of}),
        NextStep("train", "Train a reward model", f"Train a reward model on the labelled pairs of '{pairs_of}'.",
                 {"dataset": pairs_of, "method": "Reward model"}),
        NextStep("train", "Train a policy (DPO)", f"Train a policy on the pairs of '{pairs_of}' (or PPO against "
                 "the reward model).", {"dataset": pairs_of, "method": "DPO"}),
        NextStep("train", "Judge the policy", "Evaluate the policy against its base by a judge it was not trained "
                 "against: pick a judge under 'Evaluate a policy against its base' (prompts the policy did not train "
                 "on, if you have them).", {"run": policy["id"] if policy else None, "open_evaluate": True}),
        NextStep("export", "Export the policy", "Write the policy as GGUF files for llama.cpp and Ollama.",
                 {"model": policy["model"] if policy else None}),
        NextStep("compare", "Compare it blind", "Chat with the exported policy and its base in the blind arena, "
                 "and vote.", {"model": policy["exports"][-1] if policy and policy["exports"] else None,
                               "base": (policy.get("base") or "default") if policy else None, "blind": True}),
    ]
    if missing is None:
        return NextStep("label", "Label more pairs", "Every stage has a result: label more pairs, or train again "
                        "with what you learned.", {"dataset": pairs_of})
    if missing in (1, 2, 3) and s["pairs"] and not s["generated"]:
        missing = 4  # pairs imported with their answers: nothing to generate or filter
    return steps[missing]


def map_markdown(stages: list[Stage]) -> str:
    """The stages as a table a user reads top to bottom: where they are, and what each holds."""
    rows = "\n".join(f"| {MARK[st.state]} | **{st.name}** | {st.detail} |" for st in stages)
    return "| | stage | where it stands |\n|---|---|---|\n" + rows


# The lineage table's columns; a click on a cell opens what it names (studio.home_tab.open_lineage).
LINEAGE_COLUMNS = ["model", "trained by", "on the pairs of", "labels", "verdict", "exports", "blind votes"]


def lineage(store: Store, dataset: str | None, state: dict | None = None) -> list[dict]:
    """Every model made from `dataset` (its reward models and policies, newest first), with what
    it came from and what became of it: run, pairs, labels, verdict, exports and votes (from
    `state`, its loop_state, when the caller has it)."""
    s = state or (loop_state(store, dataset) if dataset else None)
    if s is None:
        return []
    labels = ", ".join(f"{a} {n:,}" for a, n in s["labels"].items()) or "none"
    rows = []
    for r in sorted(s["reward_models"] + s["policies"], key=lambda r: -r["id"]):
        policy = r["purpose"] != "reward"
        metrics = r["metrics"]
        verdict = ("not judged yet" if not r.get("evaluations") else r["evaluations"][-1]["message"].splitlines()[0]
                   ) if policy else (f"held-out accuracy {metrics['heldout_accuracy']:.2f}"
                                     if "heldout_accuracy" in metrics else "-")
        if policy and r.get("benchmarks"):  # what the alignment cost on benchmarks, the newest run's
            verdict += "; benchmarks: " + ", ".join(
                f"{task} {change:+.3f} ({'no clear change' if low <= 0 <= high else 'better' if low > 0 else 'worse'})"
                for task, (change, low, high) in r["benchmarks"][-1]["changes"].items())
        rows.append({"model": r["model"], "run": r["id"], "kind": r["kind"], "dataset": s["pairs_dataset"],
                     "labels": labels, "verdict": verdict, "exports": r.get("exports") or [],
                     "votes": votes_line(store, r)[1] if policy and r.get("exports") else "-"})
    return rows


def lineage_table(rows: list[dict]) -> list[list]:
    return [[r["model"], f"run {r['run']} ({r['kind']})", r["dataset"], r["labels"], r["verdict"],
             ", ".join(r["exports"]) or "-", r["votes"]] for r in rows]


def lineage_step(row: dict, column: int) -> NextStep:
    """Where a click on a lineage cell goes: the pairs to the Label tab, the exports to the Export
    tab, the votes to Compare, anything else to the run in the Train tab."""
    name = LINEAGE_COLUMNS[column]
    if name in ("on the pairs of", "labels"):
        return NextStep("label", "", "", {"dataset": row["dataset"]})
    if name == "exports" and row["exports"]:
        return NextStep("export", "", "", {"model": row["model"]})
    if name == "blind votes" and row["exports"]:
        return NextStep("compare", "", "", {"model": row["exports"][-1], "blind": True})
    return NextStep("train", "", "", {"run": row["run"], "open_evaluate": name == "verdict" or None})

