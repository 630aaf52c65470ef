"""Training overhead: DPO seconds per step and peak memory, the studio's pipeline against a plain
TRL script with the same settings, in the same run.

    python benchmarks/train.py [--base default] [--steps 6] [--pairs 64] [--memory]

Both train LoRA DPO (sigmoid loss, beta 0.1, r 16 on all linear layers, batch 4, max 512 tokens,
gradient checkpointing as in TRL's defaults, float32 on a CPU) on the same HH-RLHF pairs from
../shared/data in the same order, each in its own process, and report TRL's own train_runtime /
steps and the process's peak resident memory. Target: no overhead (ratio <= 1.05).

With --memory, the studio's pipeline before its memory changes (TRL's fused head scoring up to
32,768 tokens at once, glibc's default mmap threshold) against after (2,048 tokens, and the mmap
threshold the runner sets), and between them the 64 KiB threshold the runner set at first, all with
gradient checkpointing, as the 6.6 GB figure was measured. Target: a peak under 4 GiB at batch
4 x 512, no slower.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.peak import models_dir  # noqa: E402
from studio.runner import MMAP_THRESHOLD  # noqa: E402

HH = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless-sample.jsonl.gz"
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")


def hh_records(folder: Path, count: int) -> list[dict]:
    """The first `count` HH pairs as the pipelines read them (message lists), imported into a store in `folder`."""
    from store import Store, import_file
    from store.exports import preference_records

    with Store(folder / "bench.duckdb") as store:
        import_file(store, HH, "hh")
        records, _ = preference_records(store, "hh")
    return records[:count]


def write_inputs(folder: Path, pairs: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {"prompt": json.dumps(r["prompt"]), "chosen": json.dumps(r["chosen"]), "rejected": json.dumps(r["rejected"])}
        for r in hh_records(folder, pairs)
    ]
    pq.write_table(pa.Table.from_pylist(rows), folder / "inputs.parquet")


def studio(folder: Path, base: str, models_dir: str, steps: int, before: bool = False) -> float:
    import pipelines.dpo
    from pipelines.dpo import DPOTrainConfig, run

    if before:  # TRL's own chunk: the logits of up to 32,768 tokens at once
        pipelines.dpo.DPO_LOGIT_CHUNK = 32768
    from pipelines.runlog import RunLog

    # TRL's DPOConfig turns gradient checkpointing on by default, so the plain script has it; the
    # studio leaves it off for small models (faster, more memory) unless asked, as here.
    config = DPOTrainConfig(base=base, models_dir=models_dir, max_steps=steps, batch_size=4, max_length=512,
                            eval_share=0.0, save_every=10_000, gradient_checkpointing=True,
                            group_by_length=False)  # the plain script's shuffled order
    run(config, RunLog(folder))
    events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    return next(e["metrics"]["train_runtime"] for e in events if "train_runtime" in e.get("metrics", {}))


def plain(folder: Path, base: str, models_dir: str, steps: int) -> float:
    """What a user would write with TRL directly."""
    import pyarrow.parquet as pq
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from pipelines.models import resolve_model
    from pipelines.training import split

    path = resolve_model(base, models_dir)
    rows = [{k: json.loads(v) for k, v in r.items()} for r in pq.read_table(folder / "inputs.parquet").to_pylist()]
    # The pipeline trains on its seeded shuffle of the pairs; the same order here, so that both
    # see the same batches (peak memory follows the longest pair in a batch).
    rows, _ = split(rows, 0.0, 0)
    args = DPOConfig(output_dir=str(folder / "out"), max_steps=steps, per_device_train_batch_size=4, max_length=512,
                     bf16=False, use_cpu=True, logging_steps=1, save_strategy="no", report_to="none",
                     disable_tqdm=True, learning_rate=5e-5, seed=0)
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(path), args=args,
                         train_dataset=Dataset.from_list(rows), processing_class=AutoTokenizer.from_pretrained(path),
                         peft_config=LoraConfig(**LORA))
    return trainer.train().metrics["train_runtime"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="default")
    parser.add_argument("--models-dir", default=models_dir())
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--memory", action="store_true",
                        help="the studio's DPO before and after its memory changes (TRL's logit chunk and glibc's "
                             "default mmap threshold, against the studio's chunk and the runner's threshold)")
    parser.add_argument("--one", choices=("studio", "plain", "before"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:  # a child: train one way, print seconds/step and peak memory
        folder = Path(args.folder)
        if args.one == "plain":
            runtime = plain(folder, args.base, args.models_dir, args.steps)
        else:
            runtime = studio(folder, args.base, args.models_dir, args.steps, before=args.one == "before")
        peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # ru_maxrss is in KiB
        print(json.dumps({"s_per_step": runtime / args.steps, "peak_gib": peak_gib}))
        return

    # Each way: the child's pipeline and glibc's mmap threshold for it (None: glibc's own, moving one).
    ways = ({"before": ("before", None), "64 KiB": ("studio", 65536), "studio": ("studio", MMAP_THRESHOLD)}
            if args.memory else {"plain": ("plain", None), "studio": ("studio", MMAP_THRESHOLD)})
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (way, (pipeline, threshold)) in enumerate(ways.items()):
            folder = Path(tmp) / str(i)
            folder.mkdir()
            write_inputs(folder, args.pairs)
            env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
            if threshold:  # as the runner launches a job
                env["MALLOC_MMAP_THRESHOLD_"] = str(threshold)
            out = subprocess.run([sys.executable, __file__, "--one", pipeline, "--folder", str(folder), "--base",
                                  args.base, "--models-dir", args.models_dir, "--steps", str(args.steps)],
                                 capture_output=True, text=True, check=True, env=env)
            results[way] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{way:7} DPO: {results[way]['s_per_step']:.2f} s/step, peak memory "
                  f"{results[way]['peak_gib']:.2f} GiB", flush=True)
    baseline = next(iter(ways))
    time_ratio = results["studio"]["s_per_step"] / results[baseline]["s_per_step"]
    memory_ratio = results["studio"]["peak_gib"] / results[baseline]["peak_gib"]
    target = "peak under 4 GiB, time <= 1.0x" if args.memory else "<= 1.05"
    print(f"studio / {baseline}: time {time_ratio:.2f}x, memory {memory_ratio:.2f}x "
          f"({args.steps} steps, batch 4, max 512 tokens, base {args.base}); target {target}")


if __name__ == "__main__":
    main()
