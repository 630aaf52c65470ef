"""The control every preference method must beat: SFT on the chosen answers, against DPO from the
base, DPO from the SFT model and DPO with an SFT term, each judged against the base by an
independent judge reward model (trained on prompts none of them saw) and the heuristic rule, with
the cost card beside, on the HH sample and the default model.

    python benchmarks/sft_control.py [--pairs 200] [--judge-pairs 400] [--held-out 32] [--workspace DIR]

The HH sample (../shared/data) is split by prompt into three parts that share no prompt: the
policies' training pairs, the judge reward model's, and the held-out prompts every policy answers.
Everything runs through the studio's own jobs, as a user would; the table prints each policy's
win rate against the base by the judge and by the rule (95% intervals), and its cost card's held-out
perplexity and over-refusal changes. DPO from the SFT model is judged against its own base, the SFT
model: the table says so.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HH = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless-sample.jsonl.gz"


def rate(m: dict, role: str) -> str:
    if f"{role}/win_rate" not in m:
        return "-"
    return f"{m[f'{role}/win_rate']:.0%} ({m[f'{role}/win_low']:.0%}-{m[f'{role}/win_high']:.0%})"


def controlled(m: dict, role: str) -> str:
    return f"{m[f'{role}/lc_win_rate']:.0%}" if f"{role}/lc_win_rate" in m else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--judge-pairs", type=int, default=400)
    parser.add_argument("--held-out", type=int, default=32)
    parser.add_argument("--workspace")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()

    from benchmarks.peak import models_dir
    from store import import_file
    from store.queries import latest_metrics
    from studio import service
    from studio.runner import Runner
    from studio.workspace import Workspace

    root = Path(args.workspace or tempfile.mkdtemp(prefix="sft-control-"))
    workspace = Workspace.at(root, models_dir())
    with workspace.open_store() as store:
        if store.dataset_id("hh") is None:
            import_file(store, HH, "hh")
            from store.pairs import split_pairs

            split_pairs(store, "hh", ("train", "rest"), share=args.pairs / 1000, by="prompt", seed=0)
            split_pairs(store, "rest", ("judge", "held"), share=args.judge_pairs / (1000 - args.pairs), by="prompt",
                        seed=0)
        runner = Runner(store, workspace, one_job_at_a_time=False)

        def wait(run_id: int) -> int:
            run = runner.wait(run_id)
            if run["status"] != "succeeded":
                raise SystemExit(f"run {run_id} ({run['kind']}) {run['status']}: {run['message']}")
            return run_id

        judge = wait(service.start_training(runner, "rm", "judge", eval_share=0.1).run_id)
        sft = wait(service.start_training(runner, "sft", "train", eval_share=0.0).run_id)
        policies = {
            "SFT on the chosen answers": sft,
            "DPO from the base": wait(service.start_training(runner, "dpo", "train", eval_share=0.0).run_id),
            "DPO from the SFT model (judged against the SFT model)": wait(service.start_training(
                runner, "dpo", "train", base=f"sft-run{sft}", eval_share=0.0).run_id),
            "DPO + SFT term (weight 1)": wait(service.start_training(runner, "dpo", "train", eval_share=0.0,
                                                                     sft_weight=1.0).run_id),
        }
        rows = []
        for name, run_id in policies.items():
            evaluation = wait(service.start_evaluation(runner, run_id, "held", judge_run=judge, rule="heuristic",
                                                       limit=args.held_out, max_new_tokens=args.max_new_tokens))
            m = latest_metrics(store, evaluation)
            rows.append((name, run_id, evaluation, m))
        judge_card = latest_metrics(store, judge)
    print(f"workspace {root}; judge reward model run {judge}: held-out accuracy "
          f"{judge_card.get('heldout_accuracy', float('nan')):.3f} ({judge_card.get('heldout_accuracy_low', 0):.3f}-"
          f"{judge_card.get('heldout_accuracy_high', 1):.3f})")
    print("| policy | run | judge RM: win against its base (95%) | rule: win (95%) | rule at equal length | "
          "held-out perplexity | benign refusals (points) |")
    print("|---|---|---|---|---|---|---|")
    for name, run_id, evaluation, m in rows:
        ppl = (f"{m['cost/perplexity/change']:+.1%} ({m['cost/perplexity/low']:+.1%} to "
               f"{m['cost/perplexity/high']:+.1%})" if "cost/perplexity/change" in m else "-")
        refusals = (f"{100 * m['cost/benign/change']:+.0f} ({100 * m['cost/benign/low']:+.0f} to "
                    f"{100 * m['cost/benign/high']:+.0f})" if "cost/benign/change" in m else "-")
        print(f"| {name} | {run_id} (eval {evaluation}) | {rate(m, 'judge')} | {rate(m, 'rule')} | "
              f"{controlled(m, 'rule')} | {ppl} | {refusals} |")
    print(json.dumps({name: run_id for name, run_id, _, _ in rows}))


if __name__ == "__main__":
    main()
