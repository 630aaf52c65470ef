"""Training and judging: train METHOD, evaluate, the report cards (rm-report, judge-report) and
labelling with an LLM judge."""

from __future__ import annotations

from pathlib import Path

from pipelines.evaluate import EvaluateConfig
from pipelines.judges import RULES
from studio import reports, service
from studio.cli.common import announce, command, config_arguments, follow, follow_job, given_settings, read_guideline
from studio.kinds import judge_annotator, make_config
from studio.methods import METHODS, ONLINE_METHODS, PAIR_POLICIES

ROLES = {"proxy": "the proxy reward model, on one half of the prompts of '{dataset}' (for {online} to optimise)",
         "judge": "the judge reward model, on the other half (to evaluate policies by: alignstudio evaluate "
                  "--judge-run {run_id})"}


def cmd_train(ctx, args) -> int:
    method = METHODS[args.method]
    if method.online:
        data = dict(prompts=args.prompts, reward_run=args.reward_run, judge_run=args.judge_run)
        what = f"{method.name} on the prompts of '{args.prompts}' against the reward model of run {args.reward_run}"
    else:
        data = dict(dataset=args.dataset, eval_dataset=args.eval_dataset,
                    judge_split=getattr(args, "judge_split", False))
        what = f"{method.name} on '{args.dataset}'"
    settings = given_settings(args, method.config)
    started = service.start_training(ctx.runner, method.name, **data, force=args.force, bundle=args.bundle,
                                     **settings)
    if started.bundle is not None:
        print(f"bundle written to {started.bundle}: {what} from '{settings.get('base', 'default')}'. Run it there "
              f"with ./launch.sh (or sbatch job.sbatch), then bring it back: alignstudio runs import {started.bundle}")
        if started.plan is not None:
            print(f"{started.plan.describe()} (each process)", flush=True)
        return 0
    for run_id, role in zip(started.run_ids, started.roles):
        announce(ctx, run_id, ROLES[role].format(dataset=args.dataset, online=ONLINE_METHODS, run_id=run_id)
                 if role else f"{what} from '{settings.get('base', 'default')}'")
    if started.plan is not None:
        print(started.plan.describe(), flush=True)
    warning = service.export_warning(settings.get("base", "default"), ctx.workspace.models_dir) \
        if method.makes == "policy" else None
    if warning:
        print(f"note: {warning}", flush=True)
    if args.no_wait:
        return 0
    return max([follow(ctx.runner, run_id) for run_id in started.run_ids])


def cmd_best_of(ctx, args) -> int:
    import json

    from studio.kinds import RunError
    from studio.rounds import best_of_n

    if not args.proxy_model or (args.judge_run is None and not args.rule):
        raise RunError("best-of-N picks by a reward model and is judged independently: give --proxy-model (its "
                       "name) and --judge-run (a reward model trained on other prompts) or --rule")
    run_id = best_of_n(ctx.runner, args.model, args.prompts, args.proxy_model, args.judge_run, n=args.best_of,
                       rule=args.rule or "", limit=args.limit or None,  # N + 1 answers to each: --limit counts
                       max_new_tokens=args.max_new_tokens or 128, wait=lambda r: follow(ctx.runner, r),
                       say=lambda line: print(line, flush=True))
    drawn = json.loads((ctx.workspace.runs_dir / str(run_id) / "best_of_n.json").read_text())
    print(f"{'N':>3}  {'proxy win (95%)':>22}  {'judge win (95%)':>22}  prompts")
    for p in drawn:
        def cell(v):
            return f"{v['win_rate']:.0%} ({v['win_low']:.0%}-{v['win_high']:.0%})"
        print(f"{p['n']:>3}  {cell(p['proxy']):>22}  {cell(p['judge']):>22}  {p['proxy']['n']}")
    return 0


def cmd_evaluate(ctx, args) -> int:
    if args.best_of:
        return cmd_best_of(ctx, args)
    if args.policy_run is None:
        from studio.kinds import RunError

        raise RunError("give --policy-run (the run that trained the policy), or --best-of N for the best-of-N baseline")
    settings = given_settings(args, EvaluateConfig)
    guideline = settings.get("judge_guideline")
    if guideline and "\n" not in guideline and Path(guideline).expanduser().is_file():
        # --judge-guideline takes a file, as the other commands' --guideline do (or the text itself)
        settings["judge_guideline"] = Path(guideline).expanduser().read_text(encoding="utf-8")
    run_id = service.start_evaluation(ctx.runner, args.policy_run, args.prompts, args.judge_run, limit=args.limit,
                                      proxy_run=args.proxy_run, reference_file=args.reference_file,
                                      against=args.against, **settings)

    def people(run_id, status):
        line = reports.people_verdict(ctx.store, args.policy_run) if status == 0 else None
        if line:
            print(line)
        return status

    return follow_job(ctx, args, run_id, f"policy of run {args.policy_run} against {args.against or 'its base'} on "
                      f"'{args.prompts}'",
                      after=people)


def cmd_rm_report(ctx, args) -> int:
    lines = reports.rm_report(ctx.runner, args.run)
    print(f"reward model of run {args.run}:")
    for line in lines:
        print(f"  {line}")
    return 0


def cmd_judge_report(ctx, args) -> int:
    lines = reports.judge_report(ctx.runner, args.dataset, llm_judge=args.llm_judge, rule=args.rule,
                                 reward_run=args.reward_run, limit=args.limit, guideline=read_guideline(args),
                                 say=lambda line: print(line, flush=True))
    for line in lines:
        print(f"  {line}" if line is not lines[0] else line)
    return 0


def cmd_label_with_judge(ctx, args) -> int:
    run_id = service.start_judge_labels(ctx.runner, args.dataset, args.judge, read_guideline(args), args.limit)
    return follow_job(ctx, args, run_id, f"labels of '{args.dataset}' by {judge_annotator(args.judge)}")


def add_train(sub) -> None:
    p = sub.add_parser("train", help="train a reward model or a policy (a job): "
                       + ", ".join(f"{m.name} ({m.label})" for m in METHODS.values()),
                       description="Train with one of the studio's methods; `alignstudio train METHOD --help` lists "
                                   "that method's settings.")
    methods = p.add_subparsers(dest="method", required=True, metavar="METHOD")
    for method in METHODS.values():
        m = command(methods, method.name, cmd_train, method.summary, job=True,
                    description=f"{method.label}: {method.summary}.")
        if method.online:
            m.add_argument("--prompts", required=True, help="the dataset whose prompts the policy answers")
            m.add_argument("--reward-run", type=int, required=True, help="the run that trained the reward model")
            m.add_argument("--judge-run", type=int, help="a reward model that shares no prompt with it, to judge the "
                           "over-optimisation watch (alignstudio train rm --judge-split makes both)")
        else:
            m.add_argument("--dataset", required=True, help="pairs with a preference (from the file or from labels)")
            m.add_argument("--eval-dataset", help="pairs to evaluate on (default: a held-out share of --dataset)")
        if method.judge_split:
            m.add_argument("--judge-split", action="store_true",
                           help=f"train two reward models on the two halves of the dataset's prompts: a proxy (for "
                                f"{ONLINE_METHODS} to optimise) and a judge that shares no prompt with it (to "
                                "evaluate policies by)")
        config_arguments(m, method.config)
        m.add_argument("--force", action="store_true",
                       help="start even when the memory plan says the run will not fit the GPU")
        m.add_argument("--bundle", metavar="DIR", help="write the job to DIR (config, inputs, launch.sh for "
                       "accelerate, job.sbatch for Slurm) to run on another machine, instead of starting it here; "
                       "alignstudio runs import DIR brings it back")


def cmd_round(ctx, args) -> int:
    from studio.rounds import RoundSettings, run_rounds

    settings = make_config(RoundSettings, "round", **given_settings(args, RoundSettings))
    train = {"lora_r": args.lora_r} if args.lora_r else {}
    results = run_rounds(ctx.runner, args.prompts, args.reward_model, args.eval_prompts, policy=args.policy,
                         judge_run=args.judge_run, rule=args.rule or "", settings=settings, train_settings=train,
                         wait=lambda run_id: follow(ctx.runner, run_id))
    return 0 if results else 1


def cmd_benchmark(ctx, args) -> int:
    from pipelines.benchmark import BenchmarkConfig

    run_id = service.start_benchmark(ctx.runner, args.model, against=args.against,
                                     **given_settings(args, BenchmarkConfig))
    return follow_job(ctx, args, run_id, f"lm-evaluation-harness on {args.model}"
                      + (f" against {args.against}" if args.against else ""))


def add_commands(sub) -> None:
    add_train(sub)
    from pipelines.benchmark import BenchmarkConfig

    p = command(sub, "benchmark", cmd_benchmark, "lm-evaluation-harness tasks on a policy and its base (a job): "
                "each task's metric with its error, the difference with an interval", job=True,
                description="The studio's own tasks (studio_arithmetic, studio_everyday) run with no hub; any task "
                            "whose data this machine has cached works too. Needs the bench extra "
                            "(pip install -e '.[bench]').")
    p.add_argument("--model", required=True, help="a trained policy's name, default, or a model folder")
    p.add_argument("--against", help="the model to compare with (default: a policy's own base)")
    config_arguments(p, BenchmarkConfig)
    from studio.rounds import RoundSettings

    p = command(sub, "round", cmd_round, "rounds: the policy answers each prompt N times, a reward model picks "
                "best and worst, and a new policy trains from it (iterative DPO, or rejection sampling by SFT), "
                "judged against the previous one", opens="runner",
                description="Each round's answers, pairs (a dataset <prompts>-<mode>-round<k>), training run and "
                            "evaluation are runs and datasets of the store; the rounds stop where the independent "
                            "judge says a round made the policy worse, and the best round by the judge is kept. "
                            "The same command again resumes where it stopped.")
    p.add_argument("--prompts", required=True, help="a dataset whose prompts the policy answers each round")
    p.add_argument("--reward-model", required=True, help="the reward model (its name) that picks best and worst: "
                   "the rounds' proxy")
    p.add_argument("--eval-prompts", required=True, help="held-out prompts each round's policy is judged on")
    p.add_argument("--policy", default="default", help="the model the first round starts from: default, a model "
                   "folder, or a trained policy's name (an SFT model, an earlier round's policy)")
    p.add_argument("--judge-run", type=int, help="an independent judge: a reward-model run trained on other prompts")
    p.add_argument("--rule", choices=sorted(RULES), help="an independent judge: a named rule")
    p.add_argument("--lora-r", type=int, help="LoRA rank of each round's training (default: the method's)")
    config_arguments(p, RoundSettings)
    p = command(sub, "evaluate", cmd_evaluate, "policy vs its base, by its proxy and independent judges (a job)",
                job=True,
                description="Both answer the same prompts. The policy's proxy (the reward model it was trained "
                            "against, if any) is always reported, labelled as such; give at least one independent "
                            "judge: --judge-run (a reward model trained on other prompts), --llm-judge or --rule.")
    p.add_argument("--policy-run", type=int, help="the run that trained the policy")
    p.add_argument("--best-of", type=int, help="instead: the best-of-N baseline of --model, N = 1, 2, 4, ... up to "
                   "this: its best answer by --proxy-model against one answer, by the proxy and by --judge-run or "
                   "--rule")
    p.add_argument("--model", default="default", help="with --best-of: the model that answers (default, a folder, a "
                   "trained policy's name)")
    p.add_argument("--proxy-model", help="with --best-of: the reward model (its name) that picks the best answer")
    p.add_argument("--judge-run", type=int, help="a reward-model run trained on prompts that share nothing with the "
                   "policy's or its proxy's training pairs (alignstudio train rm --judge-split makes one)")
    p.add_argument("--proxy-run", type=int, help=f"for a policy trained on pairs ({PAIR_POLICIES}): a reward-model run "
                   "trained on the same pairs, reported as its proxy beside the judges, to show the gap between them")
    p.add_argument("--prompts", required=True, help="a dataset whose prompts both answer (held out from training)")
    p.add_argument("--against", help="judge the policy against another trained policy of the same base (its name, "
                   "e.g. sft-run3: does DPO beat SFT on the chosen answers?) instead of its base")
    p.add_argument("--reference-file", help="cost card: a JSONL file of reference answers (prompt and completion) "
                   "whose perplexity base and policy are measured on (default: the preferred answers of --prompts' "
                   "pairs whose prompts the policy never trained on)")
    p.add_argument("--limit", type=int, default=service.EVAL_PROMPTS,
                   help=f"at most this many prompts (default: {service.EVAL_PROMPTS})")
    config_arguments(p, EvaluateConfig)

    p = command(sub, "rm-report", cmd_rm_report, "a reward model's report card: accuracy with its interval, length "
                "bias, calibration, agreement with each annotator", opens="runner")
    p.add_argument("run", type=int, help="the run that trained the reward model")

    p = command(sub, "judge-report", cmd_judge_report, "judges (an LLM judge, a rule, a reward model) side by side "
                "against people's labels: agreement and Cohen's kappa with intervals, length preference",
                opens="runner")
    p.add_argument("--dataset", required=True, help="a dataset whose pairs people labelled (or came with verdicts)")
    p.add_argument("--llm-judge", help="a GGUF chat model (its name in `alignstudio models`, or a .gguf file)")
    p.add_argument("--rule", choices=sorted(RULES), help="a named rule")
    p.add_argument("--reward-run", type=int, help="a reward-model run (judged on the pairs it was not trained on)")
    p.add_argument("--guideline", help="a text file: the LLM judge's prompt, with {prompt}, {answer_a}, {answer_b}")
    p.add_argument("--limit", type=int, default=200, help="labelled pairs judged at most (default 200)")

    p = command(sub, "label-with-judge", cmd_label_with_judge, "label a dataset's pairs with an LLM judge, as the "
                "annotator judge:<file>; people's labels and the file's verdicts outrank them (a job)", job=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--judge", required=True, help="a GGUF chat model (its name in `alignstudio models`, or a .gguf "
                   "file)")
    p.add_argument("--guideline", help="a text file: the judge's prompt, with {prompt}, {answer_a}, {answer_b}")
    p.add_argument("--limit", type=int, help="pairs labelled at most (in id order)")
