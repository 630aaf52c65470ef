"""Tiny random models of each family a user brings, built without a download.

Each is a real transformers class of that family (2 layers, hidden 64) with a tokenizer made from
the default model's (a byte-level BPE) plus the family's special tokens, its BOS, end and pad
tokens as the family sets them, several end ids in `generation_config` where the family has them,
and a chat template written here that produces the family's own format:

- llama3: <|begin_of_text|> in the template *and* added by the tokenizer (BOS twice unless
  tokenised with add_special_tokens=False); a turn ends in <|eot_id|>, the text in <|end_of_text|>;
  no pad token; untied output embeddings.
- qwen2: ChatML with a default system prompt; <|im_end|> ends a turn, pad is <|endoftext|>; an
  embedding larger than the tokenizer (padded to a multiple of 64, as Qwen's are).
- qwen3: ChatML whose generation prompt ends in an empty <think></think> block.
- gemma2 / gemma3: no system role (a system message is folded into the first user turn), the
  assistant is called "model", <bos> in the template and added by the tokenizer; logit
  soft-capping (Gemma-2) and <end_of_turn> as the turn's end beside <eos>.
- mistral: [INST] ... [/INST], the system message folded into the first user turn, <s> twice.
- phi3: <|user|> / <|assistant|> / <|end|>, whose tokenizer's eos (<|endoftext|>) is not the
  turn's end: only generation_config says <|end|> ends an answer.
- qwen2moe: a mixture of experts (4 experts, 2 a token, a shared expert) with ChatML.

Models are cached beside the tiny model (`models_dir/family-<name>`), so the matrix stays fast.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from helpers import exclusively

ASSETS = Path(__file__).resolve().parents[1] / "assets"
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
CHATML_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# Qwen3 without thinking: an empty think block opens every answer, the last one's included.
QWEN3_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' %}"
    "<think>\n\n</think>\n\n{% endif %}{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n\n</think>\n\n{% endif %}")
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% set system = '' %}{% if messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] + '\n\n' %}{% set messages = messages[1:] %}{% endif %}"
    "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('turns must alternate user/assistant') }}{% endif %}"
    "<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n"
    "{{ (system if loop.first else '') + m['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% set system = '' %}{% if messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] + '\n\n' %}{% set messages = messages[1:] %}{% endif %}"
    "{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ (system if loop.first else '') + m['content'] }}"
    " [/INST]{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}")
PHI3_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% else %}{{ eos_token }}{% endif %}")


@dataclass(frozen=True)
class Family:
    name: str
    model_class: str                 # a transformers class name
    config_class: str
    template: str
    special: tuple[str, ...]         # tokens added to the tokenizer, in order
    bos: str | None
    eos: str                         # the tokenizer's eos
    pad: str | None                  # None: the family ships no pad token
    ends: tuple[str, ...]            # generation_config's eos ids, as tokens
    adds_bos: bool = False           # the tokenizer itself prepends BOS
    turn_end: str = ""               # what ends an assistant turn in the template (the Modelfile's stop)
    config: dict = field(default_factory=dict)
    pad_vocab_to: int = 1            # the embedding rounded up to a multiple of this
    # A SentencePiece tokenizer (tokenizer.model) trained here, as the family ships one: its
    # transformers class and the trainer's settings (special pieces and their ids).
    sentencepiece: dict | None = None

    @property
    def folder_name(self) -> str:
        return f"family-{self.name}"


# Raised whenever a family's build changes, so that a cached model of an older build is built again.
BUILD = 2
COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=2048)

FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("llama3", "LlamaForCausalLM", "LlamaConfig", LLAMA3_TEMPLATE,
           ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
           bos="<|begin_of_text|>", eos="<|eot_id|>", pad=None, ends=("<|end_of_text|>", "<|eot_id|>"),
           adds_bos=True, turn_end="<|eot_id|>", config=dict(tie_word_embeddings=False, rope_theta=500000.0)),
    Family("qwen2", "Qwen2ForCausalLM", "Qwen2Config", CHATML_TEMPLATE, (), bos=None, eos="<|im_end|>",
           pad="<|endoftext|>", ends=("<|im_end|>", "<|endoftext|>"), turn_end="<|im_end|>",
           config=dict(tie_word_embeddings=True), pad_vocab_to=64),
    Family("qwen3", "Qwen3ForCausalLM", "Qwen3Config", QWEN3_TEMPLATE, ("<think>", "</think>"), bos=None,
           eos="<|im_end|>", pad="<|endoftext|>", ends=("<|im_end|>", "<|endoftext|>"), turn_end="<|im_end|>",
           config=dict(tie_word_embeddings=True, head_dim=16), pad_vocab_to=64),
    Family("gemma2", "Gemma2ForCausalLM", "Gemma2Config", GEMMA_TEMPLATE, ("<start_of_turn>", "<end_of_turn>"),
           bos="<bos>", eos="<eos>", pad="<pad>",
           ends=("<eos>", "<end_of_turn>"), turn_end="<end_of_turn>",
           config=dict(head_dim=16, final_logit_softcapping=30.0, attn_logit_softcapping=50.0,
                       sliding_window=64, query_pre_attn_scalar=16),
           sentencepiece=dict(tokenizer_class="GemmaTokenizer", pad_id=0, eos_id=1, bos_id=2, unk_id=3,
                              pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
                              user_defined_symbols=["<start_of_turn>", "<end_of_turn>"], add_dummy_prefix=False)),
    Family("gemma3", "Gemma3ForCausalLM", "Gemma3TextConfig", GEMMA_TEMPLATE,
           ("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"), bos="<bos>", eos="<end_of_turn>",
           pad="<pad>", ends=("<eos>", "<end_of_turn>"), adds_bos=True, turn_end="<end_of_turn>",
           config=dict(head_dim=16, sliding_window=64, query_pre_attn_scalar=16, final_logit_softcapping=30.0)),
    Family("mistral", "MistralForCausalLM", "MistralConfig", MISTRAL_TEMPLATE, ("<s>", "</s>", "[INST]", "[/INST]"),
           bos="<s>", eos="</s>", pad=None, ends=("</s>",), adds_bos=True, turn_end="</s>",
           config=dict(tie_word_embeddings=False, sliding_window=None)),
    Family("phi3", "Phi3ForCausalLM", "Phi3Config", PHI3_TEMPLATE,
           ("<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"), bos="<s>", eos="<|endoftext|>",
           pad="<|endoftext|>", ends=("<|endoftext|>", "<|end|>"), turn_end="<|end|>",
           config=dict(tie_word_embeddings=False), pad_vocab_to=64,
           sentencepiece=dict(tokenizer_class="LlamaTokenizer", unk_id=0, bos_id=1, eos_id=2, pad_id=-1)),
    Family("qwen2moe", "Qwen2MoeForCausalLM", "Qwen2MoeConfig", CHATML_TEMPLATE, (), bos=None, eos="<|im_end|>",
           pad="<|endoftext|>", ends=("<|im_end|>", "<|endoftext|>"), turn_end="<|im_end|>",
           config=dict(tie_word_embeddings=False, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                       shared_expert_intermediate_size=64, decoder_sparse_step=1), pad_vocab_to=64),
)}


def sentencepiece_tokenizer(family: Family, folder: Path):
    """A small SentencePiece model trained on the demo prompts (byte fallback, so any text
    tokenises), written to `folder/tokenizer.model`, and the family's transformers tokenizer of it."""
    import io

    import sentencepiece
    from transformers import AutoTokenizer

    settings = dict(family.sentencepiece)
    tokenizer_class = settings.pop("tokenizer_class")
    lines = [json.loads(line)["prompt"] for line in (ASSETS / "demo_prompts.jsonl").read_text().splitlines()]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(lines * 3), model_writer=model, vocab_size=800,
                                             model_type="bpe", byte_fallback=True, minloglevel=2, **settings)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": tokenizer_class}))
    return AutoTokenizer.from_pretrained(folder)


def family_tokenizer(family: Family, source: Path, folder: Path):
    """The family's tokenizer (the default model's BPE, or a SentencePiece model trained into
    `folder`), with its special tokens, BOS/end/pad and template."""
    from tokenizers import AddedToken, processors
    from transformers import AutoTokenizer

    tokenizer = (
        sentencepiece_tokenizer(family, folder) if family.sentencepiece else AutoTokenizer.from_pretrained(source)
    )
    if family.special:  # tokens the vocabulary has already are marked special, as the family's are
        tokenizer.add_special_tokens({"additional_special_tokens": [AddedToken(t, special=True, normalized=False)
                                                                     for t in family.special]})
    tokenizer.bos_token = family.bos
    tokenizer.eos_token = family.eos
    tokenizer.pad_token = family.pad
    if family.adds_bos:
        bos_id = tokenizer.convert_tokens_to_ids(family.bos)
        tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{family.bos}:0 $A:0", pair=f"{family.bos}:0 $A:0 {family.bos}:1 $B:1",
            special_tokens=[(family.bos, bos_id)])
    tokenizer.chat_template = family.template
    return tokenizer


def build_family(family: Family, folder: Path, source: Path) -> Path:
    import torch
    import transformers
    from transformers import GenerationConfig

    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    tokenizer = family_tokenizer(family, source, partial)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in {family.eos, family.bos, family.pad, *family.ends} if t}
    vocab = -(-len(tokenizer) // family.pad_vocab_to) * family.pad_vocab_to
    settings = {**COMMON, "vocab_size": vocab, "bos_token_id": ids.get(family.bos),
                "eos_token_id": [ids[t] for t in family.ends] if len(family.ends) > 1 else ids[family.ends[0]],
                "pad_token_id": ids.get(family.pad), **family.config}
    config = getattr(transformers, family.config_class)(**settings)
    torch.manual_seed(0)
    model = getattr(transformers, family.model_class)(config)
    model.generation_config = GenerationConfig(bos_token_id=ids.get(family.bos), pad_token_id=ids.get(family.pad),
                                               eos_token_id=[ids[t] for t in family.ends])
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    (partial / "FAMILY.json").write_text(json.dumps({"family": family.name, "model_class": family.model_class,
                                                     "build": BUILD}))
    os.replace(partial, folder)
    return folder


def family_model(name: str, models_dir: Path, source: Path) -> Path:
    """The cached tiny model of family `name` (built the first time)."""
    family = FAMILIES[name]
    folder = models_dir / family.folder_name
    stamp = folder / "FAMILY.json"
    with exclusively(folder):  # the other test process may be building it
        if not stamp.is_file() or json.loads(stamp.read_text()).get("build") != BUILD:
            shutil.rmtree(folder, ignore_errors=True)
            build_family(family, folder, source)
    return folder
