"""Chat with GGUF models through llama.cpp, each model loaded once and kept between messages.

The Compare tab and the batch comparison use it. A model is loaded per (file, slot): comparing a
model with itself needs two independent instances, since one llama.cpp context holds one
conversation's cache. Each instance has a lock, so two requests never share a context at once.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 256
    seed: int = 0


def gpu_layers() -> int:
    """All layers on the GPU when this llama.cpp build can offload (a CUDA or Metal build: `make
    gpu`), none otherwise; llama.cpp's own default keeps everything on the CPU."""
    import llama_cpp

    return -1 if llama_cpp.llama_supports_gpu_offload() else 0


class ChatModels:
    """Loaded llama.cpp models, least recently used dropped beyond `max_loaded`."""

    def __init__(self, n_ctx: int = 4096, max_loaded: int = 4, n_threads: int | None = None):
        self.n_ctx, self.max_loaded = n_ctx, max_loaded
        self.n_threads = n_threads or os.cpu_count()
        self._loaded: OrderedDict[tuple[str, int], tuple[object, threading.Lock]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str | Path, slot: int = 0):
        """The loaded model and its lock for a GGUF file, loading it on first use."""
        from llama_cpp import Llama

        key = (str(Path(path).resolve()), slot)
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
            if not Path(path).is_file():
                raise FileNotFoundError(f"{path}: no such GGUF file")
            llm = Llama(key[0], n_ctx=self.n_ctx, n_threads=self.n_threads, n_threads_batch=self.n_threads,
                        n_gpu_layers=gpu_layers(), verbose=False)
            self._loaded[key] = (llm, threading.Lock())
            while len(self._loaded) > self.max_loaded:
                self._loaded.popitem(last=False)
            return self._loaded[key]

    def stream(self, path: str | Path, messages: list[dict], sampling: Sampling, slot: int = 0) -> Iterator[str]:
        """The answer to a conversation, as text pieces while they are generated."""
        llm, lock = self.get(path, slot)
        with lock:
            for chunk in llm.create_chat_completion(messages=messages, temperature=sampling.temperature,
                                                    top_p=sampling.top_p, max_tokens=sampling.max_tokens,
                                                    seed=sampling.seed, stream=True):
                piece = chunk["choices"][0]["delta"].get("content")
                if piece:
                    yield piece

    def answer(self, path: str | Path, messages: list[dict], sampling: Sampling, slot: int = 0) -> tuple[str, str, int]:
        """The whole answer, why it ended ('stop', or 'length' when max_tokens cut it) and its
        length in tokens."""
        llm, lock = self.get(path, slot)
        with lock:
            result = llm.create_chat_completion(messages=messages, temperature=sampling.temperature,
                                                top_p=sampling.top_p, max_tokens=sampling.max_tokens,
                                                seed=sampling.seed)
        choice = result["choices"][0]
        return (choice["message"]["content"] or "", "length" if choice["finish_reason"] == "length" else "stop",
                result["usage"]["completion_tokens"])
