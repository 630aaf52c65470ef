"""QLoRA for real on the CPU: bitsandbytes 0.49+ quantises a base to 4-bit NF4 with plain torch
kernels, so every method trains on a 4-bit tiny model here as it would on a user's card (only
memory is saved, not time). What a CUDA-only path would hide: the dtype of the trainable weights,
the reward model's score head, a 4-bit policy beside a 4-bit reward model, and the export of a
policy trained on a 4-bit base."""

import gzip
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines.models import Placement
from pipelines.reward_model import load_reward_model, score
from store import import_file
from studio import service
from studio.runner import Runner

pytest.importorskip("bitsandbytes")

QLORA = dict(load_in_4bit=True, batch_size=2, max_length=128, lora_r=4, lora_alpha=8, save_every=10)


@pytest.fixture
def hh24(tmp_path, store, pairs_file):
    path = tmp_path / "hh24.jsonl"
    path.write_text("".join(gzip.open(pairs_file, "rt", encoding="utf-8").readlines()[:24]))
    import_file(store, path, "hh24")
    return store


def adapter_dtypes(folder: Path) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
        return {str(f.get_tensor(k).dtype) for k in f.keys()}


def test_the_methods_train_on_a_4bit_base_on_the_cpu_and_the_policy_exports(workspace, hh24, tiny_model):
    """bf16 compute, as on a user's card: TRL casts a QLoRA model's trainables to bf16; the studio
    keeps them (the score head included) in float32, and the reward model reloads in 4 bits with
    the scores it was evaluated with."""
    runner = Runner(hh24, workspace)
    rm = service.start_training(runner, "rm", "hh24", base=str(tiny_model), max_steps=2, eval_share=0.25,
                                dtype="bfloat16", **QLORA).run_id
    run = runner.wait(rm)
    assert run["status"] == "succeeded", run["message"]
    folder = Path(run["folder"])
    assert adapter_dtypes(folder / "model") == {"torch.float32"}
    scored = pq.read_table(folder / "held_out_scores.parquet").to_pylist()
    tokenizer, model = load_reward_model(folder / "model", Placement("cpu", "bfloat16"), load_in_4bit=True)
    assert type(model.base_model.model.model.layers[0].self_attn.q_proj.base_layer).__name__ == "Linear4bit"
    inputs = {r["pair_id"]: r for r in pq.read_table(folder / "inputs.parquet").to_pylist()}
    chosen = [inputs[r["pair_id"]] for r in scored]
    again = score(tokenizer, model, [json.loads(p["prompt"]) + json.loads(p["chosen"]) for p in chosen])
    assert again == pytest.approx([r["reward_chosen"] for r in scored], abs=2e-2)  # bf16 compute, batched differently

    policies = {}
    # DPO stands for the pair methods (KTO and ORPO load and prepare a 4-bit base through the same
    # code); PPO (the studio's own loop) and GRPO (TRL's online trainer) for the online ones.
    for method in ("dpo",):
        run_id = service.start_training(runner, method, "hh24", base=str(tiny_model), max_steps=2, eval_share=0.25,
                                        **QLORA).run_id
        run = runner.wait(run_id)
        assert run["status"] == "succeeded", (method, run["message"])
        assert adapter_dtypes(Path(run["folder"]) / "model") == {"torch.float32"}, method
        policies[method] = run_id
    for method, extra in (("ppo", {"mini_batch_size": 2}), ("grpo", {"num_generations": 2})):
        run_id = service.start_training(runner, method, prompts="hh24", reward_run=rm, base=str(tiny_model),
                                        max_steps=1, max_new_tokens=8, watch_prompts=0,
                                        **{**QLORA, "batch_size": 4}, **extra).run_id
        run = runner.wait(run_id)
        assert run["status"] == "succeeded", (method, run["message"])
        policies[method] = run_id

    evaluation = runner.wait(service.start_evaluation(runner, policies["dpo"], "hh24", rule="heuristic", limit=2,
                                                      max_new_tokens=8))
    assert evaluation["status"] == "succeeded", evaluation["message"]
    # The adapter trained on the 4-bit base merges into the full-precision base, and its GGUF's
    # logits are checked against transformers as for any policy.
    export = runner.wait(service.start_export(runner, run_id=policies["dpo"], quants=["f16"]))
    assert export["status"] == "succeeded", export["message"]
    report = json.loads((Path(export["folder"]) / "export.json").read_text())
    assert [f["quant"] for f in report["files"]] == ["f16"]
