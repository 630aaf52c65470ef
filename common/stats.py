"""The few statistics every verdict of the studio carries: an interval on a rate, a verdict that
says "no clear difference" when the interval includes a coin flip, and a Bradley-Terry rating of
models from pairwise votes with bootstrap intervals.

Plain Python (no numpy): the store, the pipelines and the studio all use it, and the numbers are
small (hundreds of pairs, a handful of models).
"""

from __future__ import annotations

import math
import random

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of a rate (successes of n). Ties counted as half a success make
    the true variance smaller than the binomial one, so the interval is then a little wide
    (conservative), never too narrow. (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # Exact ends where the rate is 0 or 1 (the float sum leaves a rounding crumb there).
    return (0.0 if successes <= 0 else max(0.0, centre - half)), (1.0 if successes >= n else min(1.0, centre + half))


def win_summary(outcomes: list[float]) -> dict:
    """Outcomes per prompt (1 win, 0.5 tie, 0 loss) -> rate, its 95% interval, the count and the
    verdict: 'better' or 'worse' only when the interval leaves out 50%."""
    n = len(outcomes)
    rate = sum(outcomes) / n if n else float("nan")
    low, high = wilson_interval(sum(outcomes), n)
    return {"win_rate": rate, "win_low": low, "win_high": high, "n": n, "verdict": verdict(low, high)}


def verdict(low: float, high: float) -> str:
    if low > 0.5:
        return "better"
    if high < 0.5:
        return "worse"
    return "no clear difference"


def mean_and_se(values: list[float]) -> tuple[float, float]:
    """Mean and its standard error (0 for fewer than two values)."""
    n = len(values)
    if not n:
        return float("nan"), float("nan")
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def paired_sign_test(only_first: int, only_second: int) -> float:
    """Exact two-sided p-value of McNemar's test for two models scored on the same pairs:
    `only_first` pairs only the first gets right, `only_second` only the second (the pairs both get
    right or both wrong say nothing about which is better). Binomial(n, 1/2) on the discordant pairs."""
    n = only_first + only_second
    if n == 0:
        return 1.0
    k = min(only_first, only_second)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


# --- Bradley-Terry ----------------------------------------------------------------------------

BT_SCALE = 400 / math.log(10)  # ratings on the Elo scale: 400 points = 10:1 odds
BT_CENTRE = 1000.0


def bradley_terry(battles: list[tuple[str, str, float]], iterations: int = 500, prior: float = 0.5) -> dict[str, float]:
    """Bradley-Terry strengths fitted by maximum likelihood (Hunter's MM updates), as ratings on
    the Elo scale centred on 1000. battles: (a, b, score of a: 1 win, 0.5 tie, 0 loss). Unlike
    online Elo the fit does not depend on the order of the votes.

    `prior` gives each model that many virtual wins and as many virtual losses against an anchor
    rated 1000, so that a model that won (or lost) every battle gets a finite rating and models
    never compared with each other stay on one scale; with prior 0 it is the plain MLE.
    """
    models = sorted({m for a, b, _ in battles for m in (a, b)})
    if not models:
        return {}
    wins = {m: 0.0 for m in models}
    games: dict[tuple[str, str], float] = {}
    for a, b, s in battles:
        wins[a] += s
        wins[b] += 1 - s
        key = (a, b) if a < b else (b, a)
        games[key] = games.get(key, 0.0) + 1
    strength = {m: 1.0 for m in models}
    for _ in range(iterations):
        new = {}
        for m in models:
            denominator = 2 * prior / (strength[m] + 1.0)  # the virtual games against the anchor (strength 1)
            for (a, b), n in games.items():
                if m in (a, b):
                    other = b if m == a else a
                    denominator += n / (strength[m] + strength[other])
            new[m] = (wins[m] + prior) / denominator if denominator else strength[m]
        if prior == 0:  # without an anchor only ratios are defined: fix the geometric mean
            g = math.exp(sum(math.log(v) for v in new.values()) / len(new))
            new = {m: v / g for m, v in new.items()}
        change = max(abs(math.log(new[m] / strength[m])) for m in models)
        strength = new
        if change < 1e-10:
            break
    return {m: BT_CENTRE + BT_SCALE * math.log(v) for m, v in strength.items()}


def bradley_terry_intervals(battles: list[tuple[str, str, float]], rounds: int = 200,
                            seed: int = 0) -> dict[str, tuple[float, float]]:
    """95% bootstrap intervals of each model's rating: the battles resampled with replacement
    `rounds` times (seeded, so the same votes give the same intervals)."""
    rng = random.Random(seed)
    samples: dict[str, list[float]] = {}
    for _ in range(rounds):
        fit = bradley_terry([battles[rng.randrange(len(battles))] for _ in battles], iterations=200)
        for m, r in fit.items():
            samples.setdefault(m, []).append(r)
    intervals = {}
    for m, values in samples.items():
        values.sort()
        intervals[m] = (values[int(0.025 * (len(values) - 1))], values[int(math.ceil(0.975 * (len(values) - 1)))])
    return intervals
