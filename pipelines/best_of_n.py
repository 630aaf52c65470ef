"""Best-of-N: the baseline every trained policy must beat. Of N answers a model gave each held-out
prompt, keep the one the proxy reward model likes best, and judge it against one more answer of
the same model (what it says without picking), by the proxy and by an independent judge reward
model, for N = 1, 2, 4, 8, ...: Gao et al.'s curves of over-optimisation, without training.

    python -m pipelines.best_of_n --config runs/<id>/config.json

The answers and their rewards come from the store (a generation job and two reward-scoring jobs
made them); this job only picks and counts, and logs each N as a step, so the curves plot as any
run's metrics: proxy/win_rate and judge/win_rate against N, each with its 95% interval. Where the
proxy keeps rising and the judge does not, picking by the proxy has begun to exploit it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow.parquet as pq

from common.stats import win_summary
from pipelines.judges import OUTCOME, RULES
from pipelines.runlog import RunLog, run_main
from pipelines.settings import setting


@dataclass
class BestOfNConfig:
    """Best-of-N win rates against N, by the proxy and by an independent judge."""
    inputs: str = setting("inputs.parquet", "each answer's prompt_id, sample, proxy and judge rewards, written by "
                          "the runner", internal=True)
    output: str = setting("best_of_n.json", "the curves", internal=True)
    proxy_name: str = setting("", "the reward model that picks (the proxy)", internal=True)
    judge_name: str = setting("", "the reward model that judges", internal=True)
    rule: str = setting("", "or a named rule that judges the pick against the one answer", internal=True)
    n: int = setting(16, "the largest N; the curve is drawn at 1, 2, 4, ... up to it")


def ns_up_to(n: int) -> list[int]:
    out, k = [], 1
    while k <= n:
        out.append(k)
        k *= 2
    return out if out and out[-1] == n else [*out, n]


def outcome(a: float, b: float) -> float:
    return 1.0 if a > b else 0.5 if a == b else 0.0


def curves(rows: list[dict], ns: list[int], rule: str = "") -> list[dict]:
    """For each N: per prompt, the best of samples 1..N by the proxy against sample 0, by the proxy
    and by the judge (its rewards, or the named `rule` on the two answers' text and ending); their
    win rates with intervals. Prompts with fewer than N + 1 answers are left out of that N."""
    by_prompt: dict[str, dict[int, dict]] = {}
    for r in rows:
        by_prompt.setdefault(r["prompt_id"], {})[r["sample"]] = r
    out = []
    for n in ns:
        proxy_outcomes, judge_outcomes = [], []
        for samples in by_prompt.values():
            if 0 not in samples or not all(i in samples for i in range(1, n + 1)):
                continue
            best = max((samples[i] for i in range(1, n + 1)), key=lambda s: (s["proxy"], -s["sample"]))
            proxy_outcomes.append(outcome(best["proxy"], samples[0]["proxy"]))
            judge_outcomes.append(OUTCOME[RULES[rule].verdict(best, samples[0])] if rule else
                                  outcome(best["judge"], samples[0]["judge"]))
        if proxy_outcomes:
            out.append({"n": n, "proxy": win_summary(proxy_outcomes), "judge": win_summary(judge_outcomes)})
    return out


def run(config: BestOfNConfig, log: RunLog) -> None:
    run_dir = log.path.parent
    rows = pq.read_table(run_dir / config.inputs).to_pylist()
    drawn = curves(rows, ns_up_to(config.n), config.rule)
    if not drawn:
        raise ValueError("no prompt has two answers scored by both reward models: nothing to compare")
    judge_name = config.judge_name or f"rule '{config.rule}'"
    for point in drawn:
        log.progress(point["n"], config.n, metrics={
            f"{role}/{k}": point[role][k] for role in ("proxy", "judge") for k in ("win_rate", "win_low", "win_high")})
    (run_dir / config.output).write_text(json.dumps(drawn, indent=2))
    parted = next((p["n"] for p in drawn if p["proxy"]["verdict"] == "better" and p["judge"]["verdict"] != "better"),
                  None)
    last = drawn[-1]
    message = (f"best of {last['n']} by {config.proxy_name}: the proxy says {last['proxy']['win_rate']:.0%} "
               f"({last['proxy']['win_low']:.0%}-{last['proxy']['win_high']:.0%}), the judge {judge_name} "
               f"{last['judge']['win_rate']:.0%} ({last['judge']['win_low']:.0%}-{last['judge']['win_high']:.0%}) "
               f"against one answer, on {last['proxy']['n']} prompts")
    if parted is not None:
        message += f"; from N = {parted} the proxy sees a gain the judge does not"
    log.event("succeeded", step=config.n, total=config.n, message=message)


if __name__ == "__main__":
    raise SystemExit(run_main(BestOfNConfig, run))
