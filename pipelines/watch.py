"""The over-optimisation watch of the online trainers (PPO, GRPO, RLOO).

A policy trained against a reward model (its proxy) can raise the proxy's score without getting
better (Gao et al.'s gold-vs-proxy curves). So every few steps the trainer answers a fixed set of
prompts held out of training and records, against the base's answers to the same prompts:

- `watch/proxy_win`: how often the proxy scores the policy's answer above the base's;
- `watch/judge_win`: the same by the run's judge (a judge reward model, or a rule), when it has one;
- `watch/kl`: the KL from the base on those answers (nats per answer).

With a judge, the run keeps the adapter of the check the judge liked best (`best/`) and makes it
the run's output (the last step's adapter stays in `last/`), and it says so while it runs when
the proxy keeps rising while the judge falls. The prompts are few (16 by default), so the warning
is a hint to look, not proof.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipelines.judges import RULES, by_reward, by_rule, rule_answers
from pipelines.models import end_ids
from pipelines.settings import setting

RewardFn = Callable[[list[list[dict]], list[str]], list[float]]  # (prompts, answers) -> scores
CHECKS_PER_RUN = 8  # when watch_every is 0
GAMED_DROP = 0.10   # the judge's win rate this far below its best while the proxy rises: a warning
BEST, LAST, BEST_JSON = "best", "last", "watch.json"


def main_decides(value: bool) -> bool:
    """The main process's `value`, on every process of a distributed run (the value itself otherwise)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    found = [value]
    dist.broadcast_object_list(found, src=0)
    return bool(found[0])


def adapter_state(model) -> dict | None:
    """The trainable weights (the adapter: LoRA, a score head) whole, for `save_pretrained`, when the
    model is sharded (FSDP2 splits each between the processes, and its own save on the main process
    alone fails: "Attempted to access the data pointer on an invalid python storage"); None when it
    is not. Every process must call it, in step: each `full_tensor` is a collective. Only the
    adapter is gathered, never the frozen base."""
    from torch.distributed.tensor import DTensor

    trained = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not any(isinstance(p, DTensor) for _, p in trained):
        return None
    return {name: (p.full_tensor() if isinstance(p, DTensor) else p).detach().cpu() for name, p in trained}


@dataclass
class WatchSettings:
    """Settings of the over-optimisation watch (the online trainers' configs extend it)."""
    watch_prompts: int = setting(16, "prompts held out of training and answered at each check of proxy, judge and "
                                 "KL (at most a quarter of the prompts; 0: no watch)", label="Watch prompts",
                                 advanced=True)
    watch_every: int = setting(0, "check every N steps (0: about 8 checks per run)", label="Check every",
                               advanced=True)
    judge_adapter: str = setting("", "a judge reward model's adapter folder (shares no prompt with the proxy)",
                                 internal=True)
    judge_rule: str = setting("", "judge the watch's answers by a rule as well (keeps the checkpoint it likes best)",
                              choices=["", *RULES], label="Judge rule", advanced=True)


def hold_out_watch_prompts(prompts: list, settings: WatchSettings, seed: int) -> tuple[list, list]:
    """(training prompts, watch prompts): a seeded pick of at most a quarter of them."""
    n = min(settings.watch_prompts, len(prompts) // 4)
    if n <= 0:
        return prompts, []
    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    watched = set(order[:n])
    return [p for i, p in enumerate(prompts) if i not in watched], [prompts[i] for i in sorted(watched)]


def check_every(settings: WatchSettings, max_steps: int) -> int:
    return settings.watch_every if settings.watch_every > 0 else max(1, max_steps // CHECKS_PER_RUN)


class Watch:
    """Checks a policy (a PEFT model whose adapter can be disabled) against its base on fixed
    prompts; `judge_fn` (a reward function) or `rule` judge it, `proxy_fn` is what it optimises."""

    def __init__(self, prompts: list[list[dict]], tokenizer, proxy_fn: RewardFn, run_dir: Path, log,
                 max_new_tokens: int, judge_fn: RewardFn | None = None, rule: str = "", seed: int = 0,
                 batch_size: int = 8):
        self.prompts, self.tokenizer, self.proxy_fn, self.judge_fn, self.rule = (
            prompts,
            tokenizer,
            proxy_fn,
            judge_fn,
            rule,
        )
        self.run_dir, self.log, self.max_new_tokens, self.seed, self.batch_size = (
            run_dir,
            log,
            max_new_tokens,
            seed,
            batch_size,
        )
        self.base = None       # the base's answers: texts, ended, proxy and judge scores
        self.best = None       # (judge_win, proxy_win, step) of the judge's best check
        self.warned = False
        if (run_dir / BEST / BEST_JSON).is_file():  # a resumed run goes on from its best check
            self.best = tuple(json.loads((run_dir / BEST / BEST_JSON).read_text()))

    @property
    def has_judge(self) -> bool:
        return self.judge_fn is not None or bool(self.rule)

    def _answers(self, model, device) -> tuple[list[str], list[list[int]]]:
        import torch

        from pipelines.evaluate import answer

        # The same seed at every check, without touching the training's random state. `device` is a
        # name from the studio's PPO ("cuda", "cuda:1") or a torch.device from TRL's arguments.
        where = torch.device(device)
        devices = [torch.cuda.current_device() if where.index is None else where.index] if where.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            found = answer(model, self.tokenizer, self.prompts, device, max_new_tokens=self.max_new_tokens,
                           temperature=0.7, batch_size=self.batch_size)
        return found

    def check(self, model, step: int, device) -> dict:
        """Answer the watch prompts, compare with the base, record the metrics; returns them."""
        from pipelines.evaluate import answer_kl

        was_training = model.training
        model.eval()
        if self.base is None:
            with model.disable_adapter():
                texts, ids = self._answers(model, device)
            self.base = {"answers": rule_answers(texts, ids, end_ids(model, self.tokenizer)),
                         "proxy": self.proxy_fn(self.prompts, texts),
                         "judge": self.judge_fn(self.prompts, texts) if self.judge_fn else None}
        texts, ids = self._answers(model, device)
        kls = [answer_kl(model, self.tokenizer, p, i, device) for p, i in zip(self.prompts, ids)]
        if was_training:
            model.train()
        metrics = {"watch/proxy_win": by_reward(self.proxy_fn(self.prompts, texts), self.base["proxy"])["win_rate"],
                   "watch/kl": sum(kls) / len(ids)}
        if self.judge_fn is not None:
            metrics["watch/judge_win"] = by_reward(self.judge_fn(self.prompts, texts), self.base["judge"])["win_rate"]
        elif self.rule:
            metrics["watch/judge_win"] = by_rule(self.rule, rule_answers(texts, ids, end_ids(model, self.tokenizer)),
                                                 self.base["answers"])["win_rate"]
        message = None
        if self.has_judge:
            judge, proxy = metrics["watch/judge_win"], metrics["watch/proxy_win"]
            # The main process decides for all: saving a sharded adapter is a collective, and two ranks'
            # answers may differ in the last bit.
            if main_decides(self.best is None or judge > self.best[0]):
                self.best = (judge, proxy, step)
                self._save(model, self.run_dir / BEST, self.best)
            elif judge < self.best[0] - GAMED_DROP and proxy > self.best[1] and not self.warned:
                self.warned = True
                message = (f"the proxy may be being gamed since step {self.best[2]}: the judge's win rate against the "
                           f"base fell from {self.best[0]:.0%} to {judge:.0%} while the proxy's rose from "
                           f"{self.best[1]:.0%} to {proxy:.0%} (on {len(self.prompts)} watch prompts)")
        self.log.event("running", step=step, metrics=metrics, message=message or (
            f"watch at step {step}: proxy wins {metrics['watch/proxy_win']:.0%}"
            + (f", judge {metrics['watch/judge_win']:.0%}" if self.has_judge else "")
            + f", KL {metrics['watch/kl']:.2f}"))
        return metrics

    def _save(self, model, folder: Path, best: tuple) -> None:
        state = adapter_state(model)  # on every rank: gathering a sharded adapter takes them all
        if not self.log.is_main:
            return
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        model.save_pretrained(partial, **({"state_dict": state} if state is not None else {}))
        (partial / BEST_JSON).write_text(json.dumps(best))
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)

    def keep_best(self, output: Path, final_step: int) -> str:
        """After the final save: make the judge's best check the run's output (the last adapter
        moves to last/); a sentence for the run's message ('' without a judge)."""
        if self.best is None:
            return ""
        judge, _, step = self.best
        if step == final_step or not (self.run_dir / BEST).is_dir():
            return f"; the judge liked the last step best ({judge:.0%} against the base)"
        if self.log.is_main:
            shutil.rmtree(self.run_dir / LAST, ignore_errors=True)
            for name in ("adapter_model.safetensors", "adapter_config.json"):
                (self.run_dir / LAST).mkdir(exist_ok=True)
                shutil.copy2(output / name, self.run_dir / LAST / name)
                shutil.copy2(self.run_dir / BEST / name, output / name)
        return (f"; kept the adapter of step {step}, the judge's best ({judge:.0%} against the base); the last "
                f"step's is in {LAST}/")
