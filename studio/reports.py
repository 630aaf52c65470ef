"""Reports on what runs made, as lines a front end shows: a reward model's report card, judges set
against people's labels, and people's blind votes on a policy against its base."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from common.stats import SWAPPED, wilson_interval, win_summary
from pipelines.judges import RULES, card_against_people, describe_card_against_people
from pipelines.llm_judge import DEFAULT_GUIDELINE, LlamaJudge, answer_text
from pipelines.reward import HELD_OUT_SCORES, REPORT_CARD, describe_card
from store import Store
from store.arena import votes_against_base
from store.models import gguf_files, model_path, trained_adapter
from store.queries import dataset_pair_texts, pair_verdicts
from studio.inputs import dataset_id, trained_prompts
from studio.judging import checked_guideline, llm_judge_file
from studio.kinds import JUDGE_PREFIX, RunError
from studio.methods import METHODS
from studio.runner import Runner


def rm_report(runner: Runner, run_id: int) -> list[str]:
    """The report card of a reward-model run, as lines: accuracy with its interval, length bias and
    calibration (from the run), and agreement with each annotator of the held-out pairs (from the
    store: who labelled them which way, and the verdicts their file came with, as 'source')."""
    run = runner.get(run_id)
    if run is None or run["kind"] not in METHODS or METHODS[run["kind"]].makes != "reward":
        raise RunError(f"run {run_id} is not a reward-model run")
    folder = runner.workspace.runs_dir / str(run_id)
    if not (folder / REPORT_CARD).is_file():
        why = "it has not finished" if run["status"] != "succeeded" else \
            "it had no held-out pairs, or was trained before report cards existed"
        raise RunError(f"run {run_id} has no report card ({why})")
    lines = describe_card(json.loads((folder / REPORT_CARD).read_text()))
    scored = pq.read_table(folder / HELD_OUT_SCORES).to_pylist()
    verdicts = pair_verdicts(runner.store, [r["pair_id"] for r in scored if r["pair_id"]])
    agree: dict[str, list[int]] = {}
    for r in scored:
        if r["reward_chosen"] == r["reward_rejected"]:
            continue
        rm_side = r["chosen_side"] if r["reward_chosen"] > r["reward_rejected"] else SWAPPED.get(r["chosen_side"])
        for annotator, verdict in verdicts.get(r["pair_id"], {}).items():
            agree.setdefault(annotator, []).append(verdict == rm_side)
    for annotator, hits in sorted(agree.items()):
        low, high = wilson_interval(sum(hits), len(hits))
        lines.append(
            f"agrees with {'the file' if annotator == 'source' else annotator} on {sum(hits) / len(hits):.0%} of "
            f"{len(hits)} held-out pairs (95% interval {low:.0%}-{high:.0%})"
        )
    return lines


def judge_report(runner: Runner, dataset: str, llm_judge: str | None = None, rule: str | None = None,
                 reward_run: int | None = None, limit: int = 200, guideline: str = "", say=None) -> list[str]:
    """Judges set side by side against people's labels on a dataset's labelled pairs (at most
    `limit`): a rule, the reward model of `reward_run` (on the pairs whose prompts it was not trained
    on) and/or an LLM judge (a GGUF file or model name), each with the same report card. AI labels
    (annotators named judge:...) are not people's and are left out. `say` is told the progress."""
    store = runner.store
    if not (llm_judge or rule or reward_run is not None):
        raise RunError("name at least one judge: an LLM judge (a GGUF chat model), a rule or a reward-model run")
    if rule and rule not in RULES:
        raise RunError(f"unknown rule {rule!r}; one of {', '.join(RULES)}")
    judge_file = llm_judge_file(store, llm_judge) if llm_judge else None
    checked_guideline(guideline)
    pairs = dataset_pair_texts(store, dataset_id(store, dataset))
    people = {p: {a: v for a, v in labels.items() if not a.startswith(JUDGE_PREFIX)}
              for p, labels in pair_verdicts(store, [p["id"] for p in pairs]).items()}
    people = {p: labels for p, labels in people.items() if labels}
    if not people:
        return [f"dataset '{dataset}' has no pair with a person's label (nor verdicts from its file): there is nothing "
                "to compare a judge against; label some pairs in the Label tab first"]
    picked = [p for p in pairs if p["id"] in people][:limit]
    people = {p["id"]: people[p["id"]] for p in picked}
    texts = {p["id"]: (answer_text(p["first"]), answer_text(p["second"])) for p in picked}
    lengths = {pid: (len(a.split()), len(b.split())) for pid, (a, b) in texts.items()}
    longer = {pid: None if a == b else "first" if a > b else "second" for pid, (a, b) in lengths.items()}
    lines = [f"{len(picked)} pairs of '{dataset}' with people's labels"]
    if rule:
        verdicts = {pid: RULES[rule].verdict({"text": a, "finish": "stop"}, {"text": b, "finish": "stop"})
                    for pid, (a, b) in texts.items()}
        lines += describe_card_against_people(f"rule '{rule}'", card_against_people(verdicts, people, longer))
    if reward_run is not None:
        lines += _reward_model_card(runner, reward_run, picked, texts, people, longer)
    if judge_file:
        judge = LlamaJudge(judge_file, guideline or DEFAULT_GUIDELINE)
        verdicts, disagree = {}, 0
        try:
            for i, p in enumerate(picked):
                result = judge.compare(p["prompt"], *texts[p["id"]])
                verdicts[p["id"]] = result["verdict"]
                disagree += bool(result["orders_disagree"])
                if say and (i + 1) % 10 == 0:
                    say(f"LLM judge: {i + 1} of {len(picked)} pairs")
        finally:
            judge.close()
        name = f"LLM judge {Path(judge_file).name}"
        decided = sum(v is not None for v in verdicts.values())
        lines += describe_card_against_people(name, card_against_people(verdicts, people, longer))
        if decided:
            lines.append(f"{name}: its two orders disagreed on {disagree / decided:.0%} of the {decided} pairs it "
                         "answered (position bias; those count as ties)")
    return lines


def _reward_model_card(runner: Runner, reward_run: int, picked, texts, people, longer) -> list[str]:
    from pipelines.models import choose_placement
    from pipelines.reward_model import load_reward_model, score

    path = model_path(runner.store, "reward", run_id=reward_run)
    if not path:
        raise RunError(f"run {reward_run} did not train a reward model")
    seen = trained_prompts(runner, reward_run)
    fresh = [p for p in picked if p["prompt_id"] not in seen]
    name = f"reward model of run {reward_run}"
    if not fresh:
        return [f"{name}: every labelled pair's prompt was in its training data; judge it on other pairs"]
    tokenizer, model = load_reward_model(path, choose_placement())
    conversations = [p["prompt"] + side for p in fresh for side in (p["first"], p["second"])]
    rewards = score(tokenizer, model, conversations)
    verdicts = {p["id"]: "first" if a > b else "second" if b > a else "tie"
                for p, a, b in zip(fresh, rewards[::2], rewards[1::2])}
    lines = describe_card_against_people(name, card_against_people(
        verdicts, {p["id"]: people[p["id"]] for p in fresh}, longer))
    if len(fresh) < len(picked):
        lines.append(f"{name}: {len(picked) - len(fresh)} pairs left out, their prompts were in its training data")
    return lines


def people_verdict(store: Store, policy_run: int) -> str | None:
    """The fourth judge: blind votes (Compare tab) between the GGUF files exported from the policy of
    `policy_run` and its base (by its name, or a GGUF exported from the base alone), as one line
    with the win rate and its interval; a hint when there are none; None when the run trained no
    policy."""
    policy = trained_adapter(store, policy_run)
    if policy is None or policy["purpose"] != "policy":
        return None
    exported = [r["name"] for r in gguf_files(store, parent_id=policy["id"])]
    if not exported:
        return (f"people: no votes yet; export the policy `{policy['name']}` (Export tab), then compare it with "
                f"`{policy['base']}` blind in the Compare tab")
    base, outcomes = votes_against_base(store, exported, policy["base"])
    if not outcomes:
        return (f"people: no votes yet between {', '.join(f'`{n}`' for n in exported)} and `{policy['base']}`: "
                "compare them blind in the Compare tab")
    result = win_summary(outcomes)
    return (f"people (blind votes in the Compare tab, {', '.join(exported)} against {', '.join(base)}): policy wins "
            f"{result['win_rate']:.0%} of {result['n']} votes (95% interval {result['win_low']:.0%}-"
            f"{result['win_high']:.0%}): {result['verdict']}")
