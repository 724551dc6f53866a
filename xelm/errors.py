"""The one exception a user's mistake raises: the CLI prints its message as one line."""


class XelmError(Exception):
    """A problem the user can fix (bad path, unknown language, config typo, damaged file).

    The message names the culprit and, where there is one, the fix.
    """
