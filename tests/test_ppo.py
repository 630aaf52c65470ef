"""The studio's own PPO: on a reward that is a known function of the answer's tokens, a few
iterations raise the policy's expected reward; cancel and resume continue from the checkpoint."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipelines.ppo import PPOTrainConfig, gae, train
from pipelines.runlog import RunLog

from helpers import read_events

PROMPTS = [[{"role": "user", "content": f"Tell me about {w}."}]
           for w in ("cats", "dogs", "rain", "the sea", "music", "bread", "stars", "trees")]


@pytest.fixture
def token_reward(peaked_model):
    """Reward: the mean over an answer's tokens of a fixed score per token (the projection of the
    token's embedding on a random direction, standardised), so a policy can raise it by moving
    one direction of its hidden state. Returns (reward_fn, exact expected first-token reward)."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(peaked_model)
    embeddings = load_file(peaked_model / "model.safetensors")["model.embed_tokens.weight"]
    token_score = embeddings @ torch.randn(embeddings.shape[1], generator=torch.Generator().manual_seed(0))
    token_score = (token_score - token_score.mean()) / token_score.std()

    def reward_fn(prompts, answers):
        return [float(token_score[tokenizer(a, add_special_tokens=False)["input_ids"]].mean()) if a else 0.0
                for a in answers]

    def expected_first_token_reward(adapter=None):
        from peft import PeftModel

        model = AutoModelForCausalLM.from_pretrained(peaked_model)
        if adapter is not None:
            model = PeftModel.from_pretrained(model, adapter)
        total = 0.0
        with torch.no_grad():
            for prompt in PROMPTS:
                ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt",
                                                    return_dict=True)
                total += float((torch.softmax(model(**ids).logits[0, -1], -1) * token_score).sum())
        return total / len(PROMPTS)

    return reward_fn, expected_first_token_reward


def run_dir_with_prompts(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{"prompt": json.dumps(p)} for p in PROMPTS]), run_dir / "inputs.parquet")
    return run_dir


def config(peaked_model, **overrides):
    settings = dict(base=str(peaked_model), max_steps=20, batch_size=8, mini_batch_size=4, max_new_tokens=4,
                    learning_rate=3e-3, lora_r=8, lora_alpha=16, kl_coef=0.0, missing_eos_penalty=0.0, save_every=5,
                    watch_prompts=0)  # no watch unless a test asks: it would hold out prompts and call the reward
    return PPOTrainConfig(**{**settings, **overrides})


def test_gae_matches_a_hand_computed_example():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.2, 0.4, 9.0]])  # the last position is past the answer's end
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    d2 = 1.0 - 0.4                      # last answer token: no value after it
    d1 = 0.0 + 0.4 - 0.2
    d0 = 0.0 + 0.2 - 0.5
    expected = [d0 + 0.5 * d1 + 0.25 * d2, d1 + 0.5 * d2, d2, 0.0]
    assert advantages[0].tolist() == pytest.approx(expected)
    assert returns[0, :3].tolist() == pytest.approx([a + v for a, v in zip(expected, [0.5, 0.2, 0.4])])


def test_ppo_raises_a_known_reward(tmp_path, peaked_model, token_reward):
    reward_fn, expected = token_reward
    run_dir = run_dir_with_prompts(tmp_path)
    before = expected()
    train(config(peaked_model), RunLog(run_dir), reward_fn=reward_fn)
    events = read_events(run_dir)
    assert events[-1]["status"] == "succeeded"
    logged = [e["metrics"] for e in events if e.get("metrics", {}).get("reward") is not None]
    assert len(logged) == 20
    assert {"reward", "kl", "response_length", "entropy", "value_loss", "clip_fraction"} <= set(logged[0])
    after = expected(run_dir / "model")
    assert after > before + 0.3, (before, after)


def test_ppo_with_a_kl_penalty_stays_closer_to_the_reference(tmp_path, peaked_model, token_reward):
    reward_fn, _ = token_reward
    kls = {}
    for kl_coef in (0.0, 1.0):
        run_dir = run_dir_with_prompts(tmp_path / f"kl{kl_coef}")
        train(config(peaked_model, kl_coef=kl_coef, max_steps=10), RunLog(run_dir), reward_fn=reward_fn)
        events = read_events(run_dir)
        kls[kl_coef] = sum(e["metrics"]["kl"] for e in events[-4:-1] if "kl" in e.get("metrics", {}))
    assert kls[1.0] < kls[0.0]


def test_ppo_cancels_with_a_checkpoint_and_resumes_to_the_same_end(tmp_path, peaked_model, token_reward):
    reward_fn, _ = token_reward
    straight = run_dir_with_prompts(tmp_path / "straight")
    train(config(peaked_model, max_steps=6, save_every=3), RunLog(straight), reward_fn=reward_fn)

    interrupted = run_dir_with_prompts(tmp_path / "interrupted")
    log = RunLog(interrupted)
    calls = []

    def cancel_after_four(prompts, answers):
        calls.append(1)
        if len(calls) == 4:
            log.cancel_requested = True
        return reward_fn(prompts, answers)

    train(config(peaked_model, max_steps=6, save_every=3), log, reward_fn=cancel_after_four)
    assert json.loads((interrupted / "events.jsonl").read_text().splitlines()[-1])["status"] == "cancelled"
    assert (interrupted / "checkpoints" / "step-4").is_dir()
    train(config(peaked_model, max_steps=6, save_every=3), RunLog(interrupted), reward_fn=reward_fn)
    last = json.loads((interrupted / "events.jsonl").read_text().splitlines()[-1])
    assert last["status"] == "succeeded" and last["step"] == 6

    from safetensors.torch import load_file

    a = load_file(straight / "model" / "adapter_model.safetensors")
    b = load_file(interrupted / "model" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)  # the same 6 steps, same result


def test_the_watch_sees_a_judge_fall_while_the_proxy_rises_and_keeps_the_judges_best(tmp_path, peaked_model,
                                                                                      token_reward):
    """The proxy is the token reward PPO raises; the judge is its opposite, so every gain by the
    proxy is a loss by the judge: the gamed case, made certain."""
    reward_fn, _ = token_reward

    def judge_fn(prompts, answers):
        return [-r for r in reward_fn(prompts, answers)]

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    prompts = PROMPTS + [[{"role": "user", "content": f"Say something about {w}."}]
                         for w in ("clouds", "roads", "maps", "tea", "ice", "wood", "glass", "sand")]
    pq.write_table(pa.Table.from_pylist([{"prompt": json.dumps(p)} for p in prompts]), run_dir / "inputs.parquet")
    train(config(peaked_model, max_steps=12, watch_prompts=4, watch_every=4), RunLog(run_dir), reward_fn=reward_fn,
          judge_fn=judge_fn)
    events = read_events(run_dir)
    assert events[0]["message"] == "4 prompts held out for the over-optimisation watch, checked every 4 steps"
    checks = [e for e in events if "watch/proxy_win" in e.get("metrics", {})]
    assert [e["step"] for e in checks] == [4, 8, 12]
    for e in checks:
        m = e["metrics"]
        assert m["watch/judge_win"] == pytest.approx(1 - m["watch/proxy_win"])  # opposite scores, no ties
        assert "watch/kl" in m
    wins = [e["metrics"]["watch/proxy_win"] for e in checks]
    assert wins[-1] > wins[0], wins  # PPO raises the proxy on prompts it never trained on
    assert any("the proxy may be being gamed since step" in (e.get("message") or "") for e in events)
    # The run's output is the adapter of the judge's best check (the first, here), the last one kept aside.
    best_step = checks[[e["metrics"]["watch/judge_win"] for e in checks].index(max(e["metrics"]["watch/judge_win"]
                                                                                  for e in checks))]["step"]
    assert best_step < 12
    assert f"kept the adapter of step {best_step}, the judge's best" in events[-1]["message"]
    model = (run_dir / "model" / "adapter_model.safetensors").read_bytes()
    assert model == (run_dir / "best" / "adapter_model.safetensors").read_bytes()
    assert model != (run_dir / "last" / "adapter_model.safetensors").read_bytes()


def test_gradient_checkpointing_saves_memory_not_results(tmp_path, peaked_model, token_reward):
    """PPO with gradient checkpointing (training mode for it, every dropout off) trains the very
    adapter it trains without."""
    from safetensors.torch import load_file

    reward_fn, _ = token_reward
    adapters = []
    for checkpointing in (False, True):
        run_dir = run_dir_with_prompts(tmp_path / str(checkpointing))
        train(config(peaked_model, max_steps=2, gradient_checkpointing=checkpointing, lora_dropout=0.1),
              RunLog(run_dir), reward_fn=reward_fn)
        adapters.append(load_file(run_dir / "model" / "adapter_model.safetensors"))
    assert all(torch.allclose(adapters[0][k], adapters[1][k], atol=1e-6) for k in adapters[0])
    trained = [k for k in adapters[0] if "lora_B" in k]  # B starts at zero: it moved
    assert any(not torch.allclose(adapters[0][k], torch.zeros_like(adapters[0][k])) for k in trained)
