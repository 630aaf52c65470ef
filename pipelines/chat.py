"""Chat with GGUF models through llama.cpp, each model loaded once and kept between messages.

The Compare tab and the batch comparison use it. A model is loaded per (file, slot): comparing a
model with itself needs two independent instances, since one llama.cpp context holds one
conversation's cache. Each instance has a lock, so two requests never share a context at once.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


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


def _cpu_has_amx() -> bool:
    try:
        return "amx_int8" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


_loading = threading.Lock()


def load_llama(path: str | Path, **settings):
    """`llama_cpp.Llama` for a GGUF file, its layers on the GPU where this build can offload.

    On a CPU with AMX (Intel Xeon since Sapphire Rapids) ggml's AMX matrix kernels crashed the
    process on the first decode (segmentation fault in ggml_backend_amx_mul_mat, llama-cpp-python
    0.3.36 built natively, every model we tried), so there the weights stay in llama.cpp's plain
    CPU buffers: the model's `use_extra_bufts` off, as llama.cpp's `--no-repack` does. `Llama`
    takes no such setting, so its default parameters are swapped for that one load."""
    from llama_cpp import Llama

    settings.setdefault("n_gpu_layers", gpu_layers())
    with plain_cpu_buffers():
        return Llama(str(path), **settings)


@contextlib.contextmanager
def plain_cpu_buffers():
    """While it holds, a model llama.cpp loads keeps its weights in plain CPU buffers on a CPU with
    AMX (see load_llama); elsewhere it changes nothing."""
    if not _cpu_has_amx():
        yield
        return
    from llama_cpp import llama as llama_module

    defaults = llama_module.llama_cpp.llama_model_default_params

    def without_extra_buffers():
        params = defaults()
        params.use_extra_bufts = False
        return params

    with _loading:
        llama_module.llama_cpp.llama_model_default_params = without_extra_buffers
        try:
            yield
        finally:
            llama_module.llama_cpp.llama_model_default_params = defaults


def gguf_chat_template(path: str | Path) -> str | None:
    """The chat template a GGUF file carries (None: not a chat model), read from its metadata alone."""
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get("tokenizer.chat_template")
    if field is None:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")


def serve_openai(path: str | Path, name: str, host: str, port: int, api_key: str | None = None,
                 n_ctx: int = 4096) -> None:
    """llama.cpp's OpenAI-compatible server (llama-cpp-python's) for one GGUF chat model, named
    `name` in /v1/models, answering in its own chat template; runs until Ctrl-C."""
    import uvicorn
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    model = ModelSettings(model=str(path), model_alias=name, n_gpu_layers=gpu_layers(), n_ctx=n_ctx, verbose=False)
    with plain_cpu_buffers():  # the server loads the model here
        app = create_app(server_settings=ServerSettings(host=host, port=port, api_key=api_key),
                         model_settings=[model])
    uvicorn.run(app, host=host, port=port, log_level="warning")


class ChatModels:
    """Loaded llama.cpp models, least recently used dropped beyond `max_loaded`."""

    def __init__(self, n_ctx: int = 4096, max_loaded: int = 4, n_threads: int | None = None):
        self.n_ctx, self.max_loaded = n_ctx, max_loaded
        self.n_threads = n_threads or os.cpu_count()
        self._loaded: OrderedDict[tuple[str, int], tuple[object, threading.Lock]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str | Path, slot: int = 0):
        """The loaded model and its lock for a GGUF file, loading it on first use."""
        key = (str(Path(path).resolve()), slot)
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
            if not Path(path).is_file():
                raise FileNotFoundError(f"{path}: no such GGUF file")
            llm = load_llama(key[0], n_ctx=self.n_ctx, n_threads=self.n_threads, n_threads_batch=self.n_threads,
                             verbose=False)
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
