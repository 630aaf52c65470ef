"""Reward (preference) model: LoRA on a causal LM with a one-output score head, trained with
TRL's RewardTrainer on preference pairs (pairwise loss: -log sigmoid(r_chosen - r_rejected)).

    python -m pipelines.reward --config runs/<id>/config.json

The adapter saves the score head with it (`modules_to_save=["score"]`; without it a reloaded RM
would score with a random head) and names the base's local folder, so it reloads offline with
identical scores. `score()` reads a prompt + response the way training did: the chat template
over the whole conversation, the score taken at its last token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pipelines.models import Placement, resolve_model
from pipelines.runlog import RunLog, run_main
from pipelines.training import (TrainSettings, lora_config, model_kwargs, placement_of, progress_callback, read_pairs,
                                split, train_with_resume, trainer_arguments)

STUDIO_META = "studio_model.json"  # beside an adapter: what kind of model it is and its base


@dataclass
class RewardTrainConfig(TrainSettings):
    """Train a LoRA reward model on preference pairs (TRL RewardTrainer)."""
    learning_rate: float = 1e-4
    eval_inputs: str | None = None     # pairs to evaluate on; else a held-out share of the inputs
    eval_share: float = 0.1


def load_reward_model(adapter: str | Path, placement: Placement):
    """Tokenizer and reward model (base + adapter with its score head), in eval mode."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    adapter = Path(adapter)
    meta = json.loads((adapter / STUDIO_META).read_text())
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    base = AutoModelForSequenceClassification.from_pretrained(meta["base_path"], num_labels=1,
                                                              dtype=getattr(torch, placement.dtype))
    base.config.pad_token_id = tokenizer.pad_token_id
    model = PeftModel.from_pretrained(base, adapter)
    model.to(placement.device).eval()
    return tokenizer, model


def score(tokenizer, model, conversations: list[list[dict]], batch_size: int = 8, max_length: int = 2048) -> list[float]:
    """The reward of each conversation (prompt messages + response messages)."""
    import torch

    ids = [tokenizer.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"][:max_length]
           for c in conversations]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths batch together
    rewards = [0.0] * len(ids)
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            width = max(len(ids[i]) for i in chunk)
            input_ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):
                input_ids[row, :len(ids[i])] = torch.tensor(ids[i])
                mask[row, :len(ids[i])] = 1
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits[:, 0]
            for row, i in enumerate(chunk):
                rewards[i] = float(logits[row])
    return rewards


def run(config: RewardTrainConfig, log: RunLog) -> None:
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    run_dir = log.path.parent
    placement = placement_of(config)
    base_path = resolve_model(config.base, config.models_dir)
    pairs = read_pairs(run_dir / config.inputs)
    if config.eval_inputs:
        train, held_out = pairs, read_pairs(run_dir / config.eval_inputs)
    else:
        train, held_out = split(pairs, config.eval_share, config.seed)
    if not train:
        raise ValueError("no pairs to train on")

    tokenizer = AutoTokenizer.from_pretrained(base_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=1,
                                                               **model_kwargs(config, placement))
    model.config.pad_token_id = tokenizer.pad_token_id
    args = RewardConfig(**trainer_arguments(config, placement, run_dir, has_eval=bool(held_out)),
                        max_length=config.max_length)
    callback = progress_callback(log)
    trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(train),
                            eval_dataset=Dataset.from_list(held_out) if held_out else None,
                            processing_class=tokenizer, callbacks=[callback],
                            peft_config=lora_config(config, "SEQ_CLS", modules_to_save=["score"]))
    dropped = len(train) - len(trainer.train_dataset)
    log.event("running", message=f"training on {len(trainer.train_dataset)} pairs"
              + (f" ({dropped} longer than {config.max_length} tokens left out)" if dropped else "")
              + (f", evaluating on {len(trainer.eval_dataset)}" if held_out else ""))
    if not train_with_resume(trainer, callback, run_dir, log):
        return

    final = {}
    if held_out:  # the evaluation at the last step, when the schedule made one, else one now (logged either way)
        evals = [h for h in trainer.state.log_history if "eval_accuracy" in h]
        final = evals[-1] if evals and evals[-1].get("step") == trainer.state.global_step else trainer.evaluate()
    out = run_dir / config.output
    trainer.save_model(str(out))
    (out / STUDIO_META).write_text(json.dumps({"kind": "reward", "base": config.base, "base_path": base_path}))
    accuracy = f"eval accuracy {final['eval_accuracy']:.3f} on {len(trainer.eval_dataset)} pairs" \
        if "eval_accuracy" in final else "no eval pairs"
    log.event("succeeded", step=trainer.state.global_step,
              message=f"reward model trained ({trainer.state.global_step} steps); {accuracy}")


if __name__ == "__main__":
    raise SystemExit(run_main(RewardTrainConfig, run))
