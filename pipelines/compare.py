"""Batch comparison: two GGUF models answer every prompt of a dataset with the same sampling.

    python -m pipelines.compare --config runs/<id>/config.json

Inputs (`inputs.parquet`): prompt_id, prompt (JSON messages). Output (`answers.parquet`):
prompt_id, prompt, answer_a, finish_a, answer_b, finish_b. The runner stores each prompt's two
answers as an unlabelled pair (with both model names) in a new dataset, ready for labelling.
Each model answers a few prompts at a time, their answers decoded in one batch; answers are
appended to `partial.jsonl` per prompt, so a cancelled run resumes where it stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.batched_sampling import BatchedSampler
from pipelines.gguf_cache import gguf_for
from pipelines.runlog import Partial, RunLog, run_main
from pipelines.settings import MODELS_DIR_HELP, setting


@dataclass
class CompareConfig:
    """Answer every prompt with two GGUF models."""
    model_a: str = setting("", "the first model's name, as stored with the answers", internal=True)
    model_b: str = setting("", "the second model's name", internal=True)
    path_a: str = setting("", "the first model's GGUF file, or a model folder (converted once to a cached GGUF)",
                          internal=True)
    path_b: str = setting("", "the second model's GGUF file, or a model folder", internal=True)
    models_dir: str = setting("models", MODELS_DIR_HELP, internal=True)
    into: str = setting("", "the dataset the pairs go to", internal=True)
    inputs: str = setting("inputs.parquet", "the prompts, written by the runner", internal=True)
    output: str = setting("answers.parquet", "both models' answers", internal=True)
    temperature: float = setting(0.7, "sampling temperature")
    top_p: float = setting(0.95, "nucleus sampling: keep the most likely tokens up to this probability")
    max_tokens: int = setting(256, "answer length limit in tokens")
    seed: int = setting(0, "sampling seed")


def run(config: CompareConfig, log: RunLog) -> None:
    run_dir = log.path.parent
    prompts = pq.read_table(run_dir / config.inputs).to_pylist()
    with Partial(run_dir, key="prompt_id") as partial:
        answer_all(config, log, prompts, partial)


PROMPTS_AT_ONCE = 8  # prompts each model answers together: llama.cpp decodes their answers in one batch


def answer_all(config: CompareConfig, log: RunLog, prompts: list[dict], partial: Partial) -> None:
    """Both models answer the prompts not yet done, a few prompts at a time, each model's answers
    to them decoded together (`BatchedSampler`, as candidates are: about 2x the answers per second
    of one answer after another on a CPU). Every answer is seeded with `seed`, whatever shared its
    batch, so a resumed run answers as a straight one would."""
    run_dir, done = log.path.parent, partial.done
    todo = [row for row in prompts if row["prompt_id"] not in done]
    log.progress(len(done), len(prompts), message=f"{config.model_a} and {config.model_b} answering")
    samplers = [BatchedSampler(gguf_for(path, config.models_dir, log=log), max_sequences=PROMPTS_AT_ONCE,
                               max_tokens=config.max_tokens)
                for path in (config.path_a, config.path_b)]  # loading is not answering: not timed
    tokens, seconds = [0, 0], [0.0, 0.0]  # of the answers made by this process, per model
    try:
        for at in range(0, len(todo), PROMPTS_AT_ONCE):
            if log.cancel_requested:
                log.event("cancelled", step=len(done), total=len(prompts),
                          message=f"cancelled after {len(done)} prompts")
                return
            group = todo[at:at + PROMPTS_AT_ONCE]
            conversations = [json.loads(row["prompt"]) for row in group]
            answers = []
            for side, sampler in enumerate(samplers):
                start = time.perf_counter()
                side_answers = [samples[0] for samples in sampler.answer_all(
                    conversations, 1, config.temperature, config.top_p, config.seed)]
                seconds[side] += time.perf_counter() - start
                tokens[side] += sum(len(a.tokens) for a in side_answers)
                answers.append(side_answers)
            for row, a, b in zip(group, *answers):
                partial.add({**row, "answer_a": a.text, "finish_a": a.finish,
                             "answer_b": b.text, "finish_b": b.finish})
            log.progress(len(done), len(prompts))
    finally:
        for sampler in samplers:
            sampler.close()
    pq.write_table(pa.Table.from_pylist([done[r["prompt_id"]] for r in prompts]), run_dir / config.output)
    speed = {f"tokens_per_s_{name}": tokens[i] / seconds[i] for i, name in enumerate("ab") if seconds[i] > 0}
    log.event(
        "succeeded",
        step=len(prompts),
        total=len(prompts),
        metrics=speed,
        message=f"{len(prompts)} prompts answered by {config.model_a} and {config.model_b}"
        + (f" ({speed['tokens_per_s_a']:.0f} and {speed['tokens_per_s_b']:.0f} tokens/s)" if len(speed) == 2 else ""),
    )


if __name__ == "__main__":
    raise SystemExit(run_main(CompareConfig, run))
