"""DPO: LoRA on the policy, TRL's DPOTrainer. The reference model is the same base with the
adapter disabled, so there is no second model in memory.

    python -m pipelines.dpo --config runs/<id>/config.json

Loss types offered: sigmoid (the DPO paper's), ipo, hinge, and sigmoid_norm (TRL's
length-normalised DPO). `precompute_ref_log_probs` computes the reference log-probabilities once
before training (one pass over the data; each step then runs the policy only).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.memory import DPO_LOGIT_CHUNK
from pipelines.runlog import RunLog, run_main
from pipelines.settings import setting
from pipelines.training import (
    PairTrainSettings,
    add_lengths,
    base_and_tokenizer,
    lora_config,
    model_kwargs,
    pair_data,
    pair_dataset,
    placement_of,
    progress_callback,
    train_and_save,
    trainer_arguments,
    unfinish_cut_answers,
)

LOSS_TYPES = ("sigmoid", "ipo", "hinge", "sigmoid_norm")


@dataclass
class DPOTrainConfig(PairTrainSettings):
    """Align a policy to preference pairs with DPO (TRL DPOTrainer, LoRA)."""
    beta: float = setting(0.1, "strength of the pull to the base: higher keeps the policy closer", label="Beta")
    loss_type: str = setting("sigmoid", "sigmoid (DPO), ipo, hinge, sigmoid_norm (length-normalised)",
                             choices=LOSS_TYPES, label="DPO loss")
    sft_weight: float = setting(0.0, "weight of the chosen answers' language-model loss added to the DPO loss (TRL's "
                                "multi-loss [sigmoid, sft], as RPO): keeps the chosen answers likely; 0 leaves it out",
                                label="SFT term weight", advanced=True)
    precompute_ref_log_probs: bool = setting(False, "reference log-probs once, before training (each step then "
                                             "runs the policy only)", label="Precompute reference log-probs")

    def __post_init__(self):
        super().__post_init__()
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {', '.join(LOSS_TYPES)}, not {self.loss_type!r}")
        if self.beta <= 0:
            raise ValueError(f"beta must be positive, not {self.beta}")
        if self.sft_weight < 0:
            raise ValueError(f"sft_weight must be 0 or more, not {self.sft_weight}")


CHUNK_SETTING = "_CHUNKED_LOGPROB_CHUNK_SIZE"  # TRL's tokens per chunk of its fused log-probabilities


def losses(config: DPOTrainConfig) -> dict:
    """TRL's loss types and their weights: the DPO loss, and the SFT term on the chosen answers when weighted."""
    if not config.sft_weight:
        return {"loss_type": [config.loss_type]}
    return {"loss_type": [config.loss_type, "sft"], "loss_weights": [1.0, config.sft_weight]}


def make_trainer(config: DPOTrainConfig, run_dir, train: list[dict], held_out: list[dict]):
    """TRL's DPOTrainer on these pairs, with cut answers made unfinished; and how many were."""
    import trl.trainer.utils
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    # TRL's fused head scores up to 32,768 tokens at once: at batch 4 x 512 that is every token of
    # the batch, several float32 copies of (tokens x vocabulary), 2.5 GB of a 7.9 GB peak on the
    # default model. The same log-probabilities a smaller chunk at a time (TRL has no setting for it).
    # A private name: a TRL release that renamed it would leave the memory plan's figure wrong in silence.
    if not hasattr(trl.trainer.utils, CHUNK_SETTING):
        raise RuntimeError(f"TRL {trl.__version__} has no trl.trainer.utils.{CHUNK_SETTING}; update pipelines/dpo.py "
                           "and DPO_LOGIT_CHUNK in pipelines/memory.py to its way of chunking the log-probabilities")
    setattr(trl.trainer.utils, CHUNK_SETTING, DPO_LOGIT_CHUNK)
    placement = placement_of(config)
    base_path, tokenizer = base_and_tokenizer(config)
    model = AutoModelForCausalLM.from_pretrained(base_path, **model_kwargs(config, placement))
    args = DPOConfig(**trainer_arguments(config, placement, run_dir, has_eval=bool(held_out)),
                     beta=config.beta, max_length=config.max_length, **losses(config),
                     precompute_ref_log_probs=config.precompute_ref_log_probs)
    trainer = DPOTrainer(model=model, args=args, train_dataset=pair_dataset(train, cut_flags=True),
                         eval_dataset=pair_dataset(held_out, cut_flags=True) if held_out else None,
                         processing_class=tokenizer, peft_config=lora_config(config, "CAUSAL_LM"))
    unfinished = unfinish_cut_answers(trainer, tokenizer)
    add_lengths(trainer)
    return trainer, unfinished


def run(config: DPOTrainConfig, log: RunLog) -> None:
    train, held_out = pair_data(config, log.path.parent)
    trainer, unfinished = make_trainer(config, log.path.parent, train, held_out)
    callback = progress_callback(log)
    trainer.add_callback(callback)
    message = f"training on {len(train)} pairs" + (f", evaluating on {len(held_out)}" if held_out else "")
    if unfinished:
        message += f" ({unfinished} answers cut by their length limit trained as unfinished)"
    log.event("running", message=message)
    final = train_and_save(trainer, callback, config, log, "policy", "dpo", held_out, "eval_rewards/margins")
    if final is None:
        return
    margins = (
        f"eval reward margin {final['eval_rewards/margins']:.3f}"
        if "eval_rewards/margins" in final
        else "no eval pairs"
    )
    log.event("succeeded", step=trainer.state.global_step,
              message=f"DPO trained ({trainer.state.global_step} steps); {margins}")


if __name__ == "__main__":
    raise SystemExit(run_main(DPOTrainConfig, run))
