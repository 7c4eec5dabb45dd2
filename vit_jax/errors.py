"""The mistakes a user can fix, as one family of exceptions.

Every error a user can cause and correct (a config field, a dataset, a checkpoint, a
cluster setting, a busy workdir) is a `UserError`: its message is one line that names the
problem and the fix. Each command-line entry point catches `UserError` once and prints
`error: <message>` with exit status 2, never a traceback. Anything else that escapes is a
bug and keeps its traceback; code inside the library asserts where only a bug could reach.
"""


class UserError(ValueError):
    """A mistake the user can fix; the message (one line) says what and how."""


def error_line(e: BaseException) -> str:
    """'TypeName: the first line of its message' (at most 300 characters), for one-line reports
    of errors raised by libraries whose messages run over many lines."""
    text = str(e).strip()
    first = text.splitlines()[0][:300] if text else type(e).__name__
    return f"{type(e).__name__}: {first}"


def report(e: UserError) -> int:
    """Prints a user error as the command line shows it; returns the exit status (2)."""
    import sys

    print(f"error: {e}", file=sys.stderr)
    return 2
