"""Rounds: the loop closes itself. Each round the current policy answers every prompt of a dataset N
times, a reward model scores the answers, each prompt's best answer is paired against its worst,
and a new policy trains from the current one (its reference): on the pairs by DPO (iterative
DPO), or on each prompt's best answer by SFT (rejection sampling, as Llama 2 was tuned). The new
policy is then judged against the previous one on held-out prompts by an independent judge.

A round orchestrates jobs that exist (generation, reward scoring, training, evaluation), each a
run of the store with its lineage: round k's pairs dataset names the policy that answered, its
training run starts from that policy. Rounds stop where the judge says the new policy is worse
than the previous one (the proxy may still rise: that is over-optimisation), and the best round by
the judge is kept, never by the proxy alone. Cancelling a round cancels the run in progress;
running the same rounds again resumes: a round whose pairs and policy exist is not run twice.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from pipelines.best_of_n import BestOfNConfig
from pipelines.settings import setting
from store.models import model_named, model_path, reward_models
from store.queries import latest_metrics, pair_count, succeeded_runs
from store.rounds import RoundError, best_against_worst, scored_samples
from studio import service
from studio.judging import check_independent
from studio.kinds import RunError, make_config
from studio.runner import Runner

MODES = {"dpo": "dpo", "sft": "sft"}  # round mode -> the training method it runs
ENGINES = ("auto", "llama.cpp", "transformers")


@dataclass
class RoundSettings:
    """Rounds of sampling, scoring and training, each from the previous round's policy."""
    mode: str = setting("dpo", "dpo: iterative DPO on each prompt's best answer against its worst; sft: rejection "
                        "sampling, fine-tuning on each prompt's best answer", choices=tuple(MODES), label="Round mode")
    rounds: int = setting(1, "rounds to run, each from the previous round's policy", label="Rounds")
    n: int = setting(4, "answers sampled per prompt each round (2 to 64)", label="Answers per prompt")
    margin: float = setting(0.0, "a pair is made only where the best answer's reward leads the worst's by more than "
                            "this", label="Reward margin")
    max_new_tokens: int = setting(128, "answer length limit in tokens", label="Max answer tokens")
    temperature: float = setting(0.8, "sampling temperature", label="Temperature")
    engine: str = setting("auto", "auto: llama.cpp for the default model, transformers for a trained policy; or "
                          "llama.cpp (a policy is merged and converted to GGUF once)", choices=ENGINES,
                          label="Sampling engine")
    eval_limit: int = setting(32, "held-out prompts each round's policy is judged on", label="Judged prompts")
    max_steps: int = setting(-1, "training steps per round; a positive value overrides epochs", label="Max steps")
    epochs: float = setting(1.0, "passes over the round's pairs", label="Epochs")
    max_length: int = setting(512, "tokens of prompt + answer in training", label="Max tokens")
    seed: int = setting(0, "seed of sampling (round k samples with seed + k) and training", label="Seed")

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if not 2 <= self.n <= 64:
            raise ValueError(f"n must be 2 to 64 answers per prompt (a pair needs two; 64 is already hours of "
                             f"sampling on a CPU), not {self.n}")
        if not 1 <= self.rounds <= 20:
            raise ValueError(f"rounds must be 1 to 20, not {self.rounds}")
        if self.margin < 0:
            raise ValueError(f"margin must be 0 or more, not {self.margin}")
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {self.engine!r}")


@dataclass
class RoundResult:
    round: int
    policy_from: str          # the model that answered (and the new policy's base and reference)
    pairs_dataset: str
    pairs: int
    train_run: int
    policy: str               # the new policy's name
    eval_run: int
    judge: dict = field(default_factory=dict)   # the judge's win rate against the previous policy
    proxy: dict = field(default_factory=dict)   # the proxy's (the reward model that picked the pairs)

    def line(self) -> str:
        def rate(v):
            if not v:
                return "n/a"
            return f"{v['win_rate']:.0%} ({v['win_low']:.0%}-{v['win_high']:.0%})"
        return (f"round {self.round}: {self.policy} from {self.policy_from} on {self.pairs} pairs; against the "
                f"previous policy the judge says {rate(self.judge)}, the proxy {rate(self.proxy)}")


def round_dataset(prompts: str, k: int, mode: str) -> str:
    return f"{prompts}-{mode}-round{k}"


def check_start(runner: Runner, prompts: str, reward_model: str, eval_prompts: str, judge_run: int | None,
                rule: str) -> int:
    """What a round needs, refused in a sentence before any run exists; the reward model's run id."""
    store = runner.store
    for name in (prompts, eval_prompts):
        if store.dataset_id(name) is None:
            raise RunError(f"no dataset named '{name}'")
    service.prompts_of(store, prompts, 1)  # a dataset without prompts is refused here
    found = model_named(store, reward_model)
    if found is None or found["purpose"] != "reward":
        raise RunError(f"'{reward_model}' is not a reward model (train one: alignstudio train rm; see alignstudio "
                       "models)")
    if judge_run is None and not rule:
        raise RunError("a round is judged by an independent judge: give a judge reward model (judge run) or a rule; "
                       "the reward model that picks the pairs is its proxy, reported beside it, never alone")
    busy = runner.active()
    if busy:
        raise RunError(f"run {busy[0]} is still running: wait for it to end (or cancel it) before starting a round")
    return found["run_id"]


def run_rounds(runner: Runner, prompts: str, reward_model: str, eval_prompts: str, policy: str = "default",
               judge_run: int | None = None, rule: str = "", settings: RoundSettings | None = None,
               train_settings: dict | None = None, say: Callable[[str], None] = print,
               wait: Callable[[int], int] | None = None) -> list[RoundResult]:
    """Run `settings.rounds` rounds from `policy` on the prompts of `prompts`, picking pairs with
    the reward model named `reward_model`, judging each round on `eval_prompts` by the reward model
    of `judge_run` and/or `rule`. `wait(run_id)` follows a run (0: it succeeded; the CLI prints its
    progress and cancels it on Ctrl-C). Returns the rounds run (or resumed), the kept one marked."""
    settings = settings or RoundSettings()
    reward_run = check_start(runner, prompts, reward_model, eval_prompts, judge_run, rule)
    store = runner.store
    wait = wait or (lambda run_id: 0 if runner.wait(run_id)["status"] == "succeeded" else 1)
    method = MODES[settings.mode]
    current = policy
    results: list[RoundResult] = []
    for k in range(1, settings.rounds + 1):
        into = round_dataset(prompts, k, settings.mode)
        answering = service.base_named(store, current)
        recipe = {"round": k, "policy": current, "mode": settings.mode, "n": settings.n}
        if store.dataset_id(into) is None:
            say(f"round {k}: {current} answers each prompt of '{prompts}' {settings.n} times")
            engine = settings.engine if settings.engine != "auto" else \
                ("llama.cpp" if answering == "default" else "transformers")
            generated = service.start_generation(runner, prompts, model=answering, n=settings.n,
                                                 max_new_tokens=settings.max_new_tokens,
                                                 temperature=settings.temperature, seed=settings.seed + 1000 * k,
                                                 engine=engine)
            if wait(generated):
                raise RunError(f"round {k} stopped: its sampling (run {generated}) did not succeed")
            try:
                scoring = service.start_reward_scoring(runner, prompts, reward_model)
            except RunError:
                scoring = None  # every answer was scored already
            if scoring is not None and wait(scoring):
                raise RunError(f"round {k} stopped: its reward scoring (run {scoring}) did not succeed")
            try:
                made = best_against_worst(store, prompts, answering, reward_model, into, settings.margin, recipe)
            except RoundError as e:
                raise RunError(f"round {k}: {e}") from None
            say(f"round {k}: {made.summary()}")
        pairs = pair_count(store, into)
        train_run = _succeeded_run(store, method, into)
        if train_run is None:
            started = service.start_training(runner, method, into, base=current, eval_share=0.0,
                                             max_steps=settings.max_steps, epochs=settings.epochs,
                                             max_length=settings.max_length, seed=settings.seed,
                                             **(train_settings or {}))
            train_run = started.run_id
            say(f"round {k}: run {train_run} trains {method.upper()} from {current}")
            if wait(train_run):
                raise RunError(f"round {k} stopped: its training (run {train_run}) did not succeed; run the same "
                               "rounds again to resume it")
        new_policy = f"{method}-run{train_run}"
        eval_run = _succeeded_run(store, "evaluate", eval_prompts, policy_run=train_run)
        if eval_run is None:
            eval_run = service.start_evaluation(runner, train_run, eval_prompts, judge_run=judge_run, rule=rule,
                                                limit=settings.eval_limit, proxy_run=reward_run,
                                                proxy_picked_the_pairs=True,
                                                max_new_tokens=settings.max_new_tokens)
            say(f"round {k}: run {eval_run} judges {new_policy} against {current}")
            if wait(eval_run):
                raise RunError(f"round {k} stopped: its evaluation (run {eval_run}) did not succeed")
        metrics = latest_metrics(store, eval_run)
        judge_role = "judge" if judge_run is not None else "rule"
        result = RoundResult(k, current, into, pairs, train_run, new_policy, eval_run,
                             _verdict(metrics, judge_role), _verdict(metrics, "proxy"))
        results.append(result)
        say(result.line())
        if result.judge and result.judge["win_high"] < 0.5:
            rose = result.proxy and result.proxy["win_low"] > 0.5
            say(f"stop: the judge says round {k}'s policy is worse than {current}"
                + (" while the proxy says it is better (over-optimisation)" if rose else "")
                + f"; keep {current}")
            break
        current = new_policy
    kept = keep_by_judge(results, policy)
    say(f"kept: {kept} (the best round by the judge; never promoted by the proxy alone)")
    return results


def keep_by_judge(results: list[RoundResult], start: str) -> str:
    """The policy to keep: each round is judged against the one before it; a round is kept only if
    the judge did not call it worse, and the chain stops at the first round it did."""
    kept = start
    for r in results:
        if r.judge and r.judge["win_high"] < 0.5:
            break
        kept = r.policy
    return kept


def _verdict(metrics: dict, role: str) -> dict:
    keys = ("win_rate", "win_low", "win_high")
    return {k: metrics[f"{role}/{k}"] for k in keys} if all(f"{role}/{k}" in metrics for k in keys) else {}


def _succeeded_run(store, kind: str, dataset: str, policy_run: int | None = None) -> int | None:
    """The newest succeeded run of `kind` on `dataset` (for an evaluation: of the policy of `policy_run`)."""
    for run in succeeded_runs(store, kind, dataset):
        if policy_run is None:
            return run["id"]
        trained = model_path(store, "policy", run_id=policy_run)
        if json.loads(run["config"]).get("policy_adapter") == trained:
            return run["id"]
    return None


BEST_OF_SEED = 4242  # the best-of-N answers' own sampling seed, so they are told apart from other candidates


def best_of_n(runner: Runner, model: str, prompts: str, proxy: str, judge_run: int | None = None, n: int = 16,
              max_new_tokens: int = 128, temperature: float = 0.8, engine: str = "auto", rule: str = "",
              say: Callable[[str], None] = print, wait: Callable[[int], int] | None = None,
              limit: int | None = None) -> int:
    """Best-of-N against N for `model` (default, a folder or a trained policy's name) on the prompts
    of `prompts` (its first `limit`, if given): N + 1 answers each (generation), scored by the proxy
    reward model named `proxy` and judged by the reward model of `judge_run` (reward scoring) or by a named `rule`, then
    picked and counted (a best-of-n job whose metrics are the curves). Returns its run's id."""
    from pipelines.judges import RULES

    store = runner.store
    if not 1 <= n <= 64:
        raise RunError(f"N must be 1 to 64 answers per prompt, not {n}")
    found = model_named(store, proxy)
    if found is None or found["purpose"] != "reward":
        raise RunError(f"'{proxy}' is not a reward model (see alignstudio models)")
    if (judge_run is None) == (not rule):
        raise RunError("best-of-N is judged by one independent judge: a reward model trained on other prompts "
                       "(judge run) or a rule, not both")
    if rule and rule not in RULES:
        raise RunError(f"unknown rule {rule!r}; one of {', '.join(RULES)}")
    judge = [r for r in reward_models(store) if r["run_id"] == judge_run] if judge_run is not None else []
    if judge_run is not None and not judge:
        raise RunError(f"run {judge_run} did not train a reward model")
    if judge_run == found["run_id"]:
        raise RunError("the judge cannot be the proxy that picks the answers: give a reward model trained on other "
                       "prompts")
    if judge_run is not None:
        check_independent(runner, judge_run, "the proxy", found["run_id"])
    service.prompts_of(store, prompts, 1)
    wait = wait or (lambda run_id: 0 if runner.wait(run_id)["status"] == "succeeded" else 1)
    answering = service.base_named(store, model)
    engine = engine if engine != "auto" else ("llama.cpp" if answering == "default" else "transformers")
    generated = service.start_generation(runner, prompts, limit, model=answering, n=n + 1, seed=BEST_OF_SEED,
                                         max_new_tokens=max_new_tokens, temperature=temperature, engine=engine)
    say(f"run {generated}: {model} answers each prompt of '{prompts}' {n + 1} times")
    if wait(generated):
        raise RunError(f"best-of-{n} stopped: its sampling (run {generated}) did not succeed")
    for name in (proxy, *(j["name"] for j in judge)):
        try:
            scoring = service.start_reward_scoring(runner, prompts, name)
        except RunError:
            continue  # scored already
        say(f"run {scoring}: {name} scores the answers")
        if wait(scoring):
            raise RunError(f"best-of-{n} stopped: its reward scoring (run {scoring}) did not succeed")
    answered = {p["prompt_id"] for p in service.prompts_of(store, prompts, limit)}  # not an earlier run's others
    judged_by = judge[0]["name"] if judge else None
    rows = [r for r in scored_samples(store, prompts, answering, BEST_OF_SEED, proxy, judged_by)
            if r["prompt_id"] in answered]
    config = make_config(BestOfNConfig, "best-of-N", n=n, proxy_name=proxy,
                         judge_name=judge[0]["name"] if judge else "", rule=rule)
    run_id = runner.start("best-of-n", config, {config.inputs: rows}, prompts)
    if wait(run_id):
        raise RunError(f"best-of-{n}: run {run_id} did not succeed")
    return run_id
