"""Every pipeline once, through the job runner, on the default model: the check to run on a GPU
machine (`make gpu-smoke`), and on the CPU path a machine without one can exercise (`--cpu`).

A throw-away workspace gets made-up pairs and prompts; each stage starts a job as the studio
does, waits for it, and the table says: stage, seconds, the run's peak GPU memory (from its own
report), ok or the run's message. QLoRA is tried where bitsandbytes is installed. The exit code is
the number of stages that failed.

    python scripts/gpu_smoke.py            # on the GPU (every stage, a few minutes)
    python scripts/gpu_smoke.py --cpu      # the same stages on the CPU (slow: minutes per stage)
    python scripts/gpu_smoke.py --cpu --only perplexity,rm,dpo,evaluate

Besides one process per pipeline, on two GPUs where the machine has two: DPO and PPO
data-parallel, and the reward model, DPO and QLoRA-DPO sharded (`shard fsdp`: Accelerate shards GPU
ranks only, so this is the one place the sharded path itself runs; tests/shard_ranks.py proves its
pieces on CPU ranks); and a reward model as a bundle run by its own launcher and imported back.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from store import import_file  # noqa: E402
from store.queries import latest_metrics  # noqa: E402
from studio import service  # noqa: E402
from studio.runner import Runner  # noqa: E402
from studio.workspace import Workspace  # noqa: E402

STAGES = ("perplexity", "generate", "rm", "dpo", "kto", "ppo", "grpo", "rloo", "evaluate", "qlora", "export",
          "compare", "dpo-2gpu", "ppo-2gpu", "rm-fsdp", "dpo-fsdp", "qlora-fsdp", "rm-bundle")
TOPICS = ("tea", "rain", "cats", "bread", "the sea", "maps", "bees", "glass")


def made_pairs(n: int) -> list[dict]:
    """Pairs whose preferred side is short and plain, the other long and repetitive."""
    return [{"prompt": f"Tell me one thing about {TOPICS[i % len(TOPICS)]} (question {i}).",
             "chosen": f"{TOPICS[i % len(TOPICS)].capitalize()} is worth a look.",
             "rejected": " ".join([f"{TOPICS[i % len(TOPICS)]}"] * 12) + " and so on."} for i in range(n)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (the path a machine without a GPU has)")
    parser.add_argument("--only", default="", help=f"comma-separated stages of: {', '.join(STAGES)}")
    parser.add_argument("--workspace", help="where to work (default: a temporary folder)")
    parser.add_argument("--models-dir", help="where the converted default model is kept (default: the workspace's, "
                                             "or $ALIGNSTUDIO_MODELS_DIR)")
    args = parser.parse_args(argv)
    stages = [s for s in args.only.split(",") if s] or list(STAGES)
    unknown = set(stages) - set(STAGES)
    if unknown:
        parser.error(f"unknown stages: {', '.join(sorted(unknown))}")
    device = "cpu" if args.cpu else "cuda"
    root = Path(args.workspace or tempfile.mkdtemp(prefix="gpu-smoke-"))
    workspace = Workspace.at(root, args.models_dir)
    data = root / "pairs.jsonl"
    root.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps(p) + "\n" for p in made_pairs(24)))
    small = dict(device=device, max_steps=2, batch_size=2, lora_r=4, lora_alpha=8)
    rows, runs = ([] if args.cpu else gpu_readiness()), {}
    with workspace.open_store() as store:
        import_file(store, data, "pairs")
        runner = Runner(store, workspace, one_job_at_a_time=False)

        def start(stage: str) -> int | None:
            if stage == "perplexity":
                return service.start_perplexity(runner, "pairs", device=device, batch_size=4)
            if stage == "generate":
                return service.start_generation(runner, "pairs", n=2, max_new_tokens=16)
            if stage in ("rm", "dpo", "kto"):
                return service.start_training(runner, stage, "pairs", eval_share=0.25, max_length=128, **small).run_id
            if stage in ("ppo", "grpo", "rloo"):
                if "rm" not in runs:
                    return None
                extra = {"num_generations": 2} if stage != "ppo" else {"mini_batch_size": 2}
                return service.start_training(runner, stage, prompts="pairs", reward_run=runs["rm"], max_new_tokens=16,
                                           watch_prompts=0, **small, **extra).run_id
            if stage == "evaluate":
                if "dpo" not in runs:
                    return None
                return service.start_evaluation(runner, runs["dpo"], "pairs", rule="heuristic", limit=4,
                                             max_new_tokens=16, device=device)
            if stage == "qlora":  # on the CPU too: bitsandbytes quantises there (slowly)
                if importlib.util.find_spec("bitsandbytes") is None:
                    return None
                return service.start_training(runner, "dpo", "pairs", load_in_4bit=True, max_length=128, **small).run_id
            if stage == "dpo-2gpu":  # data-parallel over two cards (skipped with fewer than two)
                if args.cpu or gpu_count() < 2:
                    return None
                return service.start_training(runner, "dpo", "pairs", num_processes=2, max_length=128, **small).run_id
            if stage == "ppo-2gpu":  # each card samples half of each batch
                if args.cpu or gpu_count() < 2 or "rm" not in runs:
                    return None
                return service.start_training(runner, "ppo", prompts="pairs", reward_run=runs["rm"], num_processes=2,
                                              max_new_tokens=16, watch_prompts=2, watch_every=2, mini_batch_size=2,
                                              **small).run_id
            if stage in ("rm-fsdp", "dpo-fsdp", "qlora-fsdp"):  # the base sharded over two cards
                if args.cpu or gpu_count() < 2:
                    return None
                if stage == "qlora-fsdp" and importlib.util.find_spec("bitsandbytes") is None:
                    return None
                method = "rm" if stage == "rm-fsdp" else "dpo"
                return service.start_training(runner, method, "pairs", num_processes=2, shard="fsdp", eval_share=0.25,
                                              max_length=128, load_in_4bit=stage == "qlora-fsdp", **small).run_id
            if stage == "rm-bundle":  # a bundle run by its own launcher here, then imported
                return run_bundle(runner, root, dict(eval_share=0.25, max_length=128, **small))
            if stage == "export":
                return service.start_export(runner, run_id=runs["dpo"], quants=["f16"]) if "dpo" in runs else None
            if stage == "compare":
                exported = store.scalar("SELECT name FROM models WHERE kind = 'gguf' ORDER BY id DESC LIMIT 1")
                if exported is None:
                    return None
                return service.start_comparison(runner, "default", exported, "pairs", limit=2, max_tokens=16)
            raise ValueError(stage)

        for stage in stages:
            began = time.monotonic()
            try:
                run_id = start(stage)
            except Exception as e:  # a refusal is a failure of this stage; the others go on
                rows.append((stage, time.monotonic() - began, None, f"not started: {e}"))
                continue
            if run_id is None:
                rows.append((stage, 0.0, None, "skipped (needs an earlier stage, a GPU or bitsandbytes)"))
                continue
            run = runner.wait(run_id)
            runs[stage] = run_id
            peak = latest_metrics(store, run_id).get("peak_gpu_gb")
            outcome = "ok" if run["status"] == "succeeded" else f"{run['status']}: {run['message']}"
            rows.append((stage, time.monotonic() - began, peak, outcome))
    print(f"{'stage':12} {'seconds':>8} {'peak GPU GB':>12}  outcome  ({device}, workspace {root})")
    for stage, seconds, peak, outcome in rows:
        print(f"{stage:12} {seconds:8.1f} {'' if peak is None else f'{peak:.2f}':>12}  {outcome}")
    return sum(1 for row in rows if row[3] != "ok" and not row[3].startswith("skipped"))


def gpu_readiness() -> list[tuple]:
    """Rows of the table for what a GPU run needs besides the card: without them generation, the
    export check and Compare quietly run on the CPU, and the QLoRA stages are skipped, so the smoke
    would pass without having tried the GPU path. Each missing piece is a failed row."""
    import torch

    rows = []
    if not torch.cuda.is_available():
        rows.append(("cuda", 0.0, None, "failed: torch sees no CUDA device (run with --cpu on a machine without one)"))
    try:
        import llama_cpp

        offload = bool(llama_cpp.llama_supports_gpu_offload())
    except Exception as e:  # noqa: BLE001 (a missing or broken build is the finding itself)
        offload, why = False, f"{type(e).__name__}: {e}"
    else:
        why = "this llama-cpp-python was built without CUDA"
    rows.append(("llama.cpp", 0.0, None, "ok" if offload else f"failed: cannot offload to the GPU ({why}); make gpu"))
    have_bnb = importlib.util.find_spec("bitsandbytes") is not None
    rows.append(("bitsandbytes", 0.0, None, "ok" if have_bnb else "failed: not installed (QLoRA); make gpu"))
    return rows


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run_bundle(runner, root: Path, settings: dict) -> int:
    """A reward model as a bundle (`train rm --bundle`), run by its launch.sh on this machine's
    GPUs (at most two), imported back: the id of the imported run."""
    import os
    import subprocess

    from studio.bundles import import_bundle

    folder = root / "bundle"
    service.start_training(runner, "rm", "pairs", bundle=folder, **settings)
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(Path(__file__).resolve().parents[1]),
               NUM_PROCESSES=str(max(min(gpu_count(), 2), 1)))
    with open(folder / "log.txt", "w") as log:
        subprocess.run(["bash", str(folder / "launch.sh")], env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    return import_bundle(runner, folder)


if __name__ == "__main__":
    sys.exit(main())
