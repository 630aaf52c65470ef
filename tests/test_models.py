"""Where models come from, and the device and precision chosen for them."""

import pytest

from pipelines.models import DEFAULT_MODEL, ModelError, Placement, choose_placement, resolve_model


def test_default_model_is_converted_once_and_cached(models_dir, default_model_path):
    weights = default_model_path / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert resolve_model(DEFAULT_MODEL, models_dir) == str(default_model_path)
    assert weights.stat().st_mtime_ns == stamp  # not converted again
    assert "4-bit" in (default_model_path / "SOURCE.txt").read_text()


def test_default_model_loads_with_its_chat_template(default_model_path):
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model_path)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    config = AutoConfig.from_pretrained(default_model_path)
    assert (config.model_type, config.num_hidden_layers, config.hidden_size) == ("llama", 30, 576)


def test_model_names(tmp_path, tiny_model):
    assert resolve_model(str(tiny_model), tmp_path) == str(tiny_model)
    assert resolve_model("HuggingFaceTB/SmolLM2-360M-Instruct", tmp_path) == "HuggingFaceTB/SmolLM2-360M-Instruct"
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(str(tmp_path), tmp_path)
    with pytest.raises(ModelError, match="not a hub id"):
        resolve_model("no-such-model", tmp_path)


def test_cpu_gets_float32_and_cuda_is_checked():
    import torch

    if torch.cuda.is_available():
        assert choose_placement().device == "cuda"
    else:
        assert choose_placement() == Placement("cpu", "float32")
        with pytest.raises(ModelError, match="no CUDA device"):
            choose_placement("cuda")
    assert choose_placement("cpu", "bfloat16") == Placement("cpu", "bfloat16")


def test_every_end_id_of_the_model_ends_an_answer():
    """Llama 3 ends a turn with <|eot_id|> (128009) as well as <|end_of_text|> (128001): both count,
    with the tokenizer's own, once each; an answer without any was cut at the limit."""
    from types import SimpleNamespace

    from pipelines.judges import rule_answers
    from pipelines.models import end_ids, first_end

    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=[128001, 128009]))
    tokenizer = SimpleNamespace(eos_token_id=128009)
    ends = end_ids(model, tokenizer)
    assert ends == [128001, 128009]
    assert end_ids(
        SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=2)), SimpleNamespace(eos_token_id=2)
    ) == [2]
    assert first_end([5, 6, 128009, 7], ends) == 2 and first_end([5, 6, 7], ends) is None
    answers = rule_answers(["a", "b"], [[5, 128009], [5, 6]], ends)
    assert [a["finish"] for a in answers] == ["stop", "length"]


def test_every_rank_loads_its_models_on_its_own_gpu_and_a_4bit_reward_model_like_its_policy(monkeypatch):
    """What `from_pretrained` is given: the rank's GPU (not GPU 0 for all), and for a 4-bit run the
    same NF4 quantisation for the reward model as for the policy (a 15 GB reward model beside a
    4-bit 7B policy fits no 24 GB card)."""
    import torch

    from pipelines.models import Placement, load_kwargs
    from pipelines.training import TrainSettings, model_kwargs

    monkeypatch.setenv("LOCAL_RANK", "1")
    gpu = Placement("cuda", "bfloat16")
    plain = load_kwargs(gpu)
    assert plain == {"dtype": torch.bfloat16, "device_map": {"": "cuda:1"}}
    four_bit = load_kwargs(gpu, load_in_4bit=True)
    assert four_bit["device_map"] == {"": "cuda:1"}
    q = four_bit["quantization_config"]
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_compute_dtype == torch.bfloat16
    policy = model_kwargs(TrainSettings(load_in_4bit=True), gpu)
    assert policy["device_map"] == four_bit["device_map"] and policy["quantization_config"].load_in_4bit
    assert "device_map" not in model_kwargs(TrainSettings(), gpu)  # Accelerate places a plain base itself
    # Sharded, FSDP places the shards and no device_map is given: bitsandbytes quantises onto the
    # current GPU, so each rank must have made its own GPU current first (GPU 0 for all otherwise).
    current = []
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    sharded = model_kwargs(TrainSettings(load_in_4bit=True, shard="fsdp", num_processes=2), gpu)
    assert "device_map" not in sharded and sharded["quantization_config"].bnb_4bit_quant_storage == torch.bfloat16
    assert current == [1]
