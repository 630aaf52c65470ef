"""Training jobs on the tiny model: reward model and DPO through the job runner and the CLI."""

import json
import re
import statistics
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines.models import Placement
from pipelines.reward_model import load_reward_model, score
from pipelines.training import read_pairs, split
from store import import_file
from store.labelling import add_rule_labels, reward_disagreements, reward_opinion
from studio import inputs, judging, reports, service
from studio.cli import main as cli_main
from studio.runner import RunError, Runner

from helpers import read_events

SMALL = dict(batch_size=2, max_length=256, save_every=2, lora_r=4, lora_alpha=8)


@pytest.fixture
def hh40(tmp_path, store, pairs_file):
    """40 HH pairs in a dataset 'hh40'."""
    import gzip

    path = tmp_path / "hh40.jsonl"
    path.write_text("".join(gzip.open(pairs_file, "rt", encoding="utf-8").readlines()[:40]))
    import_file(store, path, "hh40")
    return store


def test_a_reward_model_evaluates_the_subset_only_at_its_checkpoints_and_scores_every_held_out_pair_at_the_end(
        workspace, hh40, tiny_model):
    """The last step (3, not a multiple of --save-every 2) is not evaluated on the subset again:
    every held-out pair is scored right after, which is what the run reports."""
    runner = Runner(hh40, workspace)
    run_id = service.start_training(
        runner, "rm", "hh40", base=str(tiny_model), max_steps=3, eval_share=0.25, **SMALL
    ).run_id
    run = runner.wait(run_id)
    assert run["status"] == "succeeded", run["message"]
    evaluated = hh40.query("SELECT step, value FROM run_metrics WHERE run_id = ? AND name = 'eval_accuracy' "
                           "ORDER BY step", [run_id])
    assert [r["step"] for r in evaluated] == [2, 3]  # at its checkpoint, then every held-out pair at the end
    scored = hh40.query("SELECT value FROM run_metrics WHERE run_id = ? AND name = 'heldout_pairs'", [run_id])
    assert scored and scored[0]["value"] > 0


def test_a_reward_model_evaluated_on_a_subset_names_it_and_reports_every_held_out_pair_as_eval_accuracy(
        workspace, hh40, tiny_model):
    runner = Runner(hh40, workspace)
    run_id = service.start_training(runner, "rm", "hh40", base=str(tiny_model), max_steps=3, eval_share=0.25,
                                 eval_during=3, **SMALL).run_id
    assert runner.wait(run_id)["status"] == "succeeded"
    from store.queries import run_summaries

    final = next(r for r in run_summaries(hh40) if r["id"] == run_id)["metrics"]  # what `runs --json` prints
    assert final["eval_accuracy"] == final["heldout_accuracy"] and final["heldout_pairs"] > 0
    steps = {r["name"]: r["steps"] for r in hh40.query(
        "SELECT name, list(step ORDER BY step) AS steps FROM run_metrics WHERE run_id = ? AND name IN "
        "('eval_subset_accuracy', 'eval_accuracy') GROUP BY name", [run_id])}
    assert steps == {"eval_subset_accuracy": [2], "eval_accuracy": [3]}



def test_reward_model_trains_as_a_job_and_reloads_with_identical_scores(workspace, hh40, tiny_model):
    runner = Runner(hh40, workspace)
    run_id = service.start_training(
        runner, "rm", "hh40", base=str(tiny_model), max_steps=4, eval_share=0.25, **SMALL
    ).run_id
    run = runner.wait(run_id)
    assert run["status"] == "succeeded", run["message"]
    assert "held-out pairs (95% interval" in run["message"]
    events = (workspace.runs_dir / str(run_id) / "events.jsonl").read_text()
    assert re.search(r"evaluating on \d+ of the \d+ held-out pairs every 2 steps and on all of them at the end", events)

    metrics = hh40.query("SELECT DISTINCT name FROM run_metrics WHERE run_id = ?", [run_id])
    names = {m["name"] for m in metrics}
    assert {"loss", "accuracy", "margin", "eval_accuracy", "eval_margin", "progress"} <= names
    model = hh40.query("SELECT name, kind, path, base, purpose FROM models WHERE run_id = ?", [run_id])[0]
    assert (model["kind"], model["purpose"], model["base"]) == ("adapter", "reward", str(tiny_model))

    # Reloaded from disk, the RM gives the scores the trained model gave on the eval pairs at the end.
    folder = workspace.runs_dir / str(run_id)
    _, held_out = split(read_pairs(folder / "inputs.parquet"), 0.25, 0)
    tokenizer, rm = load_reward_model(model["path"], Placement("cpu", "float32"))
    final = {m["name"]: m["value"] for m in hh40.query(
        "SELECT name, arg_max(value, rowid) AS value FROM run_metrics WHERE run_id = ? GROUP BY name", [run_id])}
    # TRL leaves out pairs over max_length, and its eval metrics are means over eval batches (of 2
    # pairs here) of each batch's mean/min/max.
    def fits(conversation):
        return len(tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True)["input_ids"]) <= 256

    held_out = [p for p in held_out if fits(p["prompt"] + p["chosen"]) and fits(p["prompt"] + p["rejected"])]
    batches = [held_out[i:i + 2] for i in range(0, len(held_out), 2)]
    rewards = [score(tokenizer, rm, [p["prompt"] + p[side] for side in ("chosen", "rejected") for p in batch])
               for batch in batches]
    trl_final = {m["name"]: m["value"] for m in hh40.query(
        """SELECT name, arg_max(value, rowid) AS value FROM run_metrics WHERE run_id = ? AND name LIKE 'eval_%reward'
           GROUP BY name""", [run_id])}
    for stat, name in (
        (min, "eval_min_reward"),
        (max, "eval_max_reward"),
        (lambda r: sum(r) / len(r), "eval_mean_reward"),
    ):
        assert sum(stat(r) for r in rewards) / len(rewards) == pytest.approx(trl_final[name], abs=1e-5)
    # At the end every held-out pair that fits is scored once, by the saved model too, and the
    # report card's accuracy (with its interval) is counted from those scores.
    card = json.loads((folder / "report_card.json").read_text())
    scored = pq.read_table(folder / "held_out_scores.parquet").to_pylist()
    assert card["pairs"] == len(scored) == len(held_out)
    again = score(tokenizer, rm, [p["prompt"] + p[side] for p in held_out for side in ("chosen", "rejected")])
    assert [x for r in scored for x in (r["reward_chosen"], r["reward_rejected"])] == pytest.approx(again, abs=1e-5)
    assert card["accuracy"] == pytest.approx(
        sum(r["reward_chosen"] > r["reward_rejected"] for r in scored) / len(scored)
    )
    assert final["heldout_accuracy"] == card["accuracy"] and final["heldout_pairs"] == len(scored)
    assert final["heldout_accuracy_low"] <= card["accuracy"] <= final["heldout_accuracy_high"]
    # The score head was saved: a fresh random head would not reproduce these.
    assert (workspace.runs_dir / str(run_id) / "model" / "adapter_model.safetensors").is_file()

    # The RM scores every response of the dataset as a job; the Label tab's opinion and the
    # disagreements queue read those scores.
    scoring = runner.wait(service.start_reward_scoring(runner, "hh40", model["name"]))
    assert scoring["status"] == "succeeded", scoring["message"]
    stored = {r["response_id"]: r["reward"] for r in hh40.query("SELECT response_id, reward FROM rewards")}
    assert len(stored) == 80
    pairs = hh40.query("SELECT id, first_id, second_id FROM pairs")
    opinion = reward_opinion(hh40, pairs[0]["id"])
    assert opinion == {"model": model["name"], "first": stored[pairs[0]["first_id"]],
                       "second": stored[pairs[0]["second_id"]]}
    disagreeing = {r["pair_id"] for r in reward_disagreements(hh40, "hh40", model["name"])}
    # Imported pairs prefer their first response: the RM disagrees where it scores the second higher.
    assert disagreeing == {p["id"] for p in pairs if stored[p["second_id"]] > stored[p["first_id"]]}
    with pytest.raises(RunError, match="no responses left to score"):
        service.start_reward_scoring(runner, "hh40", model["name"])
    # The report card (alignstudio rm-report) adds agreement with the file's verdicts and with each
    # annotator of the held-out pairs: alice, who prefers the other side of one of them.
    add_rule_labels(hh40, "alice", [(scored[0]["pair_id"], "second")])
    lines = reports.rm_report(runner, run_id)
    decided = [r for r in scored if r["reward_chosen"] != r["reward_rejected"]]
    right = sum(r["reward_chosen"] > r["reward_rejected"] for r in decided)
    assert f"agrees with the file on {right / len(decided):.0%} of {len(decided)} held-out pairs" in "\n".join(lines)
    alice_agrees = scored[0]["reward_rejected"] > scored[0]["reward_chosen"]
    assert f"agrees with alice on {alice_agrees:.0%} of 1 held-out pairs" in "\n".join(lines)
    assert lines[0].startswith(f"accuracy {card['accuracy']:.3f} on {len(scored)} held-out pairs (95% interval")


def test_a_training_run_cancels_with_a_checkpoint_and_resumes_to_the_end(workspace, hh40, tiny_model):
    runner = Runner(hh40, workspace)
    run_id = service.start_training(runner, "rm", "hh40", base=str(tiny_model), max_steps=400, eval_share=0.0,
                                   **{**SMALL, "save_every": 100}).run_id

    def cancel_after_some_steps(run):
        step = hh40.scalar("SELECT max(step) FROM run_metrics WHERE run_id = ?", [run_id])
        if run["status"] == "running" and step and step >= 3 and not cancelled:
            runner.cancel(run_id)
            cancelled.append(step)

    cancelled = []
    run = runner.wait(run_id, poll_s=0.2, on_update=cancel_after_some_steps)
    assert run["status"] == "cancelled" and "checkpoint saved" in run["message"]
    folder = workspace.runs_dir / str(run_id)
    checkpoints = sorted(p.name for p in (folder / "checkpoints").glob("checkpoint-*"))
    assert checkpoints
    stopped_at = int(checkpoints[-1].split("-")[1])
    assert 3 <= stopped_at < 400

    runner.resume(run_id)
    run = runner.wait(run_id)
    assert run["status"] == "succeeded", run["message"]
    assert f"resuming from checkpoint-{stopped_at}" in (folder / "events.jsonl").read_text()
    assert hh40.scalar("SELECT max(step) FROM run_metrics WHERE run_id = ?", [run_id]) == 400


def test_training_needs_pairs_with_a_preference(workspace, store, tiny_model):
    from store.db import prompt_key

    with store.transaction() as cur:  # a dataset of prompts only
        cur.execute("INSERT INTO datasets (name) VALUES ('prompts')")
        cur.execute("INSERT INTO prompts (id, messages) VALUES (?, ?)",
                    [prompt_key([{"role": "user", "content": "hi"}]), json.dumps([{"role": "user", "content": "hi"}])])
    runner = Runner(store, workspace)
    with pytest.raises(RunError, match="no pairs with a preference to train on"):
        service.start_training(runner, "dpo", "prompts", base=str(tiny_model))


def test_bad_training_settings_are_refused_before_a_run_exists(workspace, hh40, tiny_model, monkeypatch):
    runner = Runner(hh40, workspace)
    with pytest.raises(RunError, match="loss_type must be one of sigmoid, ipo, hinge, sigmoid_norm"):
        service.start_training(runner, "dpo", "hh40", base=str(tiny_model), loss_type="nope")
    with pytest.raises(RunError, match="unknown setting learning_rat"):
        service.start_training(runner, "rm", "hh40", base=str(tiny_model), learning_rat=1e-3)
    with pytest.raises(RunError, match="batch_size must be at least 1, not -3"):
        service.start_training(runner, "dpo", "hh40", base=str(tiny_model), batch_size=-3)
    # QLoRA without bitsandbytes: said before a run exists, not deep inside from_pretrained
    import importlib.util

    find_spec = importlib.util.find_spec
    with monkeypatch.context() as patched:
        patched.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else
                        find_spec(name, *a))
        with pytest.raises(RunError, match="a 4-bit base \\(QLoRA\\) needs bitsandbytes"):
            service.start_training(runner, "rm", "hh40", base=str(tiny_model), load_in_4bit=True)
    # A base that is no model folder and no hub id, or none at all: a sentence, and no failed run to clear away.
    with pytest.raises(RunError, match="^no-such-model: no such model folder, and not a hub id"):
        service.start_training(runner, "rm", "hh40", base="no-such-model")
    with pytest.raises(RunError, match="not a model folder \\(no config.json\\)"):
        service.start_training(runner, "dpo", "hh40", base=str(workspace.root))
    with pytest.raises(RunError, match="name a base model"):
        service.start_training(runner, "dpo", "hh40", base=" ")
    with pytest.raises(RunError, match="no such model folder"):
        service.start_training(runner, "rm", "hh40", judge_split=True, base="no-such-model")
    with pytest.raises(RunError, match="num_processes must be at least 1, not 0"):
        service.start_training(runner, "rm", "hh40", base=str(tiny_model), num_processes=0)
    # Eval pairs that are training pairs would score what the run learned from.
    with pytest.raises(RunError, match="40 of the 40 eval pairs of 'hh40' are training pairs of 'hh40'"):
        service.start_training(runner, "dpo", "hh40", eval_dataset="hh40", base=str(tiny_model))
    # The model a generation or a scoring job reads is checked before its run, as a base is.
    with pytest.raises(RunError, match="no-such-model: no such model folder"):
        service.start_generation(runner, "hh40", model="no-such-model")
    with pytest.raises(RunError, match="/nowhere/m.gguf: no such GGUF file"):
        service.start_generation(runner, "hh40", model="/nowhere/m.gguf")
    with pytest.raises(RunError, match="not a model folder \\(no config.json\\)"):
        service.start_perplexity(runner, "hh40", model=str(workspace.root))
    assert hh40.stats()["runs"] == 0


def test_dpo_from_the_cli_logs_rewards_and_registers_the_policy(tmp_path, workspace, hh40, tiny_model, capsys):
    hh40.close()
    code = cli_main(
        [
            "train",
            "dpo",
            "--base",
            str(tiny_model),
            "--dataset",
            "hh40",
            "--max-steps",
            "2",
            "--batch-size",
            "2",
            "--max-length",
            "128",
            "--lora-r",
            "4",
            "--beta",
            "0.2",
            "--loss-type",
            "ipo",
            "--workspace",
            str(workspace.root),
            "--models-dir",
            str(workspace.models_dir),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "succeeded - DPO trained (2 steps)" in out
    cli_main(["runs", "--json", "--workspace", str(workspace.root), "--models-dir", str(workspace.models_dir)])
    runs = json.loads(capsys.readouterr().out)
    dpo = runs[0]
    assert (dpo["kind"], dpo["status"]) == ("dpo", "succeeded")
    assert dpo["config"]["loss_type"] == "ipo" and dpo["config"]["beta"] == 0.2
    assert {"rewards/margins", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "loss"} <= set(
        dpo["metrics"]
    )
    with workspace.open_store() as store:
        assert store.query("SELECT purpose, kind FROM models") == [{"purpose": "policy", "kind": "adapter"}]


def test_an_answer_cut_by_its_length_limit_is_trained_as_unfinished(tmp_path, workspace, hh40, tiny_model, capsys):
    """DPO (and KTO) must not teach a model to end its turn where a length limit cut an answer: a generated
    answer that was cut is trained without the end-of-turn tokens the chat template adds, one that
    ended (or came from a file) with them. Otherwise a pair of an ended answer against a cut one
    cannot teach the model to end."""
    from pipelines.dpo import DPOTrainConfig, make_trainer
    from pipelines.training import end_of_turn_ids
    from store.exports import preference_records

    pairs = hh40.query("SELECT first_id, second_id FROM pairs ORDER BY rowid LIMIT 5")
    cut = [p["second_id"] for p in pairs[:3]] + [p["first_id"] for p in pairs[3:]]
    with hh40.transaction() as cur:  # as `generate` stores a candidate that hit its limit
        cur.execute(f"UPDATE responses SET generation = '{{\"finish\": \"length\"}}' "
                    f"WHERE id IN ({', '.join('?' * len(cut))})", cut)
    records, _ = preference_records(hh40, "hh40")
    flags = [(r["chosen_cut"], r["rejected_cut"]) for r in records]
    assert flags[:5] == [(False, True)] * 3 + [(True, False)] * 2 and set(flags[5:]) == {(False, False)}

    config = DPOTrainConfig(base=str(tiny_model), max_length=2048, device="cpu", lora_r=4, lora_alpha=8)
    trainer, unfinished = make_trainer(config, tmp_path, records, [])
    end = end_of_turn_ids(trainer.processing_class)
    assert unfinished == 5 and trainer.processing_class.decode(end).startswith("<|im_end|>")
    for record, example in zip(records, trainer.train_dataset):
        for side in ("chosen", "rejected"):
            ids = example[f"{side}_ids"]
            assert (ids[-len(end):] == end) != record[f"{side}_cut"], (side, record[f"{side}_cut"])
            text = trainer.processing_class.decode(ids)
            assert record[side][-1]["content"].strip()[-20:] in text  # the answer itself is all there

    hh40.close()
    code = cli_main(["train", "dpo", "--base", str(tiny_model), "--dataset", "hh40", "--max-steps", "1",
                     "--batch-size", "2", "--max-length", "2048", "--lora-r", "4", "--eval-share", "0",
                     "--workspace", str(workspace.root), "--models-dir", str(workspace.models_dir)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "training on 40 pairs (5 answers cut by their length limit trained as unfinished)" in out
    code = cli_main(["train", "kto", "--base", str(tiny_model), "--dataset", "hh40", "--max-steps", "1",
                     "--batch-size", "2", "--max-length", "2048", "--lora-r", "4", "--eval-share", "0",
                     "--workspace", str(workspace.root), "--models-dir", str(workspace.models_dir)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "(5 cut by their length limit trained as unfinished)" in out  # KTO: the same, answer by answer


def test_ppo_grpo_and_rloo_run_as_jobs_against_a_trained_reward_model(workspace, hh40, tiny_model):
    runner = Runner(hh40, workspace)
    # A judge split: the proxy (to optimise) and the judge (to evaluate by) share no prompt.
    split = service.start_training(runner, "rm", "hh40", judge_split=True, base=str(tiny_model), max_steps=2,
                                   eval_share=0.0, **SMALL)
    assert split.roles == ("proxy", "judge")
    reward_run, judge_run = split.run_ids
    assert runner.wait(reward_run)["status"] == "succeeded" and runner.wait(judge_run)["status"] == "succeeded"
    halves = [inputs.trained_prompts(runner, r) for r in (reward_run, judge_run)]
    assert not halves[0] & halves[1] and len(halves[0] | halves[1]) == 40 and abs(len(halves[0]) - len(halves[1])) <= 1
    policies = {}
    # GRPO makes its two updates on one batch of answers, so the reward model scores only one batch.
    # GRPO's over-optimisation watch is judged by the judge reward model, RLOO's by the rule.
    for kind, extra, scored_at in (("ppo", {}, [1, 2]), ("grpo", {"num_iterations": 2, "judge_run": judge_run}, [1]),
                                   ("rloo", {"num_iterations": 1, "judge_rule": "heuristic"}, [1, 2])):
        run_id = service.start_training(
            runner,
            kind,
            prompts="hh40",
            reward_run=reward_run,
            base=str(tiny_model),
            max_steps=2,
            batch_size=4,
            max_new_tokens=8,
            max_length=256,
            lora_r=4,
            lora_alpha=8,
            **extra,
        ).run_id
        run = runner.wait(run_id)
        assert run["status"] == "succeeded", (kind, run["message"])
        names = {m["name"] for m in hh40.query("SELECT DISTINCT name FROM run_metrics WHERE run_id = ?", [run_id])}
        assert {"reward", "kl", "watch/proxy_win", "watch/kl"} <= names, (kind, names)
        assert ("watch/judge_win" in names) == (kind != "ppo"), kind
        assert (Path(run["folder"]) / "best").is_dir() == (kind != "ppo"), kind
        assert [m["step"] for m in hh40.query("""SELECT step FROM run_metrics WHERE run_id = ? AND name = 'reward'
                                                 ORDER BY step""", [run_id])] == scored_at, kind
        assert hh40.query("SELECT purpose FROM models WHERE run_id = ?", [run_id]) == [{"purpose": "policy"}]
        policies[kind] = run_id
    with pytest.raises(RunError, match="did not train a reward model"):
        service.start_training(runner, "ppo", prompts="hh40", reward_run=run_id, base=str(tiny_model))
    with pytest.raises(RunError, match="cannot judge it"):
        service.start_training(runner, "ppo", prompts="hh40", reward_run=reward_run, judge_run=reward_run)

    # A reward model is a judge only if it shares no prompt with the proxy's pairs; the proxy is no judge.
    everything = service.start_training(
        runner, "rm", "hh40", base=str(tiny_model), max_steps=1, eval_share=0.0, **SMALL
    ).run_id
    assert runner.wait(everything)["status"] == "succeeded"
    # What the Train tab's evaluation form offers for the PPO policy: the judge only (never its proxy,
    # nor a reward model that shares the proxy's prompts); no dataset holds prompts it never saw, so it
    # offers the prompts it trained on, and says so.
    offered = judging.evaluation_choices(runner, policies["ppo"])
    assert (offered.judges, offered.proxies, offered.prompts, offered.held_out) == ([judge_run], [], "hh40", False)
    with pytest.raises(RunError, match=rf"not an independent judge: it was trained on {len(halves[0])} prompts that "
                                       rf"its proxy \(run {reward_run}\)"):
        service.start_evaluation(runner, policies["ppo"], "hh40", judge_run=everything)
    with pytest.raises(RunError, match="optimised \\(its proxy\\): it cannot judge it independently"):
        service.start_evaluation(runner, policies["ppo"], "hh40", judge_run=reward_run)
    with pytest.raises(RunError, match=f"give an independent judge .*its proxy \\(rm-run{reward_run}\\) is reported "
                                       "beside it, never alone"):
        service.start_evaluation(runner, policies["ppo"], "hh40")
    with pytest.raises(RunError, match=f"optimised the reward model of run {reward_run}: that is its proxy"):
        service.start_evaluation(runner, policies["ppo"], "hh40", proxy_run=judge_run, rule="heuristic")

    # After a policy run: both answer held-out prompts; proxy, judge and rule each give their verdict.
    evaluation = runner.wait(service.start_evaluation(runner, policies["ppo"], "hh40", judge_run=judge_run,
                                                   rule="heuristic", limit=4, max_new_tokens=8))
    assert evaluation["status"] == "succeeded", evaluation["message"]
    lines = evaluation["message"].splitlines()
    assert lines[0].startswith("rule 'heuristic': policy wins")
    assert lines[1].startswith(f"proxy: the reward model this policy optimised; it cannot tell improvement from "
                               f"reward hacking (rm-run{reward_run}): policy wins")
    assert lines[2].startswith(f"judge reward model: trained on prompts the policy and its proxy never saw "
                               f"(rm-run{judge_run})")
    assert "4 of the 4 prompts were in the policy's training data: not held out" in lines[-1]
    final = {m["name"]: m["value"] for m in hh40.query(
        "SELECT name, value FROM run_metrics WHERE run_id = ?", [evaluation["id"]])}
    answers = pq.read_table(Path(evaluation["folder"]) / "answers.parquet").to_pylist()
    for role in ("proxy", "judge"):
        assert final[f"{role}/win_low"] <= final[f"{role}/win_rate"] <= final[f"{role}/win_high"]
        assert final[f"{role}/gain"] == pytest.approx(final[f"{role}/policy"] - final[f"{role}/base"])
        gains = [a[f"{role}_policy"] - a[f"{role}_base"] for a in answers]
        assert final[f"{role}/gain_se"] == pytest.approx(statistics.stdev(gains) / len(gains) ** 0.5)
    assert 0.0 <= final["rule/win_rate"] <= 1.0 and "rule/gain" not in final
    assert {"kl", "length_change"} <= set(final)


def test_a_policy_trained_on_pairs_is_reported_beside_a_reward_model_of_the_same_pairs(workspace, hh40, tiny_model):
    from store.pairs import split_pairs

    runner = Runner(hh40, workspace)
    split_pairs(hh40, "hh40", ("policy-half", "other-half"))
    dpo_run = service.start_training(runner, "dpo", "policy-half", base=str(tiny_model), max_steps=1, eval_share=0.0,
                                  **SMALL).run_id
    runs = [dpo_run]
    for half in ("policy-half", "other-half"):  # one at a time: the runner refuses the same job twice at once
        runs.append(
            service.start_training(
                runner, "rm", half, base=str(tiny_model), max_steps=1, eval_share=0.0, **SMALL
            ).run_id
        )
        assert runner.wait(runs[-1])["status"] == "succeeded"
    assert runner.wait(dpo_run)["status"] == "succeeded"
    proxy_run, other_run = runs[1:]
    # The evaluation form's offer: prompts it never trained on, the other half's reward model as judge,
    # the same pairs' reward model as their proxy.
    offered = judging.evaluation_choices(runner, dpo_run)
    assert (offered.prompts, offered.held_out, offered.judges, offered.proxies) == ("other-half", True, [other_run],
                                                                                    [proxy_run])
    with pytest.raises(RunError, match=f"the reward model of run {other_run} shares no prompt with the pairs run "
                                       f"{dpo_run} trained on: it is no proxy of them"):
        service.start_evaluation(runner, dpo_run, "hh40", proxy_run=other_run, rule="heuristic")
    with pytest.raises(RunError, match=f"run {dpo_run} did not train a reward model"):
        service.start_evaluation(runner, dpo_run, "hh40", proxy_run=dpo_run, rule="heuristic")
    with pytest.raises(RunError, match="its proxy\\): it cannot judge it independently"):
        service.start_evaluation(runner, dpo_run, "hh40", proxy_run=proxy_run, judge_run=proxy_run)
    with pytest.raises(RunError, match="give an independent judge .* is reported beside it, never alone"):
        service.start_evaluation(runner, dpo_run, "hh40", proxy_run=proxy_run)

    evaluation = runner.wait(service.start_evaluation(runner, dpo_run, "hh40", proxy_run=proxy_run, rule="heuristic",
                                                   limit=4, max_new_tokens=8))
    assert evaluation["status"] == "succeeded", evaluation["message"]
    lines = evaluation["message"].splitlines()
    assert lines[0].startswith("rule 'heuristic': policy wins")
    assert lines[1].startswith(f"proxy: a reward model trained on this policy's own pairs; it learned the labels "
                               "the policy optimised, so it cannot tell improvement from fitting them "
                               f"(rm-run{proxy_run}): policy wins")
    final = {m["name"]: m["value"] for m in hh40.query(
        "SELECT name, value FROM run_metrics WHERE run_id = ?", [evaluation["id"]])}
    assert final["proxy/win_low"] <= final["proxy/win_rate"] <= final["proxy/win_high"]
    assert "judge/win_rate" not in final


def test_settings_suggested_by_model_size_keep_the_effective_batch(tiny_model):
    from pipelines.dpo import DPOTrainConfig
    from pipelines.training import parameter_count, suggested_settings

    assert 0 < parameter_count(str(tiny_model), "unused") < 0.01
    assert parameter_count("owner/not-here", "unused") is None
    defaults = DPOTrainConfig()
    assert suggested_settings(defaults, 0.15) == {} and suggested_settings(defaults, None) == {}
    for billions in (1.7, 8.0):
        s = suggested_settings(defaults, billions)
        assert s["batch_size"] * s["grad_accum"] == defaults.batch_size * defaults.grad_accum
        assert s["learning_rate"] < defaults.learning_rate and s["gradient_checkpointing"]
        assert "load_in_4bit" not in s  # no GPU: 4 bits cannot be had
    # An 8B base's 16-bit weights (16 GB) take more than half of a 24 GB card: 4 bits; a 1.7B's do not.
    assert suggested_settings(defaults, 8.0, gpu_gb=23.5)["load_in_4bit"]
    assert "load_in_4bit" not in suggested_settings(defaults, 1.7, gpu_gb=23.5)
    from pipelines.grpo import OnlineTrainConfig
    from pipelines.ppo import PPOTrainConfig

    ppo = suggested_settings(PPOTrainConfig(), 8.0)  # the rollout batch stays (rewards are whitened over it)
    assert "batch_size" not in ppo and ppo["mini_batch_size"] == 1 and ppo["gradient_checkpointing"]
    online = suggested_settings(OnlineTrainConfig(), 8.0)  # a multiple of the answers per prompt stays
    assert "batch_size" not in online and "grad_accum" not in online


def test_a_bf16_reward_model_trains_its_score_head_in_fp32(tmp_path, pairs_file, tiny_model, models_dir):
    """bf16 runs on a CPU (slowly): the score head, the one whole layer a LoRA reward model trains,
    is kept and saved in float32, and moves at a learning rate whose steps a bf16 copy would round
    away (1e-5 against bf16's spacing of ~1e-4 at the head's scale)."""
    import gzip

    import pyarrow as pa
    import torch
    from safetensors import safe_open

    from pipelines.reward import RewardTrainConfig
    from pipelines.reward import run as train_reward
    from pipelines.runlog import RunLog
    from store.formats import parse_hh_record

    records = []
    for i, line in enumerate(gzip.open(pairs_file, "rt", encoding="utf-8").readlines()[:12]):
        pair = parse_hh_record(json.loads(line))
        records.append({"pair_id": f"p{i}", "prompt": json.dumps(pair.prompt), "chosen": json.dumps(pair.chosen),
                        "rejected": json.dumps(pair.rejected), "chosen_side": "first"})
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "inputs.parquet")
    config = RewardTrainConfig(base=str(tiny_model), models_dir=str(models_dir), device="cpu", dtype="bfloat16",
                               max_steps=3, save_every=1, batch_size=2, max_length=128, lora_r=4, lora_alpha=8,
                               eval_share=0.25, learning_rate=1e-5)
    train_reward(config, RunLog(tmp_path))
    events = read_events(tmp_path)
    assert events[-1]["status"] == "succeeded", events[-1]

    def score_head(folder):
        with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys() if "score" in k}

    final, after_two = score_head(tmp_path / "model"), score_head(tmp_path / "checkpoints" / "checkpoint-2")
    assert final and all(t.dtype == torch.float32 for t in final.values())
    assert any(not torch.equal(final[k], after_two[k]) for k in final)  # the third step moved it


def test_a_length_head_takes_the_labels_length_preference_and_the_reward_model_still_scores(tmp_path, tiny_model,
                                                                                             models_dir):
    """With a length head (`length_head`), pairs whose chosen answer is always the longer teach the
    head's weight to favour length (it is logged, and grows), and the saved model is the reward alone:
    it loads and scores like any reward model."""
    import pyarrow as pa

    from pipelines.models import choose_placement
    from pipelines.reward import RewardTrainConfig
    from pipelines.reward import run as train_reward
    from pipelines.reward_model import load_reward_model, score
    from pipelines.runlog import RunLog

    records = [{"pair_id": f"p{i}", "prompt": json.dumps([{"role": "user", "content": f"Tell me about {i}."}]),
                "chosen": json.dumps([{"role": "assistant", "content": f"Here is a long answer about {i}. " * 6}]),
                "rejected": json.dumps([{"role": "assistant", "content": "No."}]), "chosen_side": "first"}
               for i in range(16)]
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "inputs.parquet")
    config = RewardTrainConfig(base=str(tiny_model), models_dir=str(models_dir), device="cpu", max_steps=4,
                               batch_size=4, max_length=128, lora_r=4, lora_alpha=8, eval_share=0.25,
                               learning_rate=5e-2, length_head=1.0, save_every=100)
    train_reward(config, RunLog(tmp_path))
    events = read_events(tmp_path)
    assert events[-1]["status"] == "succeeded", events[-1]
    weights = [e["metrics"]["length_weight"] for e in events if "length_weight" in e.get("metrics", {})]
    assert weights and weights[-1] > weights[0] >= 0
    tokenizer, model = load_reward_model(tmp_path / "model", choose_placement())
    rewards = score(tokenizer, model, [json.loads(r["prompt"]) + json.loads(r["chosen"]) for r in records[:2]])
    assert len(rewards) == 2 and all(isinstance(r, float) for r in rewards)


def test_length_grouped_batches_carry_less_padding_and_keep_every_pair(tmp_path, pairs_file, tiny_model):
    """Reward-model batches of similar-length pairs (the default): much less of each batch is padding
    than in a shuffled order, every pair is still seen once an epoch, and the order follows the seed."""
    import random

    import transformers

    from pipelines.reward import RewardTrainConfig, make_trainer
    from store import Store
    from store.exports import preference_records

    with Store(tmp_path / "s.duckdb") as store:
        import_file(store, pairs_file, "made")
        records, _ = preference_records(store, "made")
    # Conversations as varied in length as HH's (the two sides of a pair share the prompt).
    records = [{**r, "prompt": r["prompt"][:-1] + [{"role": "user", "content": r["prompt"][-1]["content"]
                                                    + " more" * random.Random(i).randint(0, 200)}]}
               for i, r in enumerate(records[:120])]

    def masks(grouped: bool, seed: int = 0):
        config = RewardTrainConfig(base=str(tiny_model), batch_size=4, max_length=4096, seed=seed,
                                   group_by_length=grouped, device="cpu")
        trainer, _ = make_trainer(config, tmp_path, records, [])
        transformers.set_seed(seed)
        return [b["attention_mask"] for b in trainer.get_train_dataloader()]

    def padding_share(batches):
        return 1 - sum(int(m.sum()) for m in batches) / sum(m.numel() for m in batches)

    grouped, shuffled = masks(True), masks(False)
    assert RewardTrainConfig().group_by_length
    assert sum(m.shape[0] for m in grouped) == 2 * len(records)
    assert [m.tolist() for m in grouped] == [m.tolist() for m in masks(True)]
    assert [m.tolist() for m in grouped] != [m.tolist() for m in masks(True, seed=1)]
    assert padding_share(grouped) < 0.65 * padding_share(shuffled)


def test_a_length_balanced_reward_model_trains_on_as_many_longer_chosen_answers_as_shorter(tmp_path, workspace,
                                                                                         store, tiny_model):
    """Asked to balance lengths, training leaves out pairs of the larger length group at random until
    as many pairs have the longer chosen answer as the shorter one, and says how many it left out."""
    from pipelines.reward import length_balanced

    chosen, rejected = [9, 9, 9, 9, 9, 9, 2, 2, 5], [1, 1, 1, 1, 1, 1, 8, 8, 5]  # 6 longer, 2 shorter, 1 equal
    kept, cut = length_balanced(chosen, rejected, seed=0)
    assert cut == "longer"
    assert sum(chosen[i] > rejected[i] for i in kept) == sum(chosen[i] < rejected[i] for i in kept) == 2
    assert {6, 7, 8} <= set(kept) and kept == sorted(kept)
    assert kept == length_balanced(chosen, rejected, seed=0)[0] != length_balanced(chosen, rejected, seed=3)[0]

    rows = [{"chosen": f"\n\nHuman: question {i}?\n\nAssistant: " + ("a long and careful answer " * 6 if i < 9
                                                                         else "No."),
             "rejected": f"\n\nHuman: question {i}?\n\nAssistant: " + ("No." if i < 9 else "a long answer " * 6)}
            for i in range(12)]  # 9 pairs whose chosen answer is the longer, 3 the shorter
    path = tmp_path / "lengths.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    import_file(store, path, "lengths")
    runner = Runner(store, workspace)
    run_id = service.start_training(runner, "rm", "lengths", base=str(tiny_model), max_steps=2, eval_share=0.0,
                                    length_balance=True, **SMALL).run_id
    assert runner.wait(run_id)["status"] == "succeeded"
    events = (workspace.runs_dir / str(run_id) / "events.jsonl").read_text()
    assert "training on 6 pairs (6 with the longer chosen answer, to balance lengths, left out)" in events

    one_sided = tmp_path / "one-sided.jsonl"  # every chosen answer the longer: nothing to balance with
    one_sided.write_text("".join(json.dumps(r) + "\n" for r in rows[:9]))
    import_file(store, one_sided, "one-sided")
    run_id = service.start_training(runner, "rm", "one-sided", base=str(tiny_model), max_steps=2, eval_share=0.0,
                                    length_balance=True, **SMALL).run_id
    failed = runner.wait(run_id)
    assert failed["status"] == "failed"
    assert failed["message"].startswith("every pair's chosen answer is the longer one: balancing lengths")


def test_a_reward_model_can_leave_out_pairs_whose_answers_are_near_identical(tmp_path, workspace, store, tiny_model):
    """Asked to, training skips the pairs whose two answers differ only trivially and says how many;
    by default every pair is trained on."""
    rows = []
    for i in range(12):
        answer = f"Here is a careful answer number {i} about the question you asked."
        other = answer.upper() + "!" if i < 4 else f"No. I will not talk about {i}."
        rows.append({"chosen": f"\n\nHuman: question {i}?\n\nAssistant: {answer}",
                     "rejected": f"\n\nHuman: question {i}?\n\nAssistant: {other}"})
    path = tmp_path / "alike.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    import_file(store, path, "alike")
    runner = Runner(store, workspace)
    messages = {}
    for skip in (True, False):
        run_id = service.start_training(runner, "rm", "alike", base=str(tiny_model), max_steps=2, eval_share=0.0,
                                     skip_near_identical=skip, center_rewards=0.01, **SMALL).run_id
        assert runner.wait(run_id)["status"] == "succeeded"
        messages[skip] = (workspace.runs_dir / str(run_id) / "events.jsonl").read_text()
    assert "training on 8 pairs (4 with near-identical answers left out)" in messages[True]
    assert "training on 12 pairs" in messages[False] and "near-identical" not in messages[False]
    with pytest.raises(ValueError, match="center_rewards"):  # the check every config's numbers get
        from pipelines.reward import RewardTrainConfig
        from pipelines.runlog import config_from
        config_from(RewardTrainConfig, {"center_rewards": -1})
