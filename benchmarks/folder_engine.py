"""A model folder answering through llama.cpp against the transformers engine: candidates/s of
`generate` on the same prompts, same settings, same run, and what the one-time conversion costs.

    python benchmarks/folder_engine.py [--prompts 8] [--n 4] [--tokens 64]

The folder is the default model's safetensors (a copy, so the GGUF cache starts empty). Both run
the studio's own generate pipeline in this process: `--engine transformers`, then `--engine
llama.cpp`, whose first run converts the folder to a cached f16 GGUF (timed on its own) and whose
second run finds it. Prints seconds and candidates/s of each and the ratio.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.generate import GenerateConfig, generate  # noqa: E402
from pipelines.gguf_cache import gguf_for  # noqa: E402
from pipelines.models import DEFAULT_MODEL, resolve_model  # noqa: E402
from pipelines.runlog import RunLog  # noqa: E402


def run_generate(folder: Path, models_dir: Path, work: Path, engine: str, prompts: list[dict], n: int,
                 tokens: int) -> tuple[float, int]:
    """Seconds and candidates of one generate run."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    config = GenerateConfig(model=str(folder), models_dir=str(models_dir), engine=engine, n=n, max_new_tokens=tokens,
                            batch_size=len(prompts), seed=0)
    pq.write_table(pa.Table.from_pylist(prompts), work / config.inputs)
    start = time.perf_counter()
    generate(config, RunLog(work))
    return time.perf_counter() - start, pq.read_table(work / config.output).num_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=4, help="candidates per prompt")
    parser.add_argument("--tokens", type=int, default=64, help="max new tokens per candidate")
    parser.add_argument("--models-dir", default=str(Path.home() / ".cache" / "alignment-studio" / "test-models"))
    args = parser.parse_args()

    lines = (ROOT / "assets" / "demo_prompts.jsonl").read_text().splitlines()[:args.prompts]
    prompts = [{"prompt_id": f"p{i}", "prompt": json.dumps([{"role": "user", "content": json.loads(line)["prompt"]}])}
               for i, line in enumerate(lines)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = tmp / "default-safetensors"
        shutil.copytree(resolve_model(DEFAULT_MODEL, args.models_dir), folder)
        models_dir = tmp / "models"
        hf_seconds, hf_count = run_generate(
            folder, models_dir, tmp / "hf", "transformers", prompts, args.n, args.tokens
        )
        start = time.perf_counter()
        gguf = gguf_for(str(folder), models_dir)
        convert_seconds = time.perf_counter() - start
        cpp_seconds, cpp_count = run_generate(folder, models_dir, tmp / "cpp", "llama.cpp", prompts, args.n,
                                              args.tokens)
        size_mb = gguf.stat().st_size / 1e6
    hf_rate, cpp_rate = hf_count / hf_seconds, cpp_count / cpp_seconds
    print(f"default model's safetensors folder, {args.prompts} prompts x {args.n} candidates, at most {args.tokens} "
          "new tokens, temperature 0.8")
    print(f"transformers engine            : {hf_seconds:6.1f} s  {hf_rate:5.2f} candidates/s  1.00x")
    print(f"llama.cpp, conversion once     : {convert_seconds:6.1f} s  (f16 GGUF, {size_mb:.0f} MB, cached)")
    print(f"llama.cpp engine (cached GGUF) : {cpp_seconds:6.1f} s  {cpp_rate:5.2f} candidates/s  "
          f"{cpp_rate / hf_rate:.2f}x")
    saved_per_candidate = 1 / hf_rate - 1 / cpp_rate
    if saved_per_candidate > 0:
        print(f"the conversion pays for itself after {convert_seconds / saved_per_candidate:.0f} candidates")


if __name__ == "__main__":
    main()
