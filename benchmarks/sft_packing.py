"""SFT with packing against without: trained tokens per second, and the loss after the same tokens.

    python benchmarks/sft_packing.py [--base default] [--conversations 128] [--max-length 512]

Both run the studio's SFT pipeline (LoRA r 16 on all linear layers, batch 4, float32 on a CPU) on
the preferred answers of the same HH-RLHF pairs from ../shared/data, one epoch, in the same run:
without packing (each batch padded to its longest conversation, length-grouped), and with TRL's
best-fit packing (padding-free rows of up to max-length tokens). Reported: wall seconds of
training, trained (answer) tokens per second, the final training loss, and the ratio. Goal: >= 1.5x.
Packing changes the batches (several conversations per row), so the two losses after one epoch
are compared as well: a ratio bought with a worse loss is no win.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.peak import models_dir  # noqa: E402
from benchmarks.train import hh_records  # noqa: E402


def run_once(folder: Path, base: str, packing: bool, max_length: int) -> dict:
    from pipelines.runlog import RunLog
    from pipelines.sft import SFTTrainConfig, make_trainer, read_conversations

    config = SFTTrainConfig(base=base, models_dir=str(models_dir()), device="cpu", max_length=max_length,
                            batch_size=4, epochs=1.0, eval_share=0.0, packing=packing, save_every=10_000)
    run_dir = folder / ("packed" if packing else "padded")
    run_dir.mkdir()
    records = read_conversations(folder / "inputs.parquet")
    trainer, _ = make_trainer(config, run_dir, records, [])
    trained_tokens = sum(sum(1 for t in row["labels"] if t != -100) for row in trainer.train_dataset)
    RunLog(run_dir)
    began = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - began
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"packing": packing, "rows": len(trainer.train_dataset), "steps": trainer.state.global_step,
            "seconds": seconds, "trained_tokens": trained_tokens, "tokens_per_s": trained_tokens / seconds,
            "last_loss": sum(losses[-5:]) / len(losses[-5:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="default")
    parser.add_argument("--conversations", type=int, default=128)
    parser.add_argument("--max-length", type=int, default=512)
    args = parser.parse_args()
    import pyarrow as pa
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows = [{"prompt": json.dumps(r["prompt"]), "chosen": json.dumps(r["chosen"]),
                 "rejected": json.dumps(r["rejected"])} for r in hh_records(folder, args.conversations)]
        pq.write_table(pa.Table.from_pylist(rows), folder / "inputs.parquet")
        padded = run_once(folder, args.base, False, args.max_length)
        packed = run_once(folder, args.base, True, args.max_length)
    for r in (padded, packed):
        print(f"{'packed' if r['packing'] else 'padded':7} {r['rows']:4} rows {r['steps']:3} steps "
              f"{r['seconds']:7.1f} s  {r['tokens_per_s']:7.1f} trained tokens/s  loss (last 5 steps) "
              f"{r['last_loss']:.3f}")
    print(f"packing: {packed['tokens_per_s'] / padded['tokens_per_s']:.2f}x trained tokens per second "
          f"({packed['trained_tokens']} and {padded['trained_tokens']} trained tokens: the same answers)")


if __name__ == "__main__":
    main()
