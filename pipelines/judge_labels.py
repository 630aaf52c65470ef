"""Label pairs with an LLM judge: its verdicts become labels under its own annotator name.

    python -m pipelines.judge_labels --config runs/<id>/config.json

Inputs (`inputs.parquet`): pair_id, prompt, first, second (JSON message lists). Output
(`verdicts.parquet`): pair_id, verdict ('first', 'second', 'tie' where its two orders disagree, or
null where it answered with neither label), p_first and orders_disagree. Verdicts are appended to
`partial.jsonl` as they come, so a cancelled run resumes. The runner stores them as labels of the
annotator `judge:<file name>` (never a person's), replacing that judge's earlier labels of the same
pairs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.llm_judge import DEFAULT_GUIDELINE, LlamaJudge, answer_text, judge_summary
from pipelines.runlog import Partial, RunLog, run_main
from pipelines.settings import setting


@dataclass
class JudgeLabelsConfig:
    """Label pairs with an LLM judge (a GGUF chat model), asked in both orders."""
    judge: str = setting("", "the judge's GGUF file", internal=True)
    guideline: str = setting("", "the judge's prompt, with {prompt}, {answer_a} and {answer_b}; empty: the studio's")
    inputs: str = setting("inputs.parquet", "the pairs, written by the runner", internal=True)
    output: str = setting("verdicts.parquet", "the judge's verdict on each pair", internal=True)


def run(config: JudgeLabelsConfig, log: RunLog) -> None:
    run_dir = log.path.parent
    pairs = pq.read_table(run_dir / config.inputs).to_pylist()
    judge = LlamaJudge(config.judge, config.guideline or DEFAULT_GUIDELINE)
    with Partial(run_dir, key="pair_id") as partial:
        done = partial.done
        log.progress(
            len(done), len(pairs), message=f"{judge.name} judging {len(pairs) - len(done)} pairs in both orders"
        )
        try:
            for row in pairs:
                if row["pair_id"] in done:
                    continue
                if log.cancel_requested:
                    log.event("cancelled", step=len(done), total=len(pairs), message="cancelled; resume continues here")
                    return
                result = judge.compare(json.loads(row["prompt"]), answer_text(json.loads(row["first"])),
                                       answer_text(json.loads(row["second"])))
                partial.add({"pair_id": row["pair_id"], **result})
                log.progress(len(done), len(pairs))
        finally:
            judge.close()
    results = [done[row["pair_id"]] for row in pairs]
    pq.write_table(pa.Table.from_pylist(results, schema=pa.schema([
        ("pair_id", pa.string()), ("verdict", pa.string()), ("p_first", pa.float64()),
        ("orders_disagree", pa.bool_())])), run_dir / config.output)
    summary = judge_summary(results)
    log.event(
        "succeeded",
        step=len(pairs),
        total=len(pairs),
        metrics={
            "labelled": summary["n"],
            "no_verdict": summary["no_verdict"],
            **({"position_bias": summary["position_bias"]} if summary["n"] else {}),
        },
        message=f"{summary['n']} pairs labelled by {judge.name}"
        + (f" ({summary['position_bias']:.0%} ties where its two orders disagreed)" if summary["n"] else "")
        + (f"; no verdict on {summary['no_verdict']}" if summary["no_verdict"] else ""),
    )


if __name__ == "__main__":
    raise SystemExit(run_main(JudgeLabelsConfig, run))
