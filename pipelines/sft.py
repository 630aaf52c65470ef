"""Supervised fine-tuning: LoRA on the policy, TRL's SFTTrainer, the loop's first stage.

    python -m pipelines.sft --config runs/<id>/config.json

It learns from conversations: a pair's preferred answer after its prompt ("preferred-FT", what
the DPO paper trains first when no SFT model exists) or a demonstration (a prompt and its
answer, or a whole conversation). The loss is on the assistant's tokens only by default, every
assistant turn of a conversation included, with the end-of-turn tokens the chat template writes
after each (so the model learns to stop); an answer a length limit cut is trained without them.

Masks are made here, once per conversation, by rendering it turn by turn with the tokenizer's own
chat template: TRL's `assistant_only_loss` needs a template with `{% generation %}` markers, which
most models' templates lack. TRL then builds the labels from the mask, cuts to `max_length`,
drops what is left with no trained token, and packs (best-fit, padding-free) when asked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from pipelines.chat_formats import CHAT_FORMATS, KEEP, give_chat_format, load_new_rows, save_new_rows, train_new_rows
from pipelines.runlog import RunLog, run_main
from pipelines.settings import redefault, setting
from pipelines.training import (
    PairTrainSettings,
    base_and_tokenizer,
    end_of_turn_ids,
    last_checkpoint,
    lora_config,
    model_kwargs,
    pair_data,
    placement_of,
    progress_callback,
    train_and_save,
    trainer_arguments,
)


class ConversationError(ValueError):
    """A conversation SFT cannot learn from; the message says which and why."""


@dataclass
class SFTTrainConfig(PairTrainSettings):
    """Fine-tune a policy on preferred answers or demonstrations (TRL SFTTrainer, LoRA)."""
    learning_rate: float = redefault(PairTrainSettings, "learning_rate", 1e-4,
                                     "SFT's LoRA takes a larger step than the preference methods'")
    completion_only: bool = setting(True, "loss on the assistant's tokens only (every assistant turn); off: on the "
                                    "whole text, prompts included", label="Loss on answers only", advanced=True)
    chat_format: str = setting(KEEP, "auto: the base's own chat template; or a format to give a base that has none "
                               f"(a pretrained base): {', '.join(CHAT_FORMATS)}; its special tokens are added and "
                               "trained, and the template is saved with the model", choices=(KEEP, *CHAT_FORMATS),
                               label="Chat format")
    packing: bool = setting(False, "pack several conversations into each row of max_length tokens (TRL's best-fit "
                            "packing, padding-free): no step is spent on padding", label="Packing", advanced=True)


def read_conversations(path: str | Path) -> list[dict]:
    """The runner's Parquet file as {prompt, answer, cut}: a pair's chosen side (pairs) or a
    demonstration's completion (messages lists)."""
    rows = pq.read_table(path).to_pylist()
    out = []
    for r in rows:
        answer_key = "chosen" if r.get("chosen") is not None else "completion"
        out.append({"prompt": json.loads(r["prompt"]), "answer": json.loads(r[answer_key]),
                    "cut": bool(r.get(f"{answer_key}_cut") or False)})
    return out


def check_conversation(messages: list[dict], where: str) -> None:
    """Roles in an order a chat template takes: an optional system turn, then user and assistant
    in turn, ending on an assistant turn whose text is not empty."""
    roles = [m.get("role") for m in messages]
    body = roles[1:] if roles[:1] == ["system"] else roles
    if not body or body[-1] != "assistant":
        raise ConversationError(f"{where}: the conversation ends on a {body[-1] if body else 'system'} turn, not on "
                                "an answer to learn")
    expected = ["user", "assistant"] * (len(body) // 2 + 1)
    if body != expected[:len(body)]:
        raise ConversationError(f"{where}: roles out of order ({', '.join(roles)}); a conversation is an optional "
                                "system turn, then user and assistant turns in turn")
    if not str(messages[-1].get("content") or "").strip():
        raise ConversationError(f"{where}: the last answer is empty")


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def tokenize_conversation(tokenizer, messages: list[dict], cut: bool = False) -> dict:
    """`input_ids` of the whole conversation in the chat template, and `completion_mask`: 1 on
    each assistant turn's tokens and the end-of-turn tokens the template writes after it, 0
    elsewhere. Each turn is found by rendering the conversation up to it (with the generation
    prompt) and up to its end: where they part from the whole is where it starts and ends. A cut
    answer (`cut`) loses its last end-of-turn tokens: trained as unfinished."""
    def ids(turns, **kwargs):
        return tokenizer.apply_chat_template(turns, tokenize=True, return_dict=True, **kwargs)["input_ids"]

    whole = list(ids(messages))
    mask = [0] * len(whole)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = common_prefix(ids(messages[:i], add_generation_prompt=True), whole)
        end = common_prefix(ids(messages[:i + 1]), whole)
        for position in range(start, end):
            mask[position] = 1
    if cut:
        ending = end_of_turn_ids(tokenizer)
        if ending and whole[-len(ending):] == ending:
            whole, mask = whole[:-len(ending)], mask[:-len(ending)]
    return {"input_ids": whole, "completion_mask": mask}


def sft_dataset(tokenizer, records: list[dict]):
    """A tokenized datasets.Dataset TRL's SFTTrainer takes as it is (`input_ids`, `completion_mask`)."""
    from datasets import Dataset

    rows = []
    for n, r in enumerate(records, 1):
        conversation = r["prompt"] + r["answer"]
        check_conversation(conversation, f"conversation {n}")
        rows.append(tokenize_conversation(tokenizer, conversation, r.get("cut", False)))
    return Dataset.from_list(rows)


def make_trainer(config: SFTTrainConfig, run_dir: Path, train: list[dict], held_out: list[dict]):
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    placement = placement_of(config)
    base_path, tokenizer = base_and_tokenizer(config)
    model = AutoModelForCausalLM.from_pretrained(base_path, **model_kwargs(config, placement))
    added = give_chat_format(tokenizer, model, config.chat_format) if config.chat_format != KEEP else []
    arguments = trainer_arguments(config, placement, run_dir, has_eval=bool(held_out))
    if config.packing:  # packed rows are all max_length long: nothing to group
        arguments.pop("train_sampling_strategy", None)
    args = SFTConfig(**arguments, max_length=config.max_length, packing=config.packing, packing_strategy="bfd",
                     completion_only_loss=config.completion_only)
    trainer = SFTTrainer(model=model, args=args, train_dataset=sft_dataset(tokenizer, train),
                         eval_dataset=sft_dataset(tokenizer, held_out) if held_out else None,
                         processing_class=tokenizer, peft_config=lora_config(config, "CAUSAL_LM"))
    if added:
        train_new_rows(trainer.model, added)
    return trainer, added


def new_rows_callback(added: list[int]):
    """Saves the new tokens' rows into each checkpoint beside the adapter (a resumed run reads them back)."""
    from transformers import TrainerCallback

    class SaveNewRows(TrainerCallback):
        def on_save(self, args, state, control, model=None, **kwargs):
            if state.is_world_process_zero:
                save_new_rows(model, added, Path(args.output_dir) / f"checkpoint-{state.global_step}")

    return SaveNewRows()


def run(config: SFTTrainConfig, log: RunLog) -> None:
    run_dir = log.path.parent
    train, held_out = pair_data(config, run_dir, read_conversations, "conversations")
    trainer, added = make_trainer(config, run_dir, train, held_out)
    callback = progress_callback(log)
    trainer.add_callback(callback)
    if added:
        trainer.add_callback(new_rows_callback(added))
        checkpoint = last_checkpoint(run_dir)
        if checkpoint:
            load_new_rows(trainer.model, checkpoint)
    cut = sum(r["cut"] for r in train)
    message = f"training on {len(train)} conversations" + (f", evaluating on {len(held_out)}" if held_out else "")
    if cut:
        message += f" ({cut} answers cut by their length limit trained as unfinished)"
    if config.packing:
        message += f"; packed into {len(trainer.train_dataset)} rows of up to {config.max_length} tokens"
    log.event("running", message=message)
    final = train_and_save(trainer, callback, config, log, "policy", "sft", held_out, "eval_loss")
    if final is None:
        return
    if added and trainer.accelerator.is_main_process:
        save_new_rows(trainer.model, added, run_dir / config.output)
    said = f"eval loss {final['eval_loss']:.3f}" if "eval_loss" in final else "no eval conversations"
    log.event("succeeded", step=trainer.state.global_step,
              message=f"SFT trained ({trainer.state.global_step} steps); {said}")


if __name__ == "__main__":
    raise SystemExit(run_main(SFTTrainConfig, run))
