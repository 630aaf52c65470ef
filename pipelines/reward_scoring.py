"""Score responses with a trained reward model: the reward of each prompt + response.

    python -m pipelines.reward_scoring --config runs/<id>/config.json

Inputs (`inputs.parquet`): response_id, prompt and response (JSON message lists). Output:
`rewards.parquet` with response_id and reward. Rewards are appended to `partial.jsonl` batch by
batch, so a cancelled run resumes where it stopped.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.models import choose_placement
from pipelines.reward_model import RewardEnsemble, load_reward_model, score
from pipelines.runlog import Partial, RunLog, run_main
from pipelines.settings import DEVICE_HELP, DTYPE_HELP, setting


@dataclass
class RewardScoringConfig:
    """Score responses with a trained reward model."""
    adapter: str = setting("", "the reward model's adapter folder", internal=True)
    inputs: str = setting("inputs.parquet", "the responses, written by the runner", internal=True)
    output: str = setting("rewards.parquet", "each response's reward", internal=True)
    batch_size: int = setting(8, "responses scored at once")
    max_length: int = setting(2048, "tokens of prompt + response; longer ones are cut")
    device: str = setting("auto", DEVICE_HELP)
    dtype: str = setting("auto", DTYPE_HELP)


def run(config: RewardScoringConfig, log: RunLog) -> None:
    run_dir = log.path.parent
    table = pq.read_table(run_dir / config.inputs).to_pylist()
    chunk = config.batch_size * 8  # a checkpoint every few batches
    with Partial(run_dir, key="response_id") as partial:
        done = partial.done
        todo = [row for row in table if row["response_id"] not in done]
        placement = choose_placement(config.device, config.dtype)
        tokenizer, model = load_reward_model(config.adapter, placement)
        log.event("running", step=len(done), total=len(table), message=f"scoring {len(todo)} of {len(table)} responses")
        for start in range(0, len(todo), chunk):
            if log.cancel_requested:
                log.event(
                    "cancelled", step=len(done), total=len(table), message="cancelled; resume continues from here"
                )
                return
            rows = todo[start:start + chunk]
            conversations = [json.loads(r["prompt"]) + json.loads(r["response"]) for r in rows]
            if isinstance(model, RewardEnsemble):  # the conservative score, and how far the members disagree
                _, spreads, rewards = model.combine(model.each(tokenizer, conversations, config.batch_size,
                                                               config.max_length))
            else:
                rewards, spreads = score(tokenizer, model, conversations, config.batch_size, config.max_length), None
            for i, (row, reward) in enumerate(zip(rows, rewards)):
                partial.add({"response_id": row["response_id"], "reward": reward,
                             **({"spread": spreads[i]} if spreads else {})}, flush=False)
            partial.flush()
            log.progress(len(done), len(table))
    pq.write_table(pa.Table.from_pylist([{"response_id": r["response_id"], **{k: v for k, v in done[
        r["response_id"]].items() if k in ("reward", "spread")}} for r in table]), run_dir / config.output)
    log.event("succeeded", step=len(table), total=len(table), message=f"scored {len(table)} responses")


if __name__ == "__main__":
    sys.exit(run_main(RewardScoringConfig, run))
