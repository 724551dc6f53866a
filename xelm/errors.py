"""The one exception a user's mistake raises: the CLI prints its message as one line."""


class XelmError(Exception):
    """A problem the user can fix (bad path, unknown language, config typo, damaged file).

    The message names the culprit and, where there is one, the fix.
    """


def first_line(e: BaseException) -> str:
    """A library exception as one line for an :class:`XelmError` message: its type and the
    first line of its text (cut at 200 characters); the type alone when it has no text."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__
