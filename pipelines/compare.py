"""Batch comparison: two GGUF models answer every prompt of a dataset with the same sampling.

    python -m pipelines.compare --config runs/<id>/config.json

Inputs (`inputs.parquet`): prompt_id, prompt (JSON messages). Output (`answers.parquet`):
prompt_id, prompt, answer_a, finish_a, answer_b, finish_b. The runner stores each prompt's two
answers as an unlabelled pair (with both model names) in a new dataset, ready for labelling.
Answers are appended to `partial.jsonl` per prompt, so a cancelled run resumes where it stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.chat import ChatModels, Sampling
from pipelines.runlog import RunLog, read_partial, run_main


@dataclass
class CompareConfig:
    """Answer every prompt with two GGUF models."""
    model_a: str = ""       # names, as stored with the answers
    model_b: str = ""
    path_a: str = ""        # their GGUF files
    path_b: str = ""
    into: str = ""          # the dataset the pairs go to
    inputs: str = "inputs.parquet"
    output: str = "answers.parquet"
    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 256
    seed: int = 0


def run(config: CompareConfig, log: RunLog) -> None:
    run_dir = log.path.parent
    prompts = pq.read_table(run_dir / config.inputs).to_pylist()
    partial = run_dir / "partial.jsonl"
    done = {r["prompt_id"]: r for r in read_partial(partial)}
    models = ChatModels(max_loaded=2)
    sampling = Sampling(config.temperature, config.top_p, config.max_tokens, config.seed)
    log.progress(len(done), len(prompts), message=f"{config.model_a} and {config.model_b} answering")
    tokens, seconds = [0, 0], [0.0, 0.0]  # of the answers made by this process, per model
    for row in prompts:
        if row["prompt_id"] in done:
            continue
        if log.cancel_requested:
            log.event("cancelled", step=len(done), total=len(prompts), message=f"cancelled after {len(done)} prompts")
            return
        messages = json.loads(row["prompt"])
        answers = []
        for side, path in enumerate((config.path_a, config.path_b)):
            models.get(path, slot=side)  # loading is not answering: not timed
            start = time.perf_counter()
            text, finish, n_tokens = models.answer(path, messages, sampling, slot=side)
            seconds[side] += time.perf_counter() - start
            tokens[side] += n_tokens
            answers.append((text, finish))
        (answer_a, finish_a), (answer_b, finish_b) = answers
        done[row["prompt_id"]] = record = {**row, "answer_a": answer_a, "finish_a": finish_a,
                                           "answer_b": answer_b, "finish_b": finish_b}
        with open(partial, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        log.progress(len(done), len(prompts))
    pq.write_table(pa.Table.from_pylist([done[r["prompt_id"]] for r in prompts]), run_dir / config.output)
    speed = {f"tokens_per_s_{name}": tokens[i] / seconds[i] for i, name in enumerate("ab") if seconds[i] > 0}
    log.event("succeeded", step=len(prompts), total=len(prompts), metrics=speed,
              message=f"{len(prompts)} prompts answered by {config.model_a} and {config.model_b}" + (
                  f" ({speed['tokens_per_s_a']:.0f} and {speed['tokens_per_s_b']:.0f} tokens/s)" if len(speed) == 2 else ""))


if __name__ == "__main__":
    raise SystemExit(run_main(CompareConfig, run))
