"""The one base of every error a user can act on.

An exception derived from `StudioError` carries a sentence for the user (the CLI prints it, the UI
shows it); any other exception is a bug and keeps its traceback. It lives below `store/` and
`pipelines/`, which may not import each other, so that both can derive from it.
"""


class StudioError(Exception):
    """Something the user can fix: the message says what and, where it can, how."""
