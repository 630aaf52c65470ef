"""A pair-trained pipeline under Accelerate's real two-process launcher on the CPU (torchrun,
gloo): one event stream, one saved adapter with its meta file.

`accelerate launch --cpu --num_processes 2` starts ONE process on a machine without GPUs (Accelerate
1.15 takes --cpu to its single-process launcher); `--multi_gpu --num_processes 2` without a GPU
starts two CPU ranks, which is what this test runs."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.dpo import DPOTrainConfig
from pipelines.runlog import save_config
from studio.runner import free_port

from helpers import read_events

ACCELERATE = str(Path(sys.executable).parent / "accelerate")


def two_ranks(*script: str) -> list[str]:
    """`accelerate launch` of `script` on two CPU ranks, on a port of its own (another test process
    may be launching too)."""
    return [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--main_process_port", str(free_port()), "--mixed_precision", "no", "--dynamo_backend", "no", *script]


def launch(tmp_path, module: str) -> subprocess.CompletedProcess:
    return subprocess.run(two_ranks("-m", module, "--config", str(tmp_path / "config.json")),
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)


def test_dpo_on_two_ranks_writes_one_event_stream_and_one_adapter(tmp_path, tiny_model, models_dir):
    def messages(role, text):
        return json.dumps([{"role": role, "content": text}])

    pairs = [{"pair_id": f"p{i}", "prompt": messages("user", f"What is {i} plus {i}?"),
              "chosen": messages("assistant", f"{2 * i}."), "rejected": messages("assistant", f"I won't say, {i}.")}
             for i in range(12)]
    pq.write_table(pa.Table.from_pylist(pairs), tmp_path / "inputs.parquet")
    save_config(DPOTrainConfig(base=str(tiny_model), models_dir=str(models_dir), max_steps=3, batch_size=2,
                               max_length=96, lora_r=4, lora_alpha=8, eval_share=0.25), tmp_path / "config.json")
    result = launch(tmp_path, "pipelines.dpo")
    assert result.returncode == 0, result.stderr[-3000:]
    events = read_events(tmp_path)
    statuses = [e["status"] for e in events]
    assert statuses.count("started") == 1 and statuses.count("succeeded") == 1 and statuses[-1] == "succeeded"
    assert events[0]["message"].endswith("on 2 processes")  # two ranks really ran
    train_steps = [e["step"] for e in events if "loss" in e.get("metrics", {})]
    assert train_steps == [1, 2, 3]
    meta = json.loads((tmp_path / "model" / "studio_model.json").read_text())
    assert meta["kind"] == "policy" and meta["method"] == "dpo"
    assert (tmp_path / "model" / "adapter_model.safetensors").is_file()


def test_a_reward_model_on_two_ranks_scores_every_held_out_pair_once(tmp_path, tiny_model, models_dir):
    """Two ranks: the subset is evaluated at the checkpoint (step 2) and not again at the last step
    (3); every held-out pair is then scored once, by the main rank, into one report card."""
    from pipelines.reward import RewardTrainConfig

    def messages(role, text):
        return json.dumps([{"role": role, "content": text}])

    pairs = [{"pair_id": f"p{i}", "prompt": messages("user", f"Is {i} even?"),
              "chosen": messages("assistant", "Yes." if i % 2 == 0 else "No."),
              "rejected": messages("assistant", f"I refuse to talk about {i}.")} for i in range(16)]
    pq.write_table(pa.Table.from_pylist(pairs), tmp_path / "inputs.parquet")
    save_config(RewardTrainConfig(base=str(tiny_model), models_dir=str(models_dir), max_steps=3, save_every=2,
                                  batch_size=2, max_length=96, lora_r=4, lora_alpha=8, eval_share=0.25),
                tmp_path / "config.json")
    result = launch(tmp_path, "pipelines.reward")
    assert result.returncode == 0, result.stderr[-3000:]
    events = read_events(tmp_path)
    assert events[0]["message"].endswith("on 2 processes")
    assert [e["status"] for e in events].count("succeeded") == 1
    assert any("of the 4 held-out pairs every 2 steps and on all of them at the end" in (e.get("message") or "")
               for e in events)
    # evaluated at its checkpoint (step 2) and not again at the last step, where every held-out pair is scored
    assert [e["step"] for e in events if "eval_accuracy" in e.get("metrics", {})] == [2, 3]
    assert events[-1]["metrics"]["eval_accuracy"] == events[-1]["metrics"]["heldout_accuracy"]
    card = json.loads((tmp_path / "report_card.json").read_text())
    assert card["pairs"] == len(pq.read_table(tmp_path / "held_out_scores.parquet")) == 4


def test_a_cancel_seen_by_one_rank_stops_both_at_one_step(tmp_path, tiny_model, models_dir):
    """Only rank 0 gets the stop request (the worst case: the ranks see it at different steps);
    both must stop together after the same step, save, and report one 'cancelled', not hang."""
    import signal
    import time

    import psutil

    pairs = [{"pair_id": f"p{i}", "prompt": json.dumps([{"role": "user", "content": f"Add {i} and {i}."}]),
              "chosen": json.dumps([{"role": "assistant", "content": f"{2 * i}."}]),
              "rejected": json.dumps([{"role": "assistant", "content": "No."}])} for i in range(40)]
    pq.write_table(pa.Table.from_pylist(pairs), tmp_path / "inputs.parquet")
    save_config(DPOTrainConfig(base=str(tiny_model), models_dir=str(models_dir), max_steps=200, batch_size=2,
                               max_length=64, lora_r=4, lora_alpha=8, eval_share=0.0, save_every=1000),
                tmp_path / "config.json")
    command = two_ranks("-m", "pipelines.dpo", "--config", str(tmp_path / "config.json"))
    launcher = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            if (tmp_path / "events.jsonl").exists() and any(e.get("step", 0) >= 2 for e in read_events(tmp_path)):
                break
            time.sleep(0.5)
        ranks = [p for p in psutil.Process(launcher.pid).children(recursive=True)
                 if "pipelines.dpo" in " ".join(p.cmdline()) and p.pid != launcher.pid]
        rank0 = next(p for p in ranks if p.environ().get("RANK") == "0")
        rank0.send_signal(signal.SIGTERM)
        _, err = launcher.communicate(timeout=180)  # a hang fails here
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 0, err[-3000:]
    events = read_events(tmp_path)
    assert events[-1]["status"] == "cancelled"
    stopped = int(events[-1]["message"].split("at step ")[1].split(";")[0])
    assert stopped < 200 and (tmp_path / "checkpoints" / f"checkpoint-{stopped}" / "trainer_state.json").is_file()


@pytest.fixture(scope="module")
def tiny_reward_adapter(tmp_path_factory, tiny_model, models_dir):
    """A reward model trained two steps on the tiny base (PPO's reward on the ranks)."""
    from pipelines.reward import RewardTrainConfig, run
    from pipelines.runlog import RunLog

    folder = tmp_path_factory.mktemp("rm")
    pairs = [{"pair_id": f"p{i}", "prompt": json.dumps([{"role": "user", "content": f"Say {i}."}]),
              "chosen": json.dumps([{"role": "assistant", "content": f"{i}."}]),
              "rejected": json.dumps([{"role": "assistant", "content": "No."}])} for i in range(8)]
    pq.write_table(pa.Table.from_pylist(pairs), folder / "inputs.parquet")
    config = RewardTrainConfig(base=str(tiny_model), models_dir=str(models_dir), max_steps=2, batch_size=2,
                               max_length=64, lora_r=4, lora_alpha=8, eval_share=0.0)
    run(config, RunLog(folder))
    assert read_events(folder)[-1]["status"] == "succeeded"
    return folder / config.output


def ppo_config(tmp_path, tiny_model, models_dir, reward_adapter, **overrides):
    from pipelines.ppo import PPOTrainConfig

    prompts = [{"prompt_id": f"p{i}", "prompt": json.dumps([{"role": "user", "content": f"Count to {i}."}])}
               for i in range(12)]
    pq.write_table(pa.Table.from_pylist(prompts), tmp_path / "inputs.parquet")
    settings = dict(base=str(tiny_model), models_dir=str(models_dir), reward_adapter=str(reward_adapter),
                    max_steps=3, batch_size=4, mini_batch_size=2, ppo_epochs=1, max_new_tokens=6, lora_r=4,
                    lora_alpha=8, watch_prompts=0, num_processes=2, device="cpu")
    save_config(PPOTrainConfig(**{**settings, **overrides}), tmp_path / "config.json")


def test_ppo_on_two_ranks_shares_each_batch_and_writes_one_event_stream(tmp_path, tiny_model, models_dir,
                                                                       tiny_reward_adapter):
    ppo_config(tmp_path, tiny_model, models_dir, tiny_reward_adapter, watch_prompts=2, watch_every=3)
    result = launch(tmp_path, "pipelines.ppo")
    assert result.returncode == 0, result.stderr[-3000:]
    events = read_events(tmp_path)
    statuses = [e["status"] for e in events]
    assert statuses.count("started") == 1 and statuses.count("succeeded") == 1 and statuses[-1] == "succeeded"
    assert events[0]["message"].endswith("on 2 processes")
    steps = [e for e in events if "reward" in e.get("metrics", {})]
    assert [e["step"] for e in steps] == [1, 2, 3]  # one line per step, not one per rank
    assert all(e["metrics"]["prompts"] == 4 for e in steps)  # the whole batch, two prompts on each rank
    assert [e["step"] for e in events if "watch/proxy_win" in e.get("metrics", {})] == [3]  # the main rank's watch
    assert (tmp_path / "model" / "adapter_model.safetensors").is_file()
    assert json.loads((tmp_path / "model" / "studio_model.json").read_text())["method"] == "ppo"


def test_a_batch_that_two_ranks_cannot_share_is_refused_before_a_run():
    from pipelines.ppo import PPOTrainConfig

    with pytest.raises(ValueError, match="mini_batch_size \\(3\\) must be a multiple of num_processes \\(2\\)"):
        PPOTrainConfig(num_processes=2, batch_size=4, mini_batch_size=3)


def test_ppo_on_two_ranks_cancels_together_and_resumes_to_the_end(tmp_path, tiny_model, models_dir,
                                                                  tiny_reward_adapter):
    """Rank 0 alone gets the stop request; both ranks stop after the same step with one checkpoint
    (each rank's random state in it), and a second launch resumes to the last step."""
    import signal
    import time

    import psutil

    ppo_config(tmp_path, tiny_model, models_dir, tiny_reward_adapter, max_steps=200, save_every=1000)
    command = two_ranks("-m", "pipelines.ppo", "--config", str(tmp_path / "config.json"))
    launcher = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            if (tmp_path / "events.jsonl").exists() and any(e.get("step", 0) >= 2 for e in read_events(tmp_path)):
                break
            time.sleep(0.5)
        ranks = [p for p in psutil.Process(launcher.pid).children(recursive=True)
                 if "pipelines.ppo" in " ".join(p.cmdline()) and p.pid != launcher.pid]
        next(p for p in ranks if p.environ().get("RANK") == "0").send_signal(signal.SIGTERM)
        _, err = launcher.communicate(timeout=180)  # a hang fails here
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 0, err[-3000:]
    events = read_events(tmp_path)
    assert events[-1]["status"] == "cancelled"
    stopped = events[-1]["step"]
    checkpoint = tmp_path / "checkpoints" / f"step-{stopped}"
    saved = {p.name for p in checkpoint.iterdir()}
    assert {"ppo_state.pt", "rng-0.pt", "rng-1.pt", "adapter_model.safetensors"} <= saved

    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "max_steps": stopped + 2}))
    result = launch(tmp_path, "pipelines.ppo")
    assert result.returncode == 0, result.stderr[-3000:]
    events = read_events(tmp_path)
    assert events[-1]["status"] == "succeeded"
    assert any(e.get("message") == f"resuming from step-{stopped}" for e in events)
    steps = [e["step"] for e in events if "reward" in e.get("metrics", {})]
    assert steps == list(range(1, stopped + 3))  # each step once across both launches


def test_the_runner_trains_on_two_processes_cancels_and_resumes(workspace, store, tiny_model):
    """`--num-processes 2` through the runner (as the Train tab and `alignstudio train` start it):
    Accelerate's launcher, one event stream, a cancel that stops both ranks, a resume that ends."""
    import time

    from store import import_file
    from studio import service
    from studio.runner import Runner

    rows = [{"prompt": f"What is {i} plus {i}?", "chosen": f"{2 * i}.", "rejected": f"No, {i}."} for i in range(40)]
    data = workspace.root / "sums.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    import_file(store, data, "sums")
    runner = Runner(store, workspace)
    run_id = service.start_training(
        runner,
        "dpo",
        "sums",
        base=str(tiny_model),
        num_processes=2,
        max_steps=30,
        batch_size=2,
        max_length=64,
        lora_r=4,
        lora_alpha=8,
        eval_share=0.0,
        save_every=100,
    ).run_id
    deadline = time.time() + 300
    while time.time() < deadline:
        runner.sync(run_id)
        if (store.scalar("SELECT max(step) FROM run_metrics WHERE run_id = ?", [run_id]) or 0) >= 2:
            break
        time.sleep(0.5)
    def ended(timeout):  # a hang fails here, not the whole suite
        stop = time.time() + timeout
        while time.time() < stop:
            run = runner.sync(run_id)
            if run["status"] not in ("queued", "running"):
                return run
            time.sleep(0.5)
        raise AssertionError(f"run {run_id} still {run['status']} after {timeout} s")

    runner.cancel(run_id)
    run = ended(180)
    assert run["status"] == "cancelled", run["message"]
    runner.resume(run_id)
    run = ended(300)
    assert run["status"] == "succeeded", run["message"]
    folder = workspace.runs_dir / str(run_id)
    events = read_events(folder)
    started = [e for e in events if e["status"] == "started"]
    assert len(started) == 2 and all(e["message"].endswith("on 2 processes") for e in started)  # run, then resume
    steps = [e["step"] for e in events if "loss" in e.get("metrics", {})]
    assert steps == sorted(set(steps)) and steps[-1] == 30  # each step once across both launches
    assert store.scalar("SELECT count(*) FROM models WHERE run_id = ?", [run_id]) == 1


def test_orpo_on_two_ranks_writes_one_event_stream_and_one_adapter(tmp_path, tiny_model, models_dir):
    from pipelines.orpo import ORPOTrainConfig

    def messages(role, text):
        return json.dumps([{"role": role, "content": text}])

    pairs = [{"pair_id": f"p{i}", "prompt": messages("user", f"What is {i} plus {i}?"),
              "chosen": messages("assistant", f"{2 * i}."), "rejected": messages("assistant", "No idea.")}
             for i in range(8)]
    pq.write_table(pa.Table.from_pylist(pairs), tmp_path / "inputs.parquet")
    save_config(ORPOTrainConfig(base=str(tiny_model), models_dir=str(models_dir), max_steps=2, batch_size=2,
                                max_length=64, lora_r=4, lora_alpha=8, eval_share=0.25), tmp_path / "config.json")
    result = launch(tmp_path, "pipelines.orpo")
    assert result.returncode == 0, result.stderr[-3000:]
    events = read_events(tmp_path)
    assert events[0]["message"].endswith("on 2 processes")
    assert [e["status"] for e in events].count("succeeded") == 1
    assert events[-1]["message"].startswith("ORPO trained (2 steps)")
    assert (tmp_path / "model" / "adapter_model.safetensors").is_file()


def test_alignstudio_train_ppo_on_two_processes(tmp_path, tiny_model, models_dir):
    """The issue's command line: `alignstudio train ppo --num-processes 2` against a reward model
    trained in the same workspace; one run, on two processes, with one line per step."""
    from helpers import cli

    rows = [{"prompt": f"What is {i} plus {i}?", "chosen": f"{2 * i}.", "rejected": f"No, {i}."} for i in range(12)]
    (tmp_path / "sums.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    workspace = tmp_path / "ws"
    cli("import", tmp_path / "sums.jsonl", "--dataset", "sums", workspace=workspace)
    small = ["--base", tiny_model, "--lora-r", "4", "--lora-alpha", "8", "--max-length", "64", "--device", "cpu"]
    cli("train", "rm", "--dataset", "sums", "--max-steps", "2", "--batch-size", "2", "--eval-share", "0.25", *small,
        workspace=workspace, models_dir=models_dir)
    cli("train", "ppo", "--prompts", "sums", "--reward-run", "1", "--num-processes", "2", "--max-steps", "2",
        "--batch-size", "4", "--mini-batch-size", "2", "--ppo-epochs", "1", "--max-new-tokens", "6",
        "--watch-prompts", "0", *small, workspace=workspace, models_dir=models_dir)
    run = next(r for r in json.loads(cli("runs", "--json", workspace=workspace).stdout) if r["kind"] == "ppo")
    assert run["status"] == "succeeded", run
    events = read_events(workspace / "runs" / str(run["id"]))
    assert events[0]["message"].endswith("on 2 processes")
    steps = [(e["step"], e["metrics"]["prompts"]) for e in events if "reward" in e.get("metrics", {})]
    assert steps == [(1, 4), (2, 4)]


def test_the_sharding_settings_train_a_reward_model_on_two_cpu_ranks_as_one_process_does(tmp_path, tiny_model):
    """`shard fsdp` below Accelerate's prepare (which shards GPU ranks only; see tests/shard_ranks.py):
    the studio's settings give Accelerate's FSDP2 plugin, its wrap policy makes a shard group of each
    decoder layer, each rank holds half of every LoRA matrix, and a step on each rank's half of the
    batch gives the one-process step's LoRA and score head, gathered whole for saving."""
    out = tmp_path / "shard.json"
    result = subprocess.run(two_ranks(str(Path(__file__).with_name("shard_ranks.py")), str(tiny_model), str(out)),
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(out.read_text())
    assert found["plugin"] == {"fsdp_version": 2, "state_dict_type": "StateDictType.FULL_STATE_DICT",
                               "reshard_after_forward": True}
    assert found["shard_groups"] == ["base_model.model.model.layers.0", "base_model.model.model.layers.1"]
    assert found["lora_a_rows"] == {"whole": 4, "this_rank": 2}
    assert found["gathered_tensors"] == found["trained_tensors"] > 20  # every LoRA matrix and the score head
    assert found["moved"] > 1e-3 and found["max_difference"] < 1e-5  # it trained, and as one process does
    assert found["saved_difference"] < 1e-5  # the watch's save of a sharded adapter, loaded back whole
    assert found["scores"]["sharded"] == pytest.approx(found["scores"]["unsharded"], abs=1e-5)
