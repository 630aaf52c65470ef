"""Candidate responses: N samples per prompt from the target model.

The engine is llama.cpp when the model is a GGUF (the `default` model is one): on a CPU it
generates several times faster than transformers. Any other model generates through
transformers, with its chat template. Either way `batch_size` prompts and all their samples are
decoded together. Runs are reproducible: with llama.cpp sample i of a prompt uses seed `seed + i`
whatever its batch; with transformers each batch of prompts (fixed chunks of the input order) is
seeded with `seed` + its first index.

Inputs (`inputs.parquet` in the run folder): prompt_id, prompt (JSON messages). Output
(`responses.parquet`): prompt_id, sample, response (JSON messages), finish ("stop" when the model
ended its answer, "length" when `max_new_tokens` cut it). Each prompt's samples are appended to
`partial.jsonl` as they are made, so a cancelled run resumes with the next prompt.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.batched_sampling import BatchedSampler
from pipelines.gguf_cache import gguf_for
from pipelines.models import DEFAULT_MODEL, choose_placement, end_ids, first_end, load_causal_lm
from pipelines.runlog import Partial, RunLog, run_main
from pipelines.settings import DEVICE_HELP, DTYPE_HELP, MODELS_DIR_HELP, setting


@dataclass
class GenerateConfig:
    """Sample N responses per prompt from a model."""
    model: str = setting(DEFAULT_MODEL, "the model that answers: default, a .gguf file, a folder or a hub id")
    models_dir: str = setting("models", MODELS_DIR_HELP, internal=True)
    inputs: str = setting("inputs.parquet", "the prompts, written by the runner", internal=True)
    output: str = setting("responses.parquet", "the sampled responses", internal=True)
    n: int = setting(4, "samples per prompt")
    temperature: float = setting(0.8, "sampling temperature")
    top_p: float = setting(0.95, "nucleus sampling: keep the most likely tokens up to this probability")
    max_new_tokens: int = setting(256, "answer length limit in tokens")
    seed: int = setting(0, "sampling seed (sample i uses seed + i)")
    batch_size: int = setting(8, "prompts sampled at once, each with its n samples")
    engine: str = setting("auto", "auto: llama.cpp for a GGUF model (the default is one), else transformers; "
                          "llama.cpp also runs a model folder, converted to GGUF once and cached",
                          choices=("auto", "llama.cpp", "transformers"))
    gguf_type: str = setting("f16", "a model folder answering in llama.cpp is converted once to this GGUF type: f16, "
                             "or q8_0 (half the size, a little less exact)", choices=("f16", "q8_0"))
    device: str = setting("auto", f"{DEVICE_HELP} (transformers engine)")
    dtype: str = setting("auto", f"{DTYPE_HELP} (transformers engine)")

    def resolved_engine(self) -> str:
        if self.engine == "auto":
            return "llama.cpp" if self.model == DEFAULT_MODEL or self.model.endswith(".gguf") else "transformers"
        if self.engine not in ("llama.cpp", "transformers"):
            raise ValueError(f"unknown engine {self.engine!r}; choose auto, llama.cpp or transformers")
        return self.engine


class LlamaCppSampler:
    """All samples of `batch_size` prompts decoded together in llama.cpp (pipelines.batched_sampling)."""

    def __init__(self, config: GenerateConfig, log: RunLog | None = None):
        path = gguf_for(config.model, config.models_dir, config.gguf_type, log)
        self.config = config
        # Loaded now: a missing or broken file fails before the first prompt.
        self.sampler = BatchedSampler(path, max_sequences=config.batch_size * config.n,
                                      max_tokens=config.max_new_tokens)

    def sample(self, prompts: list[list[dict]], seed: int) -> list[list[tuple[str, str]]]:
        """n (text, finish) samples of each prompt; sample i of every prompt is seeded with
        config.seed + i (`seed`, the batch's, is not used), whatever the batch."""
        c = self.config
        return [[(a.text, a.finish) for a in answers]
                for answers in self.sampler.answer_all(prompts, c.n, c.temperature, c.top_p, c.seed)]


class TransformersSampler:
    def __init__(self, config: GenerateConfig):
        self.config = config
        self.tokenizer, self.model = load_causal_lm(config.model, config.models_dir,
                                                    choose_placement(config.device, config.dtype))

    def sample(self, prompts: list[list[dict]], seed: int) -> list[list[tuple[str, str]]]:
        """n (text, finish) samples of each prompt, all in one batch (prompts left-padded)."""
        import torch

        c = self.config
        texts = [self.tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, padding_side="left",
                              add_special_tokens=False).to(self.model.device)
        ends = end_ids(self.model, self.tokenizer)
        torch.manual_seed(seed)
        with torch.inference_mode():
            generated = self.model.generate(**batch, do_sample=True, temperature=c.temperature, top_p=c.top_p,
                                            num_return_sequences=c.n, max_new_tokens=c.max_new_tokens,
                                            pad_token_id=self.tokenizer.pad_token_id)
        out = []
        for row in generated[:, batch["input_ids"].shape[1]:].tolist():  # prompt by prompt, n rows each
            end = first_end(row, ends)
            text = self.tokenizer.decode(row if end is None else row[:end], skip_special_tokens=True)
            out.append((text, "length" if end is None else "stop"))
        return [out[i * c.n:(i + 1) * c.n] for i in range(len(prompts))]


def generate(config: GenerateConfig, log: RunLog) -> None:
    run_dir = log.path.parent
    prompts = pq.read_table(run_dir / config.inputs).to_pylist()
    engine = config.resolved_engine()
    with Partial(run_dir, key="prompt_id") as partial:
        done = partial.done
        sampler = LlamaCppSampler(config, log) if engine == "llama.cpp" else TransformersSampler(config)
        log.event("running", step=len(done), total=len(prompts),
                  message=f"sampling {config.n} responses for {len(prompts) - len(done)} prompts with {engine}")
        # Fixed chunks of the input order: a resumed run seeds each chunk as the first run did.
        for start in range(0, len(prompts), config.batch_size):
            rows = [row for row in prompts[start:start + config.batch_size] if row["prompt_id"] not in done]
            if not rows:
                continue
            if log.cancel_requested:
                log.event(
                    "cancelled", step=len(done), total=len(prompts), message="cancelled; resume continues from here"
                )
                return
            answers = sampler.sample([json.loads(r["prompt"]) for r in rows], config.seed + start)
            for row, samples in zip(rows, answers):
                partial.add({"prompt_id": row["prompt_id"],
                             "samples": [{"text": text, "finish": finish} for text, finish in samples]})
            log.progress(len(done), len(prompts))
    rows = [{"prompt_id": row["prompt_id"], "sample": i,
             "response": json.dumps([{"role": "assistant", "content": s["text"]}], ensure_ascii=False),
             "finish": s["finish"]}
            for row in prompts for i, s in enumerate(done[row["prompt_id"]]["samples"])]
    pq.write_table(pa.Table.from_pylist(rows), run_dir / config.output)
    cut = sum(r["finish"] == "length" for r in rows)
    log.event("succeeded", step=len(prompts), total=len(prompts), engine=engine,
              metrics={"responses": len(rows), "cut_at_max_new_tokens": cut},
              message=f"{len(rows)} responses for {len(prompts)} prompts ({cut} cut at max_new_tokens)")


if __name__ == "__main__":
    sys.exit(run_main(GenerateConfig, generate))
