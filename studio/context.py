"""What the front ends work on, passed as one value: the workspace, its store and its job runner.
The tabs' handlers are module-level functions that take it first, so that a test calls them as
the page would, without a browser."""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

from pipelines.chat import ChatModels
from store import Store
from store.labelling import LabelQueue
from studio.runner import Runner
from studio.workspace import Workspace


@dataclass(frozen=True)
class Context:
    workspace: Workspace
    store: Store | None = None     # None: a command that opens what it needs itself
    runner: Runner | None = None
    label_queue: LabelQueue | None = None  # the app's: which pair each open Label tab holds
    chat_models: ChatModels | None = None  # the app's: the GGUF models loaded for the Compare tab


def handler(fn, ctx: Context, *bound):
    """`fn(ctx, *bound, ...)` as a Gradio event handler: the context (and any leading arguments)
    bound, the rest of its signature and annotations kept (Gradio reads them to pass a gr.Request
    or gr.SelectData)."""
    if inspect.isgeneratorfunction(fn):  # Gradio streams what a generator function yields
        @functools.wraps(fn)
        def bound_fn(*args, **kwargs):
            yield from fn(ctx, *bound, *args, **kwargs)
    else:
        @functools.wraps(fn)
        def bound_fn(*args, **kwargs):
            return fn(ctx, *bound, *args, **kwargs)

    signature = inspect.signature(fn)
    bound_fn.__signature__ = signature.replace(parameters=list(signature.parameters.values())[1 + len(bound):])
    return bound_fn

