"""What a user picked in the tabs (datasets, runs, models), kept in the browser's local storage, so
that a reload or a second browser tab opens on the same picks. Each menu's choices are read from the
store when the page loads (the page may be older than them); a remembered pick comes back while it
still exists, and a menu with no remembered pick gets its `default`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr

from studio.workspace import Workspace


@dataclass(frozen=True)
class Menu:
    component: gr.Dropdown
    choices: Callable[[], list]                      # the menu's choices as the store is now
    default: Callable[[list], object] | None = None  # the pick when none is remembered, from the choices


def values_of(choices: list) -> list:
    """The values of a menu's choices: plain values, or the second of (label, value) pairs."""
    return [c[1] if isinstance(c, tuple) else c for c in choices]


def remember(app: gr.Blocks, workspace: Workspace, menus: dict[str, Menu]) -> gr.BrowserState:
    """Keep each menu's pick (by name) in the browser, and bring it back when a page loads."""
    # One storage entry per workspace: two studios on one machine do not swap their picks. Dataset
    # names are no secret; the key only keeps Gradio from making a new one (and forgetting) per start.
    key = hashlib.sha256(str(workspace.root.resolve()).encode()).hexdigest()[:16]
    picks = gr.BrowserState({}, storage_key=f"alignstudio-picks-{key}", secret=key)
    for name, menu in menus.items():
        # .change, not .input: a pick made by the Next step or the jobs bar's Open is the user's too.
        # Kept in the browser itself (no round trip to the server): a reload right after a pick, or
        # answers to several menus' changes arriving out of order, would otherwise lose it.
        menu.component.change(None, [menu.component, picks], picks, show_progress="hidden", queue=False,
                              js=f"(value, kept) => ({{...(kept || {{}}), {json.dumps(name)}: value}})")

    def restore(kept):
        kept = kept or {}
        updates = []
        for name, menu in menus.items():
            choices = menu.choices()
            values = values_of(choices)
            if kept.get(name) in values:
                value = kept[name]
            elif menu.default is not None:
                value = menu.default(choices)
            else:
                updates.append(gr.update(choices=choices))
                continue
            updates.append(gr.update(choices=choices, value=value))
        return updates

    app.load(restore, picks, [menu.component for menu in menus.values()], show_progress="hidden")
    return picks
