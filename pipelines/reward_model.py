"""A trained model as an artefact: the meta file beside every adapter the studio saves, and the
reward model's loading and scoring (used by DPO's and PPO's neighbours: evaluation, export,
reward scoring, the online trainers).

A reward model is LoRA on a causal LM with a one-output score head. Its adapter carries the head
(`modules_to_save=["score"]`; without it a reloaded RM scores with a random head) and its meta
file names the base's local folder, so it reloads offline with identical scores. `score()` reads
a prompt + response the way training did: the chat template over the whole conversation, the score
taken at its last token.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.models import STUDIO_META, Placement, load_kwargs, load_tokenizer, rank_device, right_padded


def write_meta(adapter_dir: str | Path, kind: str, base: str, base_path: str, method: str | None = None) -> None:
    """Record beside a saved adapter what it is ('reward' or 'policy'), how it was trained and
    the base it applies to (its name and local folder)."""
    meta = {"kind": kind, "base": base, "base_path": base_path}
    if method:
        meta["method"] = method
    (Path(adapter_dir) / STUDIO_META).write_text(json.dumps(meta))


def read_meta(adapter_dir: str | Path) -> dict:
    return json.loads((Path(adapter_dir) / STUDIO_META).read_text())


ENSEMBLE = "ensemble.json"  # in an ensemble's folder: its members' folders (inside it) and its lambda


class RewardEnsemble:
    """K reward models of one base, loaded as one base with K adapters (PEFT), scored as one: each
    answer's mean reward over the members, their spread (standard deviation), and the conservative
    score, mean minus lambda times spread (Coste et al., 2023), which `score` returns unless `mode`
    says "mean"."""

    def __init__(self, model, names: list[str], lam: float):
        self.model, self.names, self.lam, self.mode = model, names, lam, "conservative"

    def parameters(self):
        return self.model.parameters()

    def eval(self):
        self.model.eval()
        return self

    def each(self, tokenizer, conversations, batch_size: int, max_length: int) -> list[list[float]]:
        out = []
        for name in self.names:
            self.model.set_adapter(name)
            out.append(score(tokenizer, self.model, conversations, batch_size, max_length))
        return out

    def combine(self, each: list[list[float]]) -> tuple[list[float], list[float], list[float]]:
        """Per answer: mean, spread, conservative."""
        means, spreads = [], []
        for values in zip(*each):
            mean = sum(values) / len(values)
            means.append(mean)
            spreads.append((sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5)
        return means, spreads, [m - self.lam * s for m, s in zip(means, spreads)]


def load_reward_model(adapter: str | Path, placement: Placement, load_in_4bit: bool = False):
    """Tokenizer and reward model (base + adapter with its score head), in eval mode; its base in
    4 bits when the policy's is (a 4-bit 7B policy beside a 15 GB reward model fits no 24 GB card).
    An ensemble's folder gives a RewardEnsemble, which `score` takes like a model."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    if (Path(adapter) / ENSEMBLE).is_file():
        spec = json.loads((Path(adapter) / ENSEMBLE).read_text())
        members = [Path(adapter) / m for m in spec["members"]]
        tokenizer, model = load_reward_model(members[0], placement, load_in_4bit)
        for i, member in enumerate(members[1:], 1):
            model.load_adapter(str(member), adapter_name=f"member{i}")
        if not load_in_4bit:
            model.to(rank_device(placement.device))  # the score head copies PEFT added
        model.eval()
        return tokenizer, RewardEnsemble(model, ["default", *(f"member{i}" for i in range(1, len(members)))],
                                         spec["lambda"])
    meta = read_meta(adapter)
    tokenizer = load_tokenizer(adapter)
    base = AutoModelForSequenceClassification.from_pretrained(meta["base_path"], num_labels=1,
                                                              **load_kwargs(placement, load_in_4bit))
    base.config.pad_token_id = tokenizer.pad_token_id
    model = PeftModel.from_pretrained(base, str(adapter))
    if not load_in_4bit:  # a 4-bit model is placed by its loading and cannot be moved
        model.to(rank_device(placement.device))  # the score head copy PEFT adds, too
    model.eval()
    return tokenizer, model


def score(
    tokenizer, model, conversations: list[list[dict]], batch_size: int = 8, max_length: int = 2048
) -> list[float]:
    """The reward of each conversation (prompt messages + response messages); for an ensemble, its
    conservative score (or its mean, as its `mode` says)."""
    import torch

    if isinstance(model, RewardEnsemble):
        means, _, conservative = model.combine(model.each(tokenizer, conversations, batch_size, max_length))
        return means if model.mode == "mean" else conservative

    ids = [tokenizer.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"][:max_length]
           for c in conversations]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths batch together
    rewards = [0.0] * len(ids)
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            input_ids, mask = right_padded([ids[i] for i in chunk], tokenizer.pad_token_id)
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits[:, 0]
            for row, i in enumerate(chunk):
                rewards[i] = float(logits[row])
    return rewards
