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
    return {m: _percentile_interval(values) for m, values in samples.items()}


def _percentile_interval(values: list[float]) -> tuple[float, float]:
    values = sorted(values)
    return values[int(0.025 * (len(values) - 1))], values[int(math.ceil(0.975 * (len(values) - 1)))]


def logistic_fit(ys: list[float], xs: list[float], ridge: float = 1e-2) -> tuple[float, float]:
    """Intercept and slope of a logistic regression of ys (0..1; a tie is 0.5) on xs, by Newton's
    method; a small ridge keeps them finite when every y is the same or x separates them."""
    a = b = 0.0
    for _ in range(50):
        ga, gb, haa, hab, hbb = -ridge * a, -ridge * b, ridge, 0.0, ridge
        for y, x in zip(ys, xs):
            p = 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, a + b * x))))
            w = p * (1 - p)
            ga += y - p
            gb += (y - p) * x
            haa, hab, hbb = haa + w, hab + w * x, hbb + w * x * x
        det = haa * hbb - hab * hab
        if det <= 0:
            break
        da, db = (hbb * ga - hab * gb) / det, (haa * gb - hab * ga) / det
        a, b = a + da, b + db
        if abs(da) + abs(db) < 1e-9:
            break
    return a, b


def length_controlled(outcomes: list[float], length_differences: list[float], rounds: int = 200,
                      seed: int = 0) -> dict:
    """The win rate at no length difference (AlpacaEval 2's length-controlled idea): a logistic
    regression of each prompt's outcome (1 win, 0.5 tie, 0 loss) on the answers' length difference
    (policy minus base, in tokens), read at 0, with a 95% bootstrap interval over prompts. A judge
    that only rewards length gives a length-controlled rate near 50% however high the raw one is."""
    n = len(outcomes)
    if n < 2:
        return {}
    scale = max(1.0, math.sqrt(sum(d * d for d in length_differences) / n))
    xs = [d / scale for d in length_differences]

    def at_zero(ys, xs_):
        return 1.0 / (1.0 + math.exp(-logistic_fit(ys, xs_)[0]))

    rng = random.Random(seed)
    samples = []
    for _ in range(rounds):
        picked = [rng.randrange(n) for _ in range(n)]
        samples.append(at_zero([outcomes[i] for i in picked], [xs[i] for i in picked]))
    low, high = _percentile_interval(samples)
    intercept, slope = logistic_fit(outcomes, xs)
    return {"lc_win_rate": 1.0 / (1.0 + math.exp(-intercept)), "lc_low": low, "lc_high": high,
            "lc_slope_per_token": slope / scale, "lc_verdict": verdict(low, high)}


def cohen_kappa(first: list[str], second: list[str]) -> float | None:
    """Cohen's kappa of two raters' verdicts on the same items: agreement beyond what their own
    rates of each verdict give by chance. None when chance agreement is total (both always gave the
    one same verdict), where kappa is undefined."""
    n = len(first)
    if n == 0:
        return None
    observed = sum(a == b for a, b in zip(first, second)) / n
    expected = sum((first.count(v) / n) * (second.count(v) / n) for v in set(first) | set(second))
    return None if expected == 1 else (observed - expected) / (1 - expected)


SWAPPED = {"first": "second", "second": "first"}


def both_orders(first: list[str], second: list[str]) -> tuple[list[str], list[str]]:
    """Each pair's two verdicts as given and with the pair's answers swapped. Which answer of a pair
    is stored first is an accident of the file (HH-RLHF stores the chosen one first): counted in both
    orders, kappa measures agreement on which answer is better, not on a side that one rater always
    gives (which makes plain kappa 0 whatever the other rater does)."""
    return ([*first, *(SWAPPED.get(v, v) for v in first)], [*second, *(SWAPPED.get(v, v) for v in second)])


def pair_kappa(first: list[str], second: list[str]) -> float | None:
    """Cohen's kappa of two raters' verdicts ('first', 'second', 'tie') on the same pairs, in both orders."""
    return cohen_kappa(*both_orders(first, second))


def kappa_interval(first: list[str], second: list[str], rounds: int = 500, seed: int = 0,
                   kappa=cohen_kappa) -> tuple[float, float]:
    """95% bootstrap interval of a kappa (cohen_kappa, or pair_kappa) over items resampled with
    replacement (pair_kappa counts each resampled pair in both orders)."""
    n = len(first)
    rng = random.Random(seed)
    samples = []
    for _ in range(rounds):
        picked = [rng.randrange(n) for _ in range(n)]
        value = kappa([first[i] for i in picked], [second[i] for i in picked])
        if value is not None:
            samples.append(value)
    return _percentile_interval(samples) if samples else (float("nan"), float("nan"))


def paired_difference(policy: list[float], base: list[float], rounds: int = 2000, seed: int = 0) -> dict:
    """The mean of policy - base over paired items (the same prompt or text under both models) with a
    95% paired bootstrap interval, and 'no clear change' where the interval includes 0 (else
    'higher' or 'lower')."""
    diffs = [p - b for p, b in zip(policy, base)]
    n = len(diffs)
    if not n:
        return {"diff": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0, "change": "no data"}
    rng = random.Random(seed)
    means = [sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(rounds)]
    low, high = _percentile_interval(means)
    change = "higher" if low > 0 else "lower" if high < 0 else "no clear change"
    return {"diff": sum(diffs) / n, "low": low, "high": high, "n": n, "change": change}
