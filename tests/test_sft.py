"""Supervised fine-tuning: the loop's first stage, on the preferred answers of pairs, with the loss
on the assistant's tokens (every turn), packing, and the studio's runner, CLI and store."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines.models import load_tokenizer
from pipelines.sft import ConversationError, check_conversation, tokenize_conversation
from store import import_file
from store.labelling import add_rule_labels
from studio import service
from studio.methods import METHODS
from studio.runner import Runner

from helpers import arithmetic_pairs

CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
                {"role": "assistant", "content": "Hello, friend."}, {"role": "user", "content": "Name a colour."},
                {"role": "assistant", "content": "Blue."}]


def test_the_loss_falls_on_every_assistant_turn_and_its_end_and_nothing_else(tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    tokens = tokenize_conversation(tokenizer, CONVERSATION)
    ids, mask = tokens["input_ids"], tokens["completion_mask"]
    assert ids == tokenizer.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True)["input_ids"]
    trained = tokenizer.decode([t for t, m in zip(ids, mask) if m])
    # SmolLM2's template ends a turn with <|im_end|> and a newline: both are trained, so the model learns to stop.
    assert trained == "Hello, friend.<|im_end|>\nBlue.<|im_end|>\n"
    # An answer cut by its length limit is trained without its end: as unfinished.
    cut = tokenize_conversation(tokenizer, CONVERSATION, cut=True)
    assert tokenizer.decode([t for t, m in zip(cut["input_ids"], cut["completion_mask"]) if m]) == \
        "Hello, friend.<|im_end|>\nBlue."


def test_a_conversation_sft_cannot_learn_from_is_named_with_its_reason():
    with pytest.raises(ConversationError, match="conversation 3: the conversation ends on a user turn"):
        check_conversation(CONVERSATION[:4], "conversation 3")
    with pytest.raises(ConversationError, match="roles out of order \\(user, user, assistant\\)"):
        check_conversation([{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                            {"role": "assistant", "content": "c"}], "x")
    with pytest.raises(ConversationError, match="the last answer is empty"):
        check_conversation([{"role": "user", "content": "a"}, {"role": "assistant", "content": " "}], "x")
    check_conversation(CONVERSATION, "fine")


def test_sft_trains_on_the_preferred_answers_as_a_job_and_makes_a_policy(workspace, store, tmp_path, tiny_model):
    """A person's label outranks the file's verdict; ties and both-bad pairs are left out, and
    the start says how many."""
    import_file(store, arithmetic_pairs(tmp_path, n=16), "sums")
    pairs = [r["pair_id"] for r in store.query("SELECT pair_id FROM dataset_pairs ORDER BY pair_id")]
    add_rule_labels(store, "alice", [(pairs[0], "second"), (pairs[1], "tie"), (pairs[2], "both-bad")])
    runner = Runner(store, workspace)
    run_id = service.start_training(runner, "sft", "sums", base=str(tiny_model), max_steps=3, batch_size=4,
                                    max_length=128, lora_r=4, lora_alpha=8, eval_share=0.25).run_id
    run = runner.wait(run_id)
    assert run["status"] == "succeeded", run["message"]
    assert run["message"].startswith("SFT trained (3 steps); eval loss")
    inputs = pq.read_table(Path(run["folder"]) / "inputs.parquet").to_pylist()
    assert len(inputs) == 14  # the tie and the both-bad pair left out
    overruled = next(r for r in inputs if r["pair_id"] == pairs[0])
    assert "rather talk about something else" in json.loads(overruled["chosen"])[0]["content"]  # alice's pick
    assert store.query("SELECT name, purpose FROM models") == [{"name": f"sft-run{run_id}", "purpose": "policy"}]
    logged = {r["name"] for r in store.query("SELECT DISTINCT name FROM run_metrics WHERE run_id = ?", [run_id])}
    assert {"loss", "eval_loss", "mean_token_accuracy"} <= logged
    assert "sft" in METHODS and METHODS["sft"].makes == "policy"


def test_packing_fills_rows_with_several_conversations_and_trains_the_same_tokens(tmp_path, tiny_model, models_dir):
    import pyarrow as pa

    from pipelines.sft import SFTTrainConfig, make_trainer, read_conversations

    rows = [{"pair_id": f"p{i}", "prompt": json.dumps([{"role": "user", "content": f"What is {i} plus {i}?"}]),
             "chosen": json.dumps([{"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]),
             "rejected": json.dumps([{"role": "assistant", "content": "No."}])} for i in range(12)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "inputs.parquet")
    records = read_conversations(tmp_path / "inputs.parquet")
    common = dict(base=str(tiny_model), models_dir=str(models_dir), device="cpu", max_length=128, lora_r=4,
                  lora_alpha=8, eval_share=0.0, max_steps=1)
    plain, _ = make_trainer(SFTTrainConfig(**common), tmp_path / "a", records, [])
    packed, _ = make_trainer(SFTTrainConfig(**common, packing=True), tmp_path / "b", records, [])
    assert len(plain.train_dataset) == 12 and len(packed.train_dataset) < 12

    def trained(dataset):
        return sorted(t for row in dataset for t in row["labels"] if t != -100)

    assert trained(packed.train_dataset) == trained(plain.train_dataset)


def test_a_packed_row_scores_each_conversation_as_if_it_were_alone(tmp_path, tiny_model, models_dir):
    """Padding-free packing is exact: the position ids restart at each conversation and the
    attention stays inside it (a cache made for generation would turn that off: the studio trains
    without one)."""
    import pyarrow as pa
    import torch

    from pipelines.sft import SFTTrainConfig, make_trainer, read_conversations

    rows = [{"pair_id": f"p{i}", "prompt": json.dumps([{"role": "user", "content": f"Say {i} twice."}]),
             "chosen": json.dumps([{"role": "assistant", "content": f"{i} and {i}."}]),
             "rejected": json.dumps([{"role": "assistant", "content": "No."}])} for i in range(4)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "inputs.parquet")
    config = SFTTrainConfig(base=str(tiny_model), models_dir=str(models_dir), device="cpu", max_length=128,
                            lora_r=4, lora_alpha=8, lora_dropout=0.0, eval_share=0.0, max_steps=1, packing=True,
                            batch_size=1)
    trainer, _ = make_trainer(config, tmp_path, read_conversations(tmp_path / "inputs.parquet"), [])
    batch = next(iter(trainer.get_train_dataloader()))
    positions = batch["position_ids"][0]
    starts = [i for i, p in enumerate(positions.tolist()) if p == 0]
    assert len(starts) >= 2 and "attention_mask" not in batch  # padding-free: several conversations, no padding
    model = trainer.model.train()
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        second = batch["input_ids"][:, starts[1]:starts[2] if len(starts) > 2 else None]
        alone = model(input_ids=second).logits[0]
    assert torch.allclose(packed[starts[1]:starts[1] + alone.shape[0]], alone, atol=1e-5)


def test_dpo_from_an_sft_model_has_the_sft_model_as_its_reference(workspace, store, tmp_path, tiny_model):
    """`--base sft-runN`: the SFT adapter is merged into its base once, and DPO trains on that and
    measures its reference log-probs there, not on the original base."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from pipelines.dpo import DPOTrainConfig, make_trainer
    from pipelines.training import read_pairs
    from studio.runner import RunError

    import_file(store, arithmetic_pairs(tmp_path, n=8), "sums")
    runner = Runner(store, workspace)
    small = dict(max_length=128, lora_r=4, lora_alpha=8, eval_share=0.0, batch_size=4)
    sft = service.start_training(runner, "sft", "sums", base=str(tiny_model), max_steps=3, learning_rate=5e-2,
                                 **small).run_id
    assert runner.wait(sft)["status"] == "succeeded"
    dpo = service.start_training(runner, "dpo", "sums", base=f"sft-run{sft}", max_steps=1, **small).run_id
    run = runner.wait(dpo)
    assert run["status"] == "succeeded", run["message"]
    sft_folder = workspace.runs_dir / str(sft) / "model"
    assert json.loads(run["config"])["base"] == str(sft_folder)
    assert store.scalar("SELECT base FROM models WHERE run_id = ?", [dpo]) == str(sft_folder)  # the lineage

    # The reference TRL computes for the DPO run: the SFT model's log-probs, not the base's.
    config = DPOTrainConfig(base=str(sft_folder), models_dir=str(workspace.models_dir), device="cpu", **small)
    trainer, _ = make_trainer(config, tmp_path / "dpo", read_pairs(Path(run["folder"]) / "inputs.parquet"), [])
    batch = next(iter(trainer.get_train_dataloader()))
    reference = torch.cat(trainer.compute_ref_log_probs(trainer.model, batch))

    def log_probs(model):
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        per_token = torch.log_softmax(logits.float(), -1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
        return (per_token * batch["completion_mask"][:, 1:]).sum(-1)

    base = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    assert not torch.allclose(reference, log_probs(base), atol=1e-2)
    sft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), str(sft_folder)).eval()
    assert torch.allclose(reference, log_probs(sft_model), atol=1e-3)

    # Judged against the SFT model it started from: that is its base, and --against says so.
    with pytest.raises(RunError, match=f"trained from 'sft-run{sft}': that is its base already"):
        service.start_evaluation(runner, dpo, "sums", rule="heuristic", against=f"sft-run{sft}")

    # What cannot be a base is said before a run exists.
    with store.transaction() as cur:
        cur.execute("INSERT INTO models (name, kind, path, purpose) VALUES ('rm-run50', 'adapter', '/x', 'reward')")
    with pytest.raises(RunError, match="'rm-run50' is a reward model"):
        service.start_training(runner, "dpo", "sums", base="rm-run50", max_steps=1, **small)
    with pytest.raises(RunError, match="no trained model named 'sft-run99' \\(there is no run 99\\)"):
        service.start_training(runner, "dpo", "sums", base="sft-run99", max_steps=1, **small)


def test_dpo_with_an_sft_term_adds_the_chosen_answers_language_model_loss(workspace, store, tmp_path, tiny_model):
    """At the first step the policy is its reference, so the DPO loss is log 2; the SFT term adds
    its weight times the chosen answers' mean token loss (about log of the vocabulary, 10.8, for
    the random tiny model)."""
    import math

    import_file(store, arithmetic_pairs(tmp_path, n=8), "sums")
    runner = Runner(store, workspace)
    first_loss = {}
    for weight in (0.0, 0.5):
        run_id = service.start_training(runner, "dpo", "sums", base=str(tiny_model), max_steps=1, batch_size=4,
                                        max_length=128, lora_r=4, lora_alpha=8, eval_share=0.0,
                                        sft_weight=weight).run_id
        assert runner.wait(run_id)["status"] == "succeeded"
        first_loss[weight] = store.scalar("SELECT value FROM run_metrics WHERE run_id = ? AND name = 'loss' AND "
                                          "step = 1", [run_id])
        logged = {r["name"] for r in store.query("SELECT DISTINCT name FROM run_metrics WHERE run_id = ?", [run_id])}
        assert "logps/chosen" in logged
    assert first_loss[0.0] == pytest.approx(math.log(2), abs=1e-3)
    assert 0.5 * 9.5 < first_loss[0.5] - first_loss[0.0] < 0.5 * 12

    # The control: one policy judged against another of the same base (`evaluate --against`), not its
    # base. The other side's answers are that policy's own, sampled with the evaluation's seed.
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoModelForCausalLM

    from pipelines.evaluate import answer
    from pipelines.models import attach_adapter, load_tokenizer
    from studio.runner import RunError

    plain, with_term = run_id - 1, run_id
    run = runner.wait(service.start_evaluation(runner, with_term, "sums", rule="heuristic", limit=3, max_new_tokens=8,
                                               refusal_limit=0, against=f"dpo-run{plain}"))
    assert run["status"] == "succeeded", run["message"]
    lines = run["message"].splitlines()
    assert lines[0] == f"against dpo-run{plain}, not the base: every 'base' here is dpo-run{plain}"
    assert any(line.startswith(f"KL from dpo-run{plain} ") for line in lines)
    answers = pq.read_table(Path(run["folder"]) / "answers.parquet").to_pylist()
    other = attach_adapter(AutoModelForCausalLM.from_pretrained(tiny_model), workspace.runs_dir / str(plain) / "model")
    torch.manual_seed(0)
    texts, _ = answer(other.eval(), load_tokenizer(tiny_model), [json.loads(a["prompt"]) for a in answers], "cpu",
                      max_new_tokens=8, temperature=0.7, batch_size=8)
    assert texts == [a["base"] for a in answers]
    with pytest.raises(RunError, match="is the policy itself"):
        service.start_evaluation(runner, with_term, "sums", rule="heuristic", against=f"dpo-run{with_term}")
    with pytest.raises(RunError, match="'nope' is not a trained policy"):
        service.start_evaluation(runner, with_term, "sums", rule="heuristic", against="nope")


def write_demonstrations(path: Path) -> Path:
    rows = [{"prompt": f"What is {i} times 2?", "completion": f"{i} times 2 is {2 * i}."} for i in range(6)]
    rows += [{"messages": [{"role": "system", "content": "Answer in one line."},
                           {"role": "user", "content": f"Spell {w}."}, {"role": "assistant", "content": w.upper()},
                           {"role": "user", "content": "Backwards?"}, {"role": "assistant", "content": w[::-1]}]}
             for w in ("cat", "sun", "map", "tea")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_demonstrations_import_with_their_answers_and_sft_learns_every_assistant_turn(workspace, store, tmp_path,
                                                                                    tiny_model):
    report = import_file(store, write_demonstrations(tmp_path / "demos.jsonl"), "demos")
    assert (report.format, report.prompts_only) == ("demonstrations", 10)
    assert "imported 10 demonstrations into dataset 'demos'" in report.summary()
    runner = Runner(store, workspace)
    run_id = service.start_training(runner, "sft", "demos", base=str(tiny_model), max_steps=2, batch_size=4,
                                    max_length=128, lora_r=4, lora_alpha=8, eval_share=0.2).run_id
    run = runner.wait(run_id)
    assert run["status"] == "succeeded", run["message"]
    inputs = pq.read_table(Path(run["folder"]) / "inputs.parquet").to_pylist()
    assert len(inputs) == 10 and {"prompt_id", "prompt", "completion"} <= set(inputs[0])
    spelled = next(json.loads(r["prompt"]) + json.loads(r["completion"]) for r in inputs if "cat" in r["prompt"])
    assert [m["role"] for m in spelled] == ["system", "user", "assistant", "user", "assistant"]
    assert "training on 8 conversations, evaluating on 2" in (Path(run["folder"]) / "events.jsonl").read_text()


@pytest.mark.parametrize("row, reason", [
    ({"prompt": "Hi", "completion": " "}, "empty completion"),
    ({"prompt": "Hi", "completion": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]},
     "ends on a user turn"),
    ({"prompt": "Hi", "completion": [{"role": "user", "content": "a"}]}, "roles out of order"),
    ({"messages": [{"role": "user", "content": "Hi"}]}, "ends on a user turn"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "user", "content": "Hi?"},
                   {"role": "assistant", "content": "Yes"}]}, "roles out of order"),
    ({"instruction": "Say hi", "output": ""}, "empty output"),
])
def test_a_bad_demonstration_is_named_by_file_and_line_and_nothing_is_written(store, tmp_path, row, reason):
    from store import ImportFailed

    path = tmp_path / "demos.jsonl"
    path.write_text(json.dumps({"prompt": "Fine", "completion": "Yes."}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(ImportFailed) as failed:
        import_file(store, path, "demos", fmt="demonstrations")
    assert [(e.line, reason in e.reason) for e in failed.value.report.errors] == [(2, True)]
    assert store.stats()["prompts"] == 0


def test_sft_on_a_dataset_with_neither_pairs_nor_demonstrations_is_refused_in_a_sentence(workspace, store, tmp_path):
    from studio.runner import RunError

    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"prompt": "Hello?"}) + "\n")
    import_file(store, path, "asks")
    with pytest.raises(RunError, match="dataset 'asks' has neither pairs with a preference .* nor demonstrations"):
        service.start_training(Runner(store, workspace), "sft", "asks")
    assert store.stats()["runs"] == 0


def test_demonstrations_export_for_trl_as_prompt_completion_records(store, tmp_path):
    from store import export_pairs

    import_file(store, write_demonstrations(tmp_path / "demos.jsonl"), "demos")
    report = export_pairs(store, tmp_path / "out.jsonl", "demos", fmt="trl")
    assert report.summary().startswith("wrote 10 demonstrations to")
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert rows[0] == {"prompt": "What is 0 times 2?", "completion": "0 times 2 is 0."}  # plain text: one turn each
    assert [m["role"] for m in rows[-1]["prompt"]] == ["system", "user", "assistant", "user"]
    assert rows[-1]["completion"] == [{"role": "assistant", "content": "aet"}]


@pytest.fixture
def templateless_model(tmp_path, tiny_model) -> Path:
    """The tiny model as a pretrained base: its tokenizer has no chat template."""
    import shutil

    folder = tmp_path / "tiny-base"
    shutil.copytree(tiny_model, folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def test_a_base_without_a_chat_template_becomes_a_chat_model_by_sft_and_goes_on_to_dpo_gguf_and_llama_cpp(
        workspace, store, tmp_path, templateless_model):
    """Llama 3's format on a tokenizer that lacks its tokens: they are added (the embeddings grow,
    the new rows are trained), the template is saved with the model, and from then on it is a chat
    model: DPO starts from it, the export merges both, and llama.cpp chats in the template given."""
    from transformers import AutoTokenizer

    from pipelines.chat import load_llama
    from studio.runner import RunError

    import_file(store, arithmetic_pairs(tmp_path, n=8), "sums")
    runner = Runner(store, workspace)
    small = dict(max_length=128, lora_r=4, lora_alpha=8, eval_share=0.0, batch_size=4)
    # Other methods refuse such a base, and name the next step.
    with pytest.raises(RunError, match="has no chat template .* train sft --chat-format chatml"):
        service.start_training(runner, "dpo", "sums", base=str(templateless_model), max_steps=1, **small)
    with pytest.raises(RunError, match="has no chat template"):  # SFT too, without a format to give it
        service.start_training(runner, "sft", "sums", base=str(templateless_model), max_steps=1, **small)
    sft = service.start_training(runner, "sft", "sums", base=str(templateless_model), chat_format="llama3",
                                 max_steps=2, learning_rate=1e-2, **small).run_id
    run = runner.wait(sft)
    assert run["status"] == "succeeded", run["message"]
    saved = AutoTokenizer.from_pretrained(workspace.runs_dir / str(sft) / "model")
    assert "<|start_header_id|>" in saved.chat_template and saved.eos_token == "<|eot_id|>"
    assert len(saved) == len(AutoTokenizer.from_pretrained(templateless_model)) + 3
    # The new tokens' rows were trained: they moved from where growing the embeddings put them.
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, set_seed

    from pipelines.chat_formats import NEW_TOKENS, give_chat_format
    from pipelines.models import load_tokenizer

    rows = load_file(str(workspace.runs_dir / str(sft) / "model" / NEW_TOKENS))
    set_seed(0)  # as the run did before growing them
    tokenizer, fresh = load_tokenizer(templateless_model), AutoModelForCausalLM.from_pretrained(templateless_model)
    added = give_chat_format(tokenizer, fresh, "llama3")
    assert rows["ids"].tolist() == added and len(added) == 3
    assert (rows["input"] - fresh.get_input_embeddings().weight[added].detach()).abs().max() > 1e-3

    dpo = service.start_training(runner, "dpo", "sums", base=f"sft-run{sft}", max_steps=1, **small).run_id
    assert runner.wait(dpo)["status"] == "succeeded"
    export = runner.wait(service.start_export(runner, run_id=dpo, quants=["f16"]))
    assert export["status"] == "succeeded", export["message"]
    report = json.loads((Path(export["folder"]) / "export.json").read_text())
    gguf = report["files"][0]
    assert gguf["tokens_agree"] and gguf["argmax_agrees"]
    modelfile = Path(gguf["modelfile"]).read_text()
    assert "<|start_header_id|>" in modelfile and 'PARAMETER stop "<|eot_id|>"' in modelfile
    llm = load_llama(gguf["path"], n_ctx=256, verbose=False)
    prompt = llm.tokenizer().detokenize(llm.tokenize(b"x"))  # the model loads
    assert prompt is not None
    reply = llm.create_chat_completion(messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert reply["choices"][0]["finish_reason"] in ("stop", "length")
    assert "start_header_id" in (llm.metadata.get("tokenizer.chat_template") or "")
