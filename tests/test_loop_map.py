"""The Home tab's map of the loop, without a browser: each stage's state follows what the store
holds, and the next step names the tab that takes it with the right inputs."""

from __future__ import annotations

from pathlib import Path

from store import import_file
from store.runs import create_run, mark_running, record_adapter, record_events
from studio.loop_map import (
    DONE,
    LATER,
    LINEAGE_COLUMNS,
    NEXT,
    RUNNING,
    WEAK,
    furthest_along,
    lineage,
    lineage_step,
    lineage_table,
    stages_and_next,
)

from helpers import write_pairs

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def states(stages) -> dict[str, str]:
    return {s.name: s.state for s in stages}


def trained(store, workspace, kind: str, dataset: str, purpose: str, metrics: dict | None = None) -> int:
    run_id, folder = create_run(store, kind, {"base": "default"}, workspace.runs_dir, dataset)
    record_events(store, run_id, [{"step": 1, "metrics": metrics or {}}], 0, "succeeded", "done")
    with store.transaction() as cur:
        record_adapter(cur, run_id, f"{kind}-run{run_id}", folder / "model", "default", purpose)
    return run_id


def test_prompts_alone_lead_to_candidates(store):
    import_file(store, ASSETS / "demo_prompts.jsonl", "questions")
    stages, step = stages_and_next(store, "questions")
    assert states(stages)["prompts"] == DONE and states(stages)["candidates"] == NEXT
    assert states(stages)["labels"] == LATER
    assert (step.tab, step.label, step.inputs) == ("build", "Generate candidates",
                                                   {"dataset": "questions", "open_generate": True})


def test_pairs_with_verdicts_walk_the_loop_from_reward_model_to_judging(store, workspace, tmp_path):
    import_file(store, write_pairs(tmp_path / "pairs.jsonl.gz", n=10), "pairs")
    stages, step = stages_and_next(store, "pairs")
    assert [s.state for s in stages[:5]] == [DONE] * 5  # imported pairs need no candidates or filter
    assert "10 pairs with a preference; labels by source 10" in stages[4].detail
    assert (step.tab, step.inputs) == ("train", {"dataset": "pairs", "method": "Reward model"})

    trained(store, workspace, "rm", "pairs", "reward")
    stages, step = stages_and_next(store, "pairs")
    assert states(stages)["reward model"] == DONE and states(stages)["policy"] == NEXT
    assert step.inputs == {"dataset": "pairs", "method": "DPO"}

    policy = trained(store, workspace, "dpo", "pairs", "policy")
    stages, step = stages_and_next(store, "pairs")
    assert states(stages)["verdict"] == NEXT and f"dpo-run{policy}" in stages[6].detail
    assert (step.tab, step.inputs) == ("train", {"run": policy, "open_evaluate": True})
    # The lineage: each model with the run that made it and the pairs it read; a click opens each.
    rows = lineage(store, "pairs")
    assert [(r["model"], r["run"], r["dataset"], r["labels"], r["verdict"]) for r in rows] == [
        (f"dpo-run{policy}", policy, "pairs", "source 10", "not judged yet"), ("rm-run1", 1, "pairs", "source 10", "-")]
    assert lineage_step(rows[0], LINEAGE_COLUMNS.index("model")).inputs["run"] == policy
    assert lineage_step(rows[0], LINEAGE_COLUMNS.index("on the pairs of")).tab == "label"
    assert lineage_step(rows[0], LINEAGE_COLUMNS.index("exports")).tab == "train"  # nothing exported yet
    assert lineage_table(rows)[1][:3] == ["rm-run1", "run 1 (rm)", "pairs"]
    # A run of another dataset is not this one's.
    import_file(store, write_pairs(tmp_path / "other.jsonl.gz", n=4, seed=1), "other")
    assert states(stages_and_next(store, "other")[0])["reward model"] == NEXT


def test_an_unknown_dataset_starts_at_the_import(store):
    stages, step = stages_and_next(store, "nothing")
    assert stages == [] and step.tab == "data"


def test_home_opens_on_the_dataset_furthest_along_the_loop(store, workspace, tmp_path):
    """A user coming back (after the guided demo, say) finds the map of the dataset their loop went
    furthest with, not of the first dataset created; among equals, the oldest."""
    import_file(store, ASSETS / "demo_prompts.jsonl", "every prompt")
    import_file(store, write_pairs(tmp_path / "a.jsonl.gz", n=6), "labelled")
    import_file(store, write_pairs(tmp_path / "b.jsonl.gz", n=6, seed=1), "labelled too")
    assert furthest_along(store, ["every prompt", "labelled", "labelled too"]) == "labelled"
    trained(store, workspace, "rm", "labelled too", "reward")
    assert furthest_along(store, ["every prompt", "labelled", "labelled too"]) == "labelled too"


def test_a_stage_under_way_shows_its_run_and_the_next_step_follows_it_rather_than_starting_another(
        store, workspace, tmp_path):
    import_file(store, write_pairs(tmp_path / "pairs.jsonl.gz", n=10), "pairs")
    trained(store, workspace, "rm", "pairs", "reward", {"heldout_accuracy": 0.5, "heldout_accuracy_low": 0.1,
                                                        "heldout_accuracy_high": 0.9})
    stages, step = stages_and_next(store, "pairs")
    # A reward model at chance is no check mark: it says so and what to do.
    assert states(stages)["reward model"] == WEAK and "label more pairs" in stages[5].detail
    run_id, _ = create_run(store, "dpo", {"base": "default"}, workspace.runs_dir, "pairs")
    mark_running(store, run_id, None)
    record_events(store, run_id, [{"step": 2, "total": 5, "metrics": {"loss": 0.6}}], 10, "running", "training")
    stages, step = stages_and_next(store, "pairs")
    assert states(stages)["policy"] == RUNNING
    assert stages[6].detail.startswith(f"run {run_id} (dpo) in progress 40%: training")
    assert (step.label, step.tab, step.inputs) == (f"Follow run {run_id}", "train", {"run": run_id})
