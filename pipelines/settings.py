"""Settings declared once: each pipeline config field carries its default and its help text.

A field made with `setting()` holds its help (and, where it has them, its choices and a short
label) in its metadata, as TRL's configs do. The CLI's flags and the Train tab's form are
generated from these fields, so a default or a help text is written in exactly one place.
`internal=True` marks what the runner fills in (file names, folders), never asked of a user;
`advanced=True` what the Train tab keeps under "All settings".
"""

from __future__ import annotations

import dataclasses
from typing import Any

# Help texts that several configs share, written once.
MODELS_DIR_HELP = "folder of converted and trained models"
DEVICE_HELP = "auto (CUDA when there is one), cuda or cpu"
DTYPE_HELP = ("auto (bf16 on CUDA cards that have it, fp16 on older ones, float32 on a CPU), bfloat16, float16 "
              "or float32")


def setting(default: Any, help: str, *, choices: tuple | None = None, label: str | None = None,
            internal: bool = False, advanced: bool = False):
    """A config field with its default and help text."""
    metadata = {"help": help, "choices": choices, "label": label, "internal": internal, "advanced": advanced}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def redefault(parent: type, name: str, default: Any, why: str = ""):
    """The parent config's field `name` with another default (help kept; `why` appended)."""
    metadata = dict(parent.__dataclass_fields__[name].metadata)
    if why:
        metadata["help"] = f"{metadata['help']} ({why})"
    return setting(default, **metadata)


def not_used(parent: type, name: str, why: str):
    """The parent config's field `name`, kept (configs stay interchangeable) but hidden from the
    CLI and the form, because this method does not use it; `why` says so in the saved config's help."""
    return setting(default_of(parent.__dataclass_fields__[name]), why, internal=True)


def split_list(text: str) -> list[str]:
    """A list setting typed as text: comma-separated, blanks dropped."""
    return [part.strip() for part in str(text).split(",") if part.strip()]


def user_fields(config_cls: type) -> list[dataclasses.Field]:
    """The fields a user sets (not the ones the runner fills in), in declaration order."""
    return [f for f in dataclasses.fields(config_cls) if not f.metadata.get("internal")]


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def help_of(f: dataclasses.Field) -> str:
    return f.metadata.get("help", "")


def label_of(f: dataclasses.Field) -> str:
    """The form's label: the field's own, else its name in words."""
    return f.metadata.get("label") or f.name.replace("_", " ").capitalize()


def value_type(f: dataclasses.Field) -> type:
    """bool, int, float, str or list for a field's annotation (written as a string under
    `from __future__ import annotations`)."""
    annotation = str(f.type)
    for name, kind in (("bool", bool), ("int", int), ("float", float), ("list", list)):
        if annotation == name or annotation.startswith(f"{name}[") or annotation.startswith(f"{name} "):
            return kind
    return str
