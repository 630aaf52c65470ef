"""The Train and Label tabs' handlers, called as the page calls them but without a browser: what a
click starts (the config a run gets, in the store), what it refuses, and what a labeller sees and
leaves. The browser tests (test_browser.py) keep the page itself honest."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pipelines import memory
from store import import_file
from store.labelling import LabelQueue
from studio import label_tab, service, train_tab
from studio.context import Context, handler
from studio.kinds import JOBS
from studio.methods import METHODS
from studio.runner import Runner

from helpers import write_pairs


@pytest.fixture
def ctx(workspace, store, tmp_path, monkeypatch):
    """A studio on 12 made pairs whose runner records what it would start instead of launching it."""
    import_file(store, write_pairs(tmp_path / "pairs.jsonl.gz", n=12), "pairs")
    runner = Runner(store, workspace)
    started = []

    def start(kind, config, inputs, dataset=None):
        assert kind in JOBS
        started.append((kind, config, inputs))
        return len(started)

    monkeypatch.setattr(runner, "start", start)
    runner.started = started  # what was started, for the tests to read
    return Context(workspace, store, runner, LabelQueue(store))


def form_values(method: str, **given) -> list:
    """The settings' controls as the Train tab shows them for `method` (its defaults), with `given`."""
    values = []
    for name in train_tab.CONTROL_ORDER:
        f = train_tab.field_of(METHODS[method], name)
        values.append(given.get(name, train_tab.shown_value(f) if f else None))
    return values


def test_start_training_from_the_form_gets_the_forms_settings(ctx, tiny_model):
    said, runs = train_tab.start_run(ctx, "DPO", "pairs", "", None, "", False, False,
                                     *form_values("dpo", base=str(tiny_model), beta="0.25", max_steps=3))
    assert said.startswith("Run 1 started.")
    kind, config, inputs = ctx.runner.started[0]
    assert kind == "dpo" and config.beta == 0.25 and config.max_steps == 3 and config.base == str(tiny_model)
    assert len(inputs[config.inputs]) == 12  # every labelled pair (the file's verdicts)


def test_the_form_refuses_before_a_run_exists(ctx, tiny_model):
    values = form_values("dpo", base=str(tiny_model))
    said, _ = train_tab.start_run(ctx, "DPO", None, "", None, "", False, False, *values)
    assert said == "**Pick a dataset of pairs.**"
    said, _ = train_tab.start_run(ctx, "PPO", "pairs", "", None, "", False, False, *form_values("ppo"))
    assert said == "**Pick a reward model (train one first).**"
    bad = form_values("dpo", base=str(tiny_model), max_steps="many")
    said, _ = train_tab.start_run(ctx, "DPO", "pairs", "", None, "", False, False, *bad)
    assert "is not a valid value" in said
    said, _ = train_tab.start_run(ctx, "Reward model", "pairs", "pairs", None, "", True, False,
                                  *form_values("rm", base=str(tiny_model)))
    assert "judge split holds out a share of each half" in said
    assert ctx.runner.started == []


def test_a_judge_split_from_the_form_starts_two_prompt_disjoint_halves(ctx, tiny_model):
    said, runs = train_tab.start_run(ctx, "Reward model", "pairs", "", None, "", True, False,
                                     *form_values("rm", base=str(tiny_model)))
    assert said.startswith("Runs 1 (proxy") and "and 2 (judge" in said
    (_, proxy, proxy_in), (_, judge, judge_in) = ctx.runner.started
    assert (proxy.judge_split, judge.judge_split) == ("proxy", "judge")
    prompts = [{r["prompt"] for r in inputs[proxy.inputs]} for inputs in (proxy_in, judge_in)]
    assert not prompts[0] & prompts[1] and len(prompts[0]) + len(prompts[1]) == 12


def test_switching_the_method_shows_only_its_settings(ctx):
    updates = train_tab.switch_method(ctx, "PPO")
    shown = {name for name, u in zip(train_tab.CONTROL_ORDER, updates) if u.get("visible")}
    assert "vf_coef" in shown and "beta" not in shown
    assert "value" not in updates[train_tab.CONTROL_ORDER.index("base")]  # the base typed stays
    *_, dataset, eval_dataset, reward_run, judge_run, judge_split, explanation = updates
    assert dataset["label"] == "Prompts" and reward_run["visible"] and not eval_dataset["visible"]
    assert explanation.startswith("**PPO**") and "reward model" in explanation


def test_a_training_start_builds_its_config_once_and_plans_memory_once(ctx, tiny_model, monkeypatch):
    counts = {"config": 0, "plan": 0}
    make_config, plan = service.make_config, memory.plan

    def counted_config(*args, **kwargs):
        counts["config"] += 1
        return make_config(*args, **kwargs)

    def counted_plan(*args, **kwargs):
        counts["plan"] += 1
        return plan(*args, **kwargs)

    monkeypatch.setattr(service, "make_config", counted_config)
    monkeypatch.setattr(service, "plan", counted_plan)
    started = service.start_training(ctx.runner, "rm", "pairs", base=str(tiny_model), judge_split=True)
    assert counts == {"config": 1, "plan": 1} and len(started.run_ids) == 2 and started.plan.total_gb > 0
    said, _ = train_tab.start_run(ctx, "DPO", "pairs", "", None, "", False, False,
                                  *form_values("dpo", base=str(tiny_model)))
    # This machine has no GPU: the plan says what a GPU would need, not that this one has too little.
    assert counts == {"config": 2, "plan": 2} and "the run trains on its CPU (on a GPU, memory plan: about" in said
    monkeypatch.setattr(service, "free_gpu_gb", lambda: 20.0)
    said, _ = train_tab.start_run(ctx, "DPO", "pairs", "", None, "", False, False,
                                  *form_values("dpo", base=str(tiny_model)))
    assert "Memory plan: about" in said


def test_the_handler_binds_the_context_and_keeps_gradios_request(ctx):
    bound = handler(label_tab.begin, ctx)
    import inspect

    assert list(inspect.signature(bound).parameters) == ["dataset_name", "name", "show_rm", "order", "reward_model",
                                                       "request"]
    from gradio.utils import get_type_hints

    assert get_type_hints(bound)["request"].__name__ == "Request"


def request(session: str, username: str | None = None):
    return SimpleNamespace(session_hash=session, username=username)


def test_labelling_from_two_sessions_keeps_every_label_under_its_annotator(ctx):
    """Two logins label the same dataset at once: each is shown a pair the other does not hold, and
    each answer lands under the login, whatever the name field says."""
    ada, bo = request("s1", "ada"), request("s2", "bo")
    first = label_tab.begin(ctx, "pairs", "", False, "shuffled", None, ada)
    second = label_tab.begin(ctx, "pairs", "typed name", False, "shuffled", None, bo)
    assert first[0].pair_id != second[0].pair_id
    shown = label_tab.answer(ctx, "left", "pairs", "", first[0], False, "shuffled", None, ada)
    assert shown[1].startswith("Saved: left is better. ada: 1 of 12 pairs labelled")
    label_tab.answer(ctx, "tie", "pairs", "typed name", second[0], False, "shuffled", None, bo)
    labels = ctx.store.query("SELECT annotator, verdict FROM labels ORDER BY annotator")
    assert [(r["annotator"], r["verdict"]) for r in labels] == [("ada", "first" if not first[0].swapped else
                                                                  "second"), ("bo", "tie")]
    undone = label_tab.take_back(ctx, "pairs", "", shown[0], False, "shuffled", None, ada)
    assert undone[0].pair_id == first[0].pair_id and undone[1].startswith("Undone")
    assert ctx.store.scalar("SELECT count(*) FROM labels WHERE annotator = 'ada'") == 0


def test_the_label_tab_says_what_to_do_instead_of_failing(ctx):
    alone = request("s3")
    assert label_tab.begin(ctx, None, "me", False, "shuffled", None, alone)[1].startswith("**Pick a dataset")
    assert label_tab.begin(ctx, "pairs", "  ", False, "shuffled", None, alone)[1] == "**type an annotator name first**"
    said = label_tab.answer(ctx, "left", "pairs", "me", None, False, "shuffled", None, alone)[1]
    assert said == "**Start labelling first.**"
    assert label_tab.take_back(ctx, "pairs", "me", None, False, "shuffled", None, alone)[1] == "**Nothing to undo.**"
    said = label_tab.start_judge_labels(ctx, "pairs", "no-such-judge")
    assert said.startswith("**no-such-judge: no GGUF model of that name")
    assert ctx.runner.started == []


def test_a_compare_vote_under_logins_is_the_logins_whatever_name_is_typed(ctx):
    """Under `serve --auth` a teammate cannot replace another's vote by typing their name: the vote
    carries the login. Without logins the name typed is the annotator, as before."""
    from studio import compare_tab

    def battle():
        conversation = compare_tab.new_conversation("model-a", "model-b", blind=False)
        conversation["sides"] = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
                                 [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hey"}]]
        conversation["prompt_turns"] = 1
        return conversation

    compare_tab.vote(ctx, "left", "bob", battle(), request("s1", "bob"))
    said = compare_tab.vote(ctx, "right", "bob", battle(), request("s2", "alice"))[-1]
    assert said.startswith("Vote stored")
    compare_tab.vote(ctx, "tie", "carol", battle(), request("s3"))
    votes = {r["annotator"]: r["verdict"] for r in ctx.store.query(
        "SELECT annotator, verdict FROM labels l JOIN dataset_pairs USING (pair_id)")}
    assert votes == {"bob": "first", "alice": "second", "carol": "tie"}  # bob's vote stands
