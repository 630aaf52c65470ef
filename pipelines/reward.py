"""Train a reward (preference) model: LoRA on a causal LM with a one-output score head, trained with
TRL's RewardTrainer on preference pairs (pairwise loss: -log sigmoid(r_chosen - r_rejected)).

    python -m pipelines.reward --config runs/<id>/config.json

During training it evaluates on a fixed subset of the held-out pairs (`eval_during`), so that
evaluation does not dominate the run; at the end it scores every held-out pair once and writes the
report card (`report_card.json`, and each pair's two rewards in `held_out_scores.parquet`):
accuracy with its 95% interval, length bias, calibration. The trained model as an artefact (its
meta file, loading it, scoring with it) is `pipelines.reward_model`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from common.stats import wilson_interval
from pipelines.reward_model import score
from pipelines.runlog import ConfigError, RunLog, run_main
from pipelines.settings import redefault, setting
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
)


@dataclass
class RewardTrainConfig(PairTrainSettings):
    """Train a LoRA reward model on preference pairs (TRL RewardTrainer)."""
    # benchmarks/README's recipe table: on the default model, 2e-4 scored 0.629 (0.597-0.659) on 948
    # held-out HH pairs (two-fold), 1e-4 0.591 (0.559-0.622), on the same pairs in the same minutes.
    learning_rate: float = redefault(PairTrainSettings, "learning_rate", 2e-4)
    judge_split: str = setting("", "which half of a judge split this model learns from (proxy or judge): the "
                               "halves share no prompt", internal=True)
    eval_during: int = setting(200, "held-out pairs evaluated during training (a fixed subset; every held-out "
                               "pair is scored once at the end)", label="Pairs evaluated during training",
                               advanced=True)
    center_rewards: float = setting(0.0, "TRL's center_rewards_coefficient: a penalty on the square of each "
                                    "pair's summed rewards, so that rewards stay centred on 0 (0: off)",
                                    label="Centre rewards", advanced=True)
    skip_near_identical: bool = setting(False, "leave out of training the pairs whose two answers are near-identical "
                                        "(at least 90% alike; the run's message counts them)",
                                        label="Skip near-identical pairs", advanced=True)
    length_head: float = setting(0.0, "against length bias (ODIN's idea): a second, linear head on the two "
                                 "answers' length gap takes the labels' length preference during training, and "
                                 "a penalty of this weight on the batch's correlation between the reward gap and "
                                 "the length gap keeps the reward itself from tracking length; only the reward "
                                 "is kept (0: off)", label="Length head", advanced=True)
    length_balance: bool = setting(False, "against length bias: train on as many pairs whose chosen answer is the "
                                   "longer as pairs whose chosen answer is the shorter, leaving out pairs of the "
                                   "larger group at random (seeded; the run's message counts them)",
                                   label="Balance lengths", advanced=True)
    ensemble: int = setting(1, "K reward models in one job, each on its own bootstrap sample of the training pairs "
                            "with its own seed, scored as one: their mean, their spread, and a conservative score "
                            "(mean minus lambda times spread) wherever one reward model is taken (1: a single model)",
                            label="Ensemble members", advanced=True)
    ensemble_lambda: float = setting(1.0, "an ensemble's conservative score: the members' mean minus this times their "
                                     "spread (the uncertainty penalty of Coste et al., 2023)", label="Ensemble lambda",
                                     advanced=True)

    def __post_init__(self):
        super().__post_init__()
        if not 1 <= self.ensemble <= 16:
            raise ValueError(f"ensemble must be 1 to 16 members, not {self.ensemble}")
        if self.ensemble_lambda < 0:
            raise ValueError(f"ensemble_lambda must be 0 or more, not {self.ensemble_lambda}")

REPORT_CARD = "report_card.json"
HELD_OUT_SCORES = "held_out_scores.parquet"
CALIBRATION_BINS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
NEAR_IDENTICAL = 0.9  # two answers this similar (difflib's ratio of their texts) differ only trivially


def answer_similarity(chosen: list[dict], rejected: list[dict]) -> float:
    """How alike two answers' texts are, 0-1 (difflib's ratio, case and spacing ignored)."""
    import difflib

    def text(messages):
        return " ".join(" ".join(m["content"] for m in messages).lower().split())

    return difflib.SequenceMatcher(None, text(chosen), text(rejected), autojunk=False).ratio()


def length_balanced(chosen_lengths: list[int], rejected_lengths: list[int], seed: int) -> tuple[list[int], str]:
    """The indices of the pairs to keep so that as many have the longer chosen answer as the shorter
    one, and which group was cut ('longer' or 'shorter'): the larger group is cut, at random with this
    seed, to the size of the smaller; pairs of equal length are all kept. The kept indices stay in
    their order."""
    import random

    longer = [i for i, (c, r) in enumerate(zip(chosen_lengths, rejected_lengths)) if c > r]
    shorter = [i for i, (c, r) in enumerate(zip(chosen_lengths, rejected_lengths)) if c < r]
    cut, larger, smaller = ("longer", longer, shorter) if len(longer) >= len(shorter) else \
        ("shorter", shorter, longer)
    dropped = set(random.Random(seed).sample(larger, len(larger) - len(smaller)))
    return [i for i in range(len(chosen_lengths)) if i not in dropped], cut


def ranked_right(row: dict) -> float:
    """1 if a held-out pair's chosen answer got the higher reward, 0 if the lower, 0.5 a tie."""
    if row["reward_chosen"] == row["reward_rejected"]:
        return 0.5
    return float(row["reward_chosen"] > row["reward_rejected"])


def report_card(rows: list[dict]) -> dict:
    """What a reward model learned, from its rewards on held-out pairs: rows of {reward_chosen,
    reward_rejected, length_chosen, length_rejected} (lengths in tokens).

    - accuracy: share of pairs where the chosen answer gets the higher reward (a tie counts half),
      with its 95% interval;
    - length bias: accuracy on the pairs whose chosen answer is the longer one and on those where it
      is the shorter one, and how often the reward model prefers the longer answer against how often
      the labels do (pairs of equal length left out);
    - calibration: the model's confidence in the side it prefers, sigmoid(|margin|), in bins, against
      how often that side is the chosen one; the summary is the expected calibration error (the bins'
      gaps weighted by their pairs);
    - distinct pairs: accuracy on the pairs whose two answers differ in more than trivial ways
      (`similarity` below NEAR_IDENTICAL, when the rows have it), and how many those are.
    """
    n = len(rows)
    wins = [ranked_right(r) for r in rows]
    low, high = wilson_interval(sum(wins), n)
    card = {"pairs": n, "accuracy": sum(wins) / n if n else float("nan"), "accuracy_low": low, "accuracy_high": high}
    longer = [(w, r) for w, r in zip(wins, rows) if r["length_chosen"] > r["length_rejected"]]
    shorter = [(w, r) for w, r in zip(wins, rows) if r["length_chosen"] < r["length_rejected"]]
    for name, group in (("chosen_longer", longer), ("chosen_shorter", shorter)):
        card[f"{name}_pairs"] = len(group)
        card[f"accuracy_{name}"] = sum(w for w, _ in group) / len(group) if group else None
    unequal = len(longer) + len(shorter)
    rm_longer = sum(1 for _, r in longer if r["reward_chosen"] > r["reward_rejected"]) + \
        sum(1 for _, r in shorter if r["reward_rejected"] > r["reward_chosen"])
    card["rm_prefers_longer"] = rm_longer / unequal if unequal else None
    card["labels_prefer_longer"] = len(longer) / unequal if unequal else None
    # Confidence in the preferred side: sigmoid(|margin|), which is the Bradley-Terry probability.
    confident = [(1 / (1 + math.exp(-abs(r["reward_chosen"] - r["reward_rejected"]))), w) for w, r in zip(wins, rows)]
    bins = []
    for lo, hi in zip(CALIBRATION_BINS, CALIBRATION_BINS[1:]):
        members = [(c, w) for c, w in confident if lo <= c < hi or (hi == CALIBRATION_BINS[-1] and c == hi)]
        if members:
            bins.append({"from": lo, "to": hi, "pairs": len(members),
                         "confidence": sum(c for c, _ in members) / len(members),
                         "observed": sum(w for _, w in members) / len(members)})
    distinct = [w for w, r in zip(wins, rows) if r.get("similarity", 0.0) < NEAR_IDENTICAL]
    card["distinct_pairs"] = len(distinct)
    card["accuracy_distinct"] = sum(distinct) / len(distinct) if distinct else None
    card["calibration"] = bins
    card["calibration_error"] = sum(b["pairs"] * abs(b["confidence"] - b["observed"]) for b in bins) / n if n else None
    return card


def describe_card(card: dict) -> list[str]:
    """The report card as lines a user can read."""
    def pct(x):
        return "-" if x is None else f"{x:.0%}"

    lines = [f"accuracy {card['accuracy']:.3f} on {card['pairs']} held-out pairs (95% interval "
             f"{card['accuracy_low']:.3f}-{card['accuracy_high']:.3f})"]
    if card["rm_prefers_longer"] is not None:
        lines.append(f"length: prefers the longer answer in {pct(card['rm_prefers_longer'])} of pairs, the labels in "
                     f"{pct(card['labels_prefer_longer'])}; accuracy {pct(card['accuracy_chosen_longer'])} when the "
                     f"chosen answer is the longer ({card['chosen_longer_pairs']} pairs), "
                     f"{pct(card['accuracy_chosen_shorter'])} when it is the shorter ({card['chosen_shorter_pairs']})")
    if card["distinct_pairs"] < card["pairs"]:
        lines.append(f"near-identical answers (at least {NEAR_IDENTICAL:.0%} alike) in "
                     f"{card['pairs'] - card['distinct_pairs']} of {card['pairs']} pairs; accuracy on the other "
                     f"{card['distinct_pairs']}: {pct(card['accuracy_distinct'])}")
    if card["calibration"]:
        lines.append("calibration (confidence -> observed): " + ", ".join(
            f"{b['confidence']:.0%} -> {b['observed']:.0%} ({b['pairs']})" for b in card["calibration"])
            + f"; calibration error {card['calibration_error']:.3f} (0 is perfect)")
    return lines


def score_held_out(model, tokenizer, held_out: list[dict], config: RewardTrainConfig) -> list[dict]:
    """Each held-out pair short enough to train on, with both rewards and both answers' lengths."""
    rows = []
    for r in held_out:
        conversations = [r["prompt"] + r["chosen"], r["prompt"] + r["rejected"]]
        ids = [tokenizer.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"] for c in conversations]
        if max(map(len, ids)) > config.max_length:
            continue  # left out of training and of TRL's evaluation alike
        head = len(tokenizer.apply_chat_template(r["prompt"], tokenize=True, return_dict=True)["input_ids"])
        rows.append(
            {
                "pair_id": r.get("pair_id", ""),
                "chosen_side": r.get("chosen_side", ""),
                "conversations": conversations,
                "length_chosen": len(ids[0]) - head,
                "length_rejected": len(ids[1]) - head,
                "similarity": answer_similarity(r["chosen"], r["rejected"]),
            }
        )
    rewards = score(tokenizer, model, [c for row in rows for c in row.pop("conversations")], config.batch_size,
                    config.max_length)
    for i, row in enumerate(rows):
        row["reward_chosen"], row["reward_rejected"] = rewards[2 * i], rewards[2 * i + 1]
    return rows


def no_subset_evaluation_at_the_end():
    """A TrainerCallback that keeps transformers from evaluating the subset once more at the last
    step (it does when that step is not a multiple of eval_steps): every held-out pair is scored
    right after, and on the recipe table's runs that extra pass over 185 pairs took 112 s."""
    from transformers import TrainerCallback

    class NoSubsetEvaluationAtTheEnd(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if (args.eval_strategy == "steps" and state.global_step >= state.max_steps
                    and state.global_step % state.eval_steps):
                control.should_evaluate = False

    return NoSubsetEvaluationAtTheEnd()


LENGTH_UNIT = 100.0  # the length head's input: the chosen answer's tokens minus the rejected one's, per 100


def length_head_trainer(base):
    """TRL's RewardTrainer with a length head (`length_head` in the config): the pairwise loss is
    taken on reward gap + w * length gap, w one learned number, so that the length preference of
    the labels goes to w; and a penalty on corr(reward gap, length gap)^2 over the batch keeps the
    reward from tracking length. w is only for training: the saved model is the reward alone."""
    import torch
    from torch import nn

    class LengthHeadRewardTrainer(base):
        def __init__(self, *args, length_penalty: float, **kwargs):
            super().__init__(*args, **kwargs)
            self.length_penalty = length_penalty
            self.length_weight = nn.Parameter(torch.zeros((), device=self.args.device))

        def create_optimizer(self, *args, **kwargs):
            optimizer = super().create_optimizer(*args, **kwargs)
            optimizer.add_param_group({"params": [self.length_weight], "weight_decay": 0.0})
            return optimizer

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mode = "train" if self.model.training else "eval"
            inputs["use_cache"] = False
            outputs = model(**inputs)
            chosen, rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
            length_chosen, length_rejected = torch.chunk(inputs["attention_mask"].sum(-1).float(), chunks=2)
            length_gap = (length_chosen - length_rejected) / LENGTH_UNIT
            gap = chosen - rejected
            loss = -nn.functional.logsigmoid(gap + self.length_weight.to(gap.dtype) * length_gap).mean()
            if gap.numel() > 1 and length_gap.std() > 0:
                centred, lengths = gap - gap.mean(), length_gap - length_gap.mean()
                corr = (centred * lengths).sum() / (centred.norm() * lengths.norm() + 1e-6)
                loss = loss + self.length_penalty * corr ** 2
            with torch.no_grad():  # the metrics TRL logs, of the reward alone
                for name, value in (("accuracy", (gap > 0).float().mean()), ("margin", gap.mean()),
                                    ("length_weight", self.length_weight.detach())):
                    self._metrics[mode][name].append(self.accelerator.gather_for_metrics(value).mean().item())
            return (loss, outputs) if return_outputs else loss

    return LengthHeadRewardTrainer


def make_trainer(config: RewardTrainConfig, run_dir, train: list[dict], held_out: list[dict], callbacks=()):
    """TRL's RewardTrainer for these pairs, LoRA with its score head, and the tokenizer; it evaluates
    during the run on the first `eval_during` held-out pairs."""
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    placement = placement_of(config)
    base_path, tokenizer = base_and_tokenizer(config)
    model = AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=1,
                                                               **model_kwargs(config, placement))
    model.config.pad_token_id = tokenizer.pad_token_id
    args = RewardConfig(**trainer_arguments(config, placement, run_dir, has_eval=bool(held_out)),
                        max_length=config.max_length, center_rewards_coefficient=config.center_rewards or None)
    during = held_out[:config.eval_during] if config.eval_during > 0 else held_out
    trainer_class, extra = (length_head_trainer(RewardTrainer), {"length_penalty": config.length_head}) \
        if config.length_head > 0 else (RewardTrainer, {})
    trainer = trainer_class(model=model, args=args, train_dataset=pair_dataset(train), **extra,
                            eval_dataset=pair_dataset(during) if held_out else None,
                            processing_class=tokenizer, callbacks=list(callbacks),
                            peft_config=lora_config(config, "SEQ_CLS", modules_to_save=["score"]))
    add_lengths(trainer)
    return trainer, tokenizer


def planned_steps(trainer) -> int:
    """The optimizer steps the run will take, as transformers' Trainer counts them."""
    args = trainer.args
    if args.max_steps > 0:
        return args.max_steps
    batches = math.ceil(len(trainer.train_dataset)
                        / (args.per_device_train_batch_size * trainer.accelerator.num_processes))
    return math.ceil(args.num_train_epochs * max(batches // args.gradient_accumulation_steps, 1))


def run(config: RewardTrainConfig, log: RunLog) -> None:
    if config.ensemble > 1:
        return run_ensemble(config, log)
    run_dir = log.path.parent
    train, held_out = pair_data(config, run_dir)
    alike = 0
    if config.skip_near_identical:
        kept = [r for r in train if answer_similarity(r["chosen"], r["rejected"]) < NEAR_IDENTICAL]
        train, alike = kept, len(train) - len(kept)
        if not train:
            raise ConfigError("every pair's two answers are near-identical: nothing left to train on; train without "
                              "skipping them")
    # Evaluations during the run on a subset of the held-out pairs are named as such (eval_subset_...):
    # eval_accuracy and eval_margin are those of every held-out pair, logged at the end.
    subset = 0 < config.eval_during < len(held_out)
    callback = progress_callback(log, eval_prefix="eval_subset_" if subset else "eval_")
    # Before the progress callback, which reports an evaluation when one is due.
    trainer, tokenizer = make_trainer(config, run_dir, train, held_out, [no_subset_evaluation_at_the_end(), callback])
    dropped = len(train) - len(trainer.train_dataset)
    left_out = [f"{dropped} longer than {config.max_length} tokens"] if dropped else []
    left_out += [f"{alike} with near-identical answers"] if alike else []
    if config.length_balance:  # on the tokenized pairs, so that lengths are the report card's (tokens)
        data = trainer.train_dataset
        chosen, rejected = [len(x) for x in data["chosen_ids"]], [len(x) for x in data["rejected_ids"]]
        keep, cut = length_balanced(chosen, rejected, config.seed)
        if len(data) and not keep:
            raise ConfigError(f"every pair's chosen answer is the {cut} one: balancing lengths leaves nothing to "
                              "train on; train without it")
        if len(keep) < len(data):
            left_out += [f"{len(data) - len(keep)} with the {cut} chosen answer, to balance lengths,"]
        trainer.train_dataset = data.select(keep)
    evaluating = ""
    if held_out:
        during = (f"on {len(trainer.eval_dataset)} of the {len(held_out)} held-out pairs every {config.save_every} "
                  "steps and on all of them at the end")
        evaluating = ", evaluating " + (during if config.save_every <= planned_steps(trainer)
                                        else f"on all {len(held_out)} held-out pairs at the end")
    log.event("running", message=f"training on {len(trainer.train_dataset)} pairs"
              + (f" ({' and '.join(left_out)} left out)" if left_out else "") + evaluating)
    final = train_and_save(trainer, callback, config, log, "reward", "rm")
    if final is None:
        return
    steps = trainer.state.global_step
    if not held_out:
        log.event("succeeded", step=steps, message=f"reward model trained ({steps} steps); no held-out pairs")
        return
    log.event("running", step=steps, message=f"evaluating on all {len(held_out)} held-out pairs")
    rows = []
    # A sharded model's forward gathers its layers from every rank: then they all score (the same pairs).
    if trainer.accelerator.is_main_process or config.shard == "fsdp":
        trainer.model.eval()
        rows = score_held_out(trainer.model, tokenizer, held_out, config)
    if trainer.accelerator.is_main_process:
        pq.write_table(pa.Table.from_pylist(rows), run_dir / HELD_OUT_SCORES)
    card = report_card(rows)
    if trainer.accelerator.is_main_process:
        (run_dir / REPORT_CARD).write_text(json.dumps(card, indent=2))
    metrics = {f"card/{k}": v for k, v in card.items() if isinstance(v, (int, float))}
    # Named apart from TRL's eval_accuracy, which is the curve on the subset evaluated during training.
    metrics.update(heldout_accuracy=card["accuracy"], heldout_accuracy_low=card["accuracy_low"],
                   heldout_accuracy_high=card["accuracy_high"], heldout_pairs=card["pairs"],
                   eval_accuracy=card["accuracy"])
    if rows:  # the mean margin of every held-out pair, as TRL's eval_margin is of those it evaluated
        metrics["eval_margin"] = sum(r["reward_chosen"] - r["reward_rejected"] for r in rows) / len(rows)
    log.event("succeeded", step=steps, metrics=metrics,
              message=f"reward model trained ({steps} steps); " + "; ".join(describe_card(card)))


def bootstrap(records: list, seed: int) -> list:
    """A sample of as many records as there are, drawn with replacement (seeded)."""
    import random

    rng = random.Random(seed)
    return [records[rng.randrange(len(records))] for _ in records]


def run_ensemble(config: RewardTrainConfig, log: RunLog) -> None:
    """K members, one after the other, each on a bootstrap sample of the training pairs with seed +
    i, saved in <output>/member-<i>; then the ensemble's report card, by the members' mean, on every
    held-out pair. A cancelled ensemble resumes from the first member not yet saved."""
    import dataclasses

    from pipelines.models import resolve_model
    from pipelines.reward_model import ENSEMBLE, load_reward_model, write_meta
    from pipelines.training import placement_of

    run_dir = log.path.parent
    train, held_out = pair_data(config, run_dir)
    out = run_dir / config.output
    members = []
    for i in range(config.ensemble):
        member = dataclasses.replace(config, ensemble=1, seed=config.seed + i, output=f"{config.output}/member-{i}")
        members.append(f"member-{i}")
        if (run_dir / member.output / "adapter_config.json").is_file():
            continue  # trained before a cancel: kept
        sample = bootstrap(train, config.seed + i)
        callback = progress_callback(log, eval_prefix=f"member{i}_eval_")
        trainer, _ = make_trainer(member, run_dir / f"member-{i}", sample, [], [callback])
        log.event("running", message=f"member {i + 1} of {config.ensemble}: training on a bootstrap sample of "
                                     f"{len(sample)} pairs (seed {member.seed})")
        if train_and_save(trainer, callback, member, log, "reward", "rm") is None:
            return
        del trainer
    from accelerate import PartialState

    if not PartialState().is_main_process:  # the members trained on every rank; one writes and scores them
        return
    (out / ENSEMBLE).write_text(json.dumps({"members": members, "lambda": config.ensemble_lambda}))
    write_meta(out, "reward", config.base, resolve_model(config.base, config.models_dir), "rm-ensemble")
    if not held_out:
        log.event("succeeded", message=f"an ensemble of {config.ensemble} reward models trained; no held-out pairs")
        return
    log.event("running", message=f"scoring all {len(held_out)} held-out pairs with every member")
    tokenizer, ensemble = load_reward_model(out, placement_of(config), config.load_in_4bit)
    ensemble.mode = "mean"  # accuracy is the mean's; the conservative score is for optimising against
    rows = score_held_out(ensemble, tokenizer, held_out, config)
    pq.write_table(pa.Table.from_pylist(rows), run_dir / HELD_OUT_SCORES)
    card = report_card(rows)
    (run_dir / REPORT_CARD).write_text(json.dumps(card, indent=2))
    metrics = {f"card/{k}": v for k, v in card.items() if isinstance(v, (int, float))}
    metrics.update(heldout_accuracy=card["accuracy"], heldout_accuracy_low=card["accuracy_low"],
                   heldout_accuracy_high=card["accuracy_high"], heldout_pairs=card["pairs"],
                   eval_accuracy=card["accuracy"], ensemble=config.ensemble)
    log.event("succeeded", metrics=metrics, message=f"an ensemble of {config.ensemble} reward models (accuracy of "
              f"their mean); " + "; ".join(describe_card(card)))


if __name__ == "__main__":
    raise SystemExit(run_main(RewardTrainConfig, run))
