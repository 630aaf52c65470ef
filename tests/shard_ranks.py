"""What `shard fsdp` does to a reward model, run on CPU ranks as far as a CPU allows.

Accelerate leaves its FSDP plugin aside on CPU ranks (it shards GPU ranks only: measured, the
Trainer then runs DDP), so the studio refuses `shard fsdp` on a CPU and the GPU smoke script runs the
real path. This script runs every piece below Accelerate's prepare on two CPU ranks (gloo): the
studio's settings turned into TrainingArguments and Accelerate's FSDP plugin, the plugin's own
wrap policy (one shard group per decoder layer), torch's FSDP2 `fully_shard` on the PEFT model with
its frozen base, LoRA and score head, one optimizer step of the pairwise loss on each rank's half of
a batch, the full state dict gathered for saving, and held-out scoring on every rank at once.

    accelerate launch --multi_gpu --num_processes 2 tests/shard_ranks.py BASE OUT.json

Rank 0 writes OUT.json; tests/test_multiprocess.py compares it with one unsharded process.
"""

import json
import sys
from pathlib import Path


def reward_model(base: str, config):
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForSequenceClassification

    from pipelines.training import lora_config

    torch.manual_seed(0)  # the same start on every rank and in the unsharded reference
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = 0
    return get_peft_model(model, lora_config(config, "SEQ_CLS", modules_to_save=["score"]))


def pairwise_step(model, chosen, rejected) -> None:
    import torch

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = -torch.nn.functional.logsigmoid(model(input_ids=chosen).logits - model(input_ids=rejected).logits).mean()
    loss.backward()
    optimizer.step()


def main(base: str, out: str) -> None:
    import torch
    from accelerate import PartialState
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import fully_shard
    from transformers import TrainingArguments

    from pipelines.models import Placement
    from pipelines.reward import RewardTrainConfig
    from pipelines.training import trainer_arguments
    from pipelines.watch import adapter_state

    state = PartialState(cpu=True)
    rank, ranks = state.process_index, state.num_processes
    config = RewardTrainConfig(base=base, shard="fsdp", num_processes=ranks, lora_r=4, lora_alpha=8,
                               lora_dropout=0.0, device="cpu")
    # The studio's settings as the Trainer gets them (placed on "cuda": the arguments a GPU run gets).
    arguments = trainer_arguments(config, Placement("cuda", "float32"), Path(out).parent, False)
    arguments.update(use_cpu=True, bf16=False, fp16=False)
    plugin = FullyShardedDataParallelPlugin(**TrainingArguments(**arguments).fsdp_plugin_args)

    torch.manual_seed(1)
    chosen, rejected = torch.randint(1, 100, (4, 12)), torch.randint(1, 100, (4, 12))
    held_out = torch.randint(1, 100, (3, 12))

    reference = reward_model(base, config)  # one process, the whole batch
    pairwise_step(reference, chosen, rejected)

    model = reward_model(base, config)
    wrap = fsdp2_prepare_auto_wrap_policy(plugin, model)
    groups = [name for name, module in model.named_modules() if wrap(module)]
    for name, module in model.named_modules():
        if name in groups:
            fully_shard(module, reshard_after_forward=plugin.reshard_after_forward)
    fully_shard(model, reshard_after_forward=plugin.reshard_after_forward)
    pairwise_step(model, chosen[rank::ranks], rejected[rank::ranks])

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    trained = {k: v for k, v in reference.state_dict().items() if "lora_" in k or "modules_to_save" in k}
    with torch.no_grad():
        sharded_scores = model(input_ids=held_out).logits.squeeze(-1).tolist()  # every rank at once
        reference_scores = reference(input_ids=held_out).logits.squeeze(-1).tolist()
    a_lora = next(p for n, p in model.named_parameters() if "lora_A" in n)
    # The watch's save of its best adapter (GRPO, RLOO) on a sharded model: gathered on every rank,
    # written by the main one; loaded back whole, it is the one-process step's adapter.
    saved = Path(out).parent / "adapter"
    gathered = adapter_state(model)
    if rank == 0:
        from peft import PeftModel
        from transformers import AutoModelForSequenceClassification

        model.save_pretrained(saved, state_dict=gathered)
        loaded = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(
            base, num_labels=1, dtype=torch.float32), saved).state_dict()
    if rank == 0:
        result = {
            "ranks": ranks,
            "plugin": {"fsdp_version": plugin.fsdp_version, "state_dict_type": str(plugin.state_dict_type),
                       "reshard_after_forward": plugin.reshard_after_forward},
            "shard_groups": groups,
            "trained_tensors": len(trained),
            "gathered_tensors": sum(1 for k in trained if k in full),
            "max_difference": max((full[k] - v).abs().max().item() for k, v in trained.items()),
            "saved_difference": max((loaded[k] - v).abs().max().item() for k, v in trained.items()),
            "moved": max((v - reward_model(base, config).state_dict()[k]).abs().max().item()
                         for k, v in trained.items()),
            "lora_a_rows": {"whole": a_lora.shape[0], "this_rank": a_lora.to_local().shape[0]},
            "scores": {"sharded": sharded_scores, "unsharded": reference_scores},
        }
        with open(out, "w") as f:
            json.dump(result, f)
    state.wait_for_everyone()


if __name__ == "__main__":
    main(*sys.argv[1:3])
