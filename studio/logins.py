"""Who is labelling or voting, for the tabs that store labels (Label, Compare)."""

from __future__ import annotations

import gradio as gr

from studio.context import Context


def who(name: str, request: gr.Request) -> str:
    """The annotator of a label or a vote: the logged-in user when the studio serves with logins (a
    team), whatever the name field says (a teammate could otherwise overwrite another's label by
    typing their name); else the name typed."""
    return getattr(request, "username", None) or name


def login_field(ctx: Context, request: gr.Request):
    """On page load under logins: the name field shows the login and cannot be edited."""
    user = getattr(request, "username", None)
    if not user:
        return gr.update()
    return gr.update(value=user, interactive=False, label="Annotator (your login)")


def logged_in(ctx: Context, request: gr.Request):
    """The name field as `login_field`, and the Label tab's rename button hidden under logins."""
    user = getattr(request, "username", None)
    return login_field(ctx, request), (gr.update(visible=False) if user else gr.update())
