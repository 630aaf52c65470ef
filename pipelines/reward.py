"""Train a reward (preference) model: LoRA on a causal LM with a one-output score head, trained with
TRL's RewardTrainer on preference pairs (pairwise loss: -log sigmoid(r_chosen - r_rejected)).

    python -m pipelines.reward --config runs/<id>/config.json

The trained model as an artefact (its meta file, loading it, scoring with it) is
`pipelines.reward_model`.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.runlog import RunLog, run_main
from pipelines.settings import redefault
from pipelines.training import (PairTrainSettings, base_and_tokenizer, lora_config, model_kwargs, pair_data,
                                placement_of, progress_callback, train_and_save, trainer_arguments)


@dataclass
class RewardTrainConfig(PairTrainSettings):
    """Train a LoRA reward model on preference pairs (TRL RewardTrainer)."""
    learning_rate: float = redefault(PairTrainSettings, "learning_rate", 1e-4)


def run(config: RewardTrainConfig, log: RunLog) -> None:
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    run_dir = log.path.parent
    placement = placement_of(config)
    train, held_out = pair_data(config, run_dir)
    base_path, tokenizer = base_and_tokenizer(config)
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
    final = train_and_save(trainer, callback, config, log, "reward", "rm", held_out, "eval_accuracy")
    if final is None:
        return
    accuracy = f"eval accuracy {final['eval_accuracy']:.3f} on {len(trainer.eval_dataset)} pairs" \
        if "eval_accuracy" in final else "no eval pairs"
    log.event("succeeded", step=trainer.state.global_step,
              message=f"reward model trained ({trainer.state.global_step} steps); {accuracy}")


if __name__ == "__main__":
    raise SystemExit(run_main(RewardTrainConfig, run))
