"""Many answers at once from a GGUF model: llama.cpp decoding every sequence in one batch.

Sampling answers one after another leaves a CPU (or a GPU) mostly waiting on one token's worth of
work per step. Here all the samples of several prompts decode together: each prompt is evaluated
once, its cache copied to its other N - 1 sequences, then every step decodes one token of every
unfinished sequence in one `llama_decode` call. Each sequence has its own cache stream (a unified
cache would make every token attend over every sequence's cells: 64 sequences ran 2x slower).
Tokens are drawn in numpy with the same settings as llama.cpp's chat sampler (temperature, then
top-p), each sample from its own generator seeded with `seed + i` (sample i of every prompt), so a
sample does not depend on which other prompts shared its batch: a run is reproducible and a
resumed run draws what a straight one would.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Top-p looks at the likeliest tokens first; this many cover the nucleus nearly always (a full
# sort of the vocabulary is the fallback when they do not).
NUCLEUS_CANDIDATES = 256
ROOM_STEP = 256  # a sequence's cache grows in steps of this many tokens when a longer prompt comes


def utf8_text(data: bytes) -> str:
    """An answer's bytes as text. An answer cut by its token limit can end inside a character (an
    emoji, an accented letter split across tokens): those last bytes are dropped rather than shown
    as replacement characters; anything else undecodable is replaced."""
    import codecs

    # Not final: an incomplete character at the end is held back, as a stream decoder waits for more.
    return codecs.getincrementaldecoder("utf-8")(errors="replace").decode(data, final=False)


@dataclass
class Answer:
    tokens: list[int]
    text: str
    finish: str  # "stop": the model ended it; "length": max_tokens cut it


def draw(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    """One token from next-token logits: temperature, then the smallest set of likeliest tokens
    whose probability reaches top_p; greedy at temperature 0."""
    if temperature <= 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p >= 1.0:
        return int(min(np.searchsorted(np.cumsum(p), rng.random(), side="right"), len(p) - 1))
    k = min(NUCLEUS_CANDIDATES, len(p))
    candidates = np.argpartition(-p, k - 1)[:k]
    order = candidates[np.argsort(-p[candidates], kind="stable")]
    cumulative = np.cumsum(p[order])
    if cumulative[-1] < top_p and k < len(p):  # a flat distribution: sort the whole vocabulary
        order = np.argsort(-p, kind="stable")
        cumulative = np.cumsum(p[order])
    keep = int(np.searchsorted(cumulative, top_p, side="left")) + 1  # up to the token that reaches top_p
    kept = cumulative[:keep]
    return int(order[min(np.searchsorted(kept, rng.random() * kept[-1], side="right"), keep - 1)])


class ChatPrompts:
    """A loaded GGUF's own chat template (`formatter` None when the file has none), and a
    conversation's prompt tokens as llama.cpp writes them."""

    def __init__(self, llm):
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.llm = llm
        template = llm.metadata.get("tokenizer.chat_template")
        eos, bos = llm.token_eos(), llm.token_bos()
        self.bos_text = llm._model.token_get_text(bos) if bos >= 0 else ""
        self.formatter = Jinja2ChatFormatter(template, llm._model.token_get_text(eos) if eos >= 0 else "",
                                             self.bos_text) if template else None

    def text(self, messages: list[dict]) -> str:
        return self.formatter(messages=messages).prompt

    def tokens(self, messages: list[dict]) -> list[int]:
        text = self.text(messages)
        # A template that writes BOS itself (Llama 3, Gemma, Mistral) gets no second one from the tokenizer.
        add_bos = self.llm._model.add_bos_token() and not (self.bos_text and text.startswith(self.bos_text))
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)


class BatchedSampler:
    """A GGUF model and a context for up to `max_sequences` answers of `max_tokens` beside their
    prompts. `answer_all` samples n answers for each of several conversations at once."""

    def __init__(self, path: str | Path, max_sequences: int, max_tokens: int, prompt_room: int = 512,
                 n_threads: int | None = None):
        import llama_cpp

        from pipelines.chat import load_llama

        self.threads = n_threads or os.cpu_count()
        # The Llama object gives the vocabulary, the tokenizer and the chat template; its own small
        # context is not used for sampling.
        self.llm = load_llama(path, n_ctx=512, n_threads=self.threads, n_threads_batch=self.threads, verbose=False)
        self.max_sequences = min(max_sequences, llama_cpp.llama_max_parallel_sequences())
        self.max_tokens = max_tokens
        self.vocab = llama_cpp.llama_model_get_vocab(self.llm._model.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.batch = llama_cpp.llama_batch_init(max(512, self.max_sequences), 0, self.max_sequences)
        self.ctx, self.prompt_room = None, 0
        self._context_for(prompt_room)
        self.chat = ChatPrompts(self.llm)
        if self.chat.formatter is None:
            raise ValueError(f"{path}: the GGUF file has no chat template")

    def _context_for(self, prompt_tokens: int) -> None:
        """A context whose every sequence holds a prompt of `prompt_tokens` and its answer (made
        again, larger, when a longer prompt comes)."""
        import llama_cpp
        from llama_cpp import _internals as internals

        if self.ctx is not None and prompt_tokens <= self.prompt_room:
            return
        if self.ctx is not None:
            self.ctx.close()
        self.prompt_room = -(-prompt_tokens // ROOM_STEP) * ROOM_STEP
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = self.max_sequences * (self.max_tokens + self.prompt_room)
        params.n_batch = params.n_ubatch = 512
        params.n_seq_max = self.max_sequences
        params.kv_unified = False  # a cache stream per sequence
        params.n_threads = params.n_threads_batch = self.threads
        self.ctx = internals.LlamaContext(model=self.llm._model, params=params, verbose=False)

    def close(self) -> None:
        import llama_cpp

        llama_cpp.llama_batch_free(self.batch)
        self.ctx.close()
        self.llm.close()

    def prompt_tokens(self, messages: list[dict]) -> list[int]:
        return self.chat.tokens(messages)

    def _decode(self, entries: list[tuple[int, int, list[int], bool]]) -> None:
        """One llama_decode of (token, position, sequence ids, wants logits) entries."""
        import llama_cpp

        b = self.batch
        for i, (token, pos, seqs, logits) in enumerate(entries):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, len(seqs), logits
            for j, s in enumerate(seqs):
                b.seq_id[i][j] = s
        b.n_tokens = len(entries)
        if llama_cpp.llama_decode(self.ctx.ctx, b) != 0:
            raise RuntimeError("llama.cpp could not decode the batch (its context is full)")

    def _logits(self, rows: int) -> np.ndarray:
        import llama_cpp

        pointer = llama_cpp.llama_get_logits(self.ctx.ctx)
        return np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)),
                                     shape=(rows, self.n_vocab)).copy()

    def answer_all(self, conversations: list[list[dict]], n: int, temperature: float, top_p: float,
                   seed: int) -> list[list[Answer]]:
        """n answers to each conversation (sample i seeded with seed + i), decoded together, as many
        conversations at once as the sequences allow."""
        import llama_cpp

        prompts = [self.prompt_tokens(c) for c in conversations]
        if n > self.max_sequences:
            raise ValueError(f"{n} answers per prompt are more than llama.cpp decodes at once ({self.max_sequences})")
        self._context_for(max(map(len, prompts), default=0))
        per_batch = self.max_sequences // n
        out: list[list[Answer]] = []
        for start in range(0, len(prompts), per_batch):
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx.ctx), True)
            out.extend(self._answer_group(prompts[start:start + per_batch], n, temperature, top_p, seed))
        return out

    def _answer_group(self, prompts: list[list[int]], n: int, temperature: float, top_p: float,
                      seed: int) -> list[list[Answer]]:
        import llama_cpp

        sequences = [(k, i) for k in range(len(prompts)) for i in range(n)]  # sequence id = its index
        first_logits = []
        memory = llama_cpp.llama_get_memory(self.ctx.ctx)
        for k, prompt in enumerate(prompts):  # each prompt once, into its first sequence, then copied
            for at in range(0, len(prompt), 512):
                chunk = prompt[at:at + 512]
                self._decode([(t, at + j, [k * n], at + j == len(prompt) - 1) for j, t in enumerate(chunk)])
            first_logits.append(self._logits(1)[0])
            for other in range(k * n + 1, (k + 1) * n):
                llama_cpp.llama_memory_seq_cp(memory, k * n, other, -1, -1)
        rngs = [np.random.default_rng(seed + i) for _, i in sequences]
        tokens: list[list[int]] = [[] for _ in sequences]
        finish: list[str | None] = [None] * len(sequences)
        logits = [first_logits[k] for k, _ in sequences]
        active = list(range(len(sequences)))
        while active:
            stepping = []
            for s, row in zip(active, logits):
                token = draw(row, temperature, top_p, rngs[s])
                if llama_cpp.llama_vocab_is_eog(self.vocab, token):
                    finish[s] = "stop"
                    continue
                tokens[s].append(token)
                if len(tokens[s]) >= self.max_tokens:
                    finish[s] = "length"
                    continue
                stepping.append(s)
            if not stepping:
                break
            self._decode([(tokens[s][-1], len(prompts[sequences[s][0]]) + len(tokens[s]) - 1, [s], True)
                          for s in stepping])
            logits = list(self._logits(len(stepping)))
            active = stepping
        answers = [Answer(t, utf8_text(self.llm.detokenize(t)), f) for t, f in zip(tokens, finish)]
        return [answers[k * n:(k + 1) * n] for k in range(len(prompts))]
