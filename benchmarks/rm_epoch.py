"""Reward-model epoch time with length-grouped batches against shuffled ones, in the same run.

    python benchmarks/rm_epoch.py [--pairs 600] [--sample 10] [--base default]

Builds the studio's RewardTrainer (pipelines/reward.py: LoRA r 16 on all linear layers, batch 4,
max 512 tokens, float32 on the CPU) on HH-RLHF pairs from ../shared/data, once per ordering, and
lists the batches of one epoch in each. Timing every step of two whole epochs takes about an hour
here, so each epoch's time is estimated from `--sample` of its batches drawn at random (seeded)
and timed as training steps: the mean step time times the number of batches. Also prints the
share of each epoch's tokens that are padding, useful tokens per second and the share of the
machine's float32 peak (benchmarks/peak.py) that the steps reach. Target: grouped >= 1.5x.
It runs under glibc's mmap threshold that the studio's runner sets for every job (re-executing
itself with it), so that both orders are timed as a training run would time them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.peak import models_dir  # noqa: E402
from benchmarks.train import hh_records  # noqa: E402


def epoch(records: list[dict], grouped: bool, base: str, models_dir: str, sample: int, folder: Path) -> dict:
    import torch
    from transformers import AutoConfig

    from benchmarks.peak import forward_flops_per_token
    from pipelines.models import resolve_model
    from pipelines.reward import RewardTrainConfig, make_trainer

    config = RewardTrainConfig(base=base, models_dir=models_dir, group_by_length=grouped, device="cpu")
    trainer, _ = make_trainer(config, folder, records, [])
    torch.manual_seed(0)
    batches = list(trainer.get_train_dataloader())
    useful = sum(int(b["attention_mask"].sum()) for b in batches)
    padded = sum(b["attention_mask"].numel() for b in batches)
    picked = random.Random(0).sample(range(len(batches)), min(sample, len(batches)))
    model = trainer.model
    model.train()
    trainer.create_optimizer_and_scheduler(num_training_steps=len(batches))
    trainer.current_gradient_accumulation_steps = 1  # set by train(), which is not called here
    trainer.training_step(model, batches[picked[0]])  # warm-up, not timed
    model_config = AutoConfig.from_pretrained(resolve_model(base, models_dir))
    seconds, flops = [], 0.0
    for i in picked:
        start = time.perf_counter()
        trainer.training_step(model, batches[i])
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()
        seconds.append(time.perf_counter() - start)
        rows, length = batches[i]["attention_mask"].shape
        # Forward + backward of LoRA training: about 3x the forward (padding computed too; no LM head).
        flops += 3 * rows * length * forward_flops_per_token(model_config, length / 2, output_layer=False)
    step = sum(seconds) / len(seconds)
    return {"batches": len(batches), "padding": 1 - useful / padded, "epoch_s": step * len(batches),
            "useful_tokens_per_s": useful / (step * len(batches)), "gflops": flops / sum(seconds) / 1e9}


def main() -> None:
    from benchmarks.peak import peak_gflops
    from studio.runner import MMAP_THRESHOLD

    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != str(MMAP_THRESHOLD):  # glibc reads it at start only
        os.execve(sys.executable, [sys.executable, *sys.argv],
                  {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)})

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="default")
    parser.add_argument("--models-dir", default=models_dir())
    parser.add_argument("--pairs", type=int, default=600)
    parser.add_argument("--sample", type=int, default=10)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        records = hh_records(Path(tmp), args.pairs)
        results = {way: epoch(records, way == "grouped", args.base, args.models_dir, args.sample, Path(tmp))
                   for way in ("shuffled", "grouped")}
    peak = peak_gflops()
    for way, r in results.items():
        share = r["gflops"] / peak
        print(f"{way:8} {r['batches']} batches, {r['padding']:.0%} padding: epoch {r['epoch_s'] / 60:.1f} min "
              f"(estimated from {args.sample} steps), {r['useful_tokens_per_s']:.0f} useful tokens/s, "
              f"{share:.0%} of the {peak:.0f} GFLOP/s peak")
    ratio = results["shuffled"]["epoch_s"] / results["grouped"]["epoch_s"]
    print(json.dumps({"grouped_speedup": round(ratio, 2), "pairs": args.pairs}))
    print(f"grouped / shuffled: {ratio:.2f}x faster per epoch ({args.pairs} pairs); target >= 1.5x")


if __name__ == "__main__":
    main()
