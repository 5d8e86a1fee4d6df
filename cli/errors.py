"""How a command ends on a user's error: one ``error:`` line and exit status 1, never a traceback.

Torch-free, so the data commands (prepare_data.py, synthetic.py) start without importing PyTorch.
The library raises ordinary exceptions (:data:`USER_ERRORS`); :func:`run_command` turns them into a
:class:`CLIError` (a ``SystemExit``), which only the command-line layer raises itself.
"""
from __future__ import annotations

from base.errors import InputError, RuntimeUnavailable
from base.safeio import WriteError

__all__ = ["CLIError", "USER_ERRORS", "error_line", "printable", "run_command"]


class CLIError(SystemExit):
    """A user-facing error: the message is printed as ``error: ...`` and the exit status is 1."""

    def __init__(self, message: str):
        super().__init__(f"error: {message}")
        self.message = message


def printable(text, keep: str = "\n\t") -> str:
    """``text`` with control characters (terminal escape codes, newlines in a file name) shown
    escaped; ``keep``: the ones left as they are (a message's own line breaks; "" for a file name)."""
    return "".join(c if c in keep or (c.isprintable() and c != "\x1b") else repr(c)[1:-1]
                   for c in str(text))


def error_line(exc) -> str:
    """An exception's message on one printable line. A DataLoader worker's error carries the worker's
    traceback ("Caught X in DataLoader worker process 0. Original Traceback ..."): its last line
    holds the original message."""
    text = str(exc)
    if "Original Traceback" in text:
        text = text.strip().splitlines()[-1].split(": ", 1)[-1]
    return printable(text, "")


# What the library raises for a user's input (base.errors.InputError: a setting, a data file or
# row, a checkpoint), a file it cannot write, a missing file, a runtime that is not installed.
USER_ERRORS = (InputError, WriteError, FileNotFoundError, RuntimeUnavailable)


def run_command(body, argv=None):
    """Run a command's ``body(argv)``: the library's user errors (:data:`USER_ERRORS`: a data file or
    index row in the wrong format or missing, a bad setting or checkpoint, a full disk) end in one
    ``error:`` line naming the file, not a traceback."""
    try:
        return body(argv)
    except USER_ERRORS as e:
        raise CLIError(error_line(e)) from None
    except (MemoryError, RuntimeError) as e:  # torch's allocator says "can't allocate memory"
        if isinstance(e, RuntimeError) and "can't allocate memory" not in str(e):
            raise
        raise CLIError(f"out of memory ({type(e).__name__}: {error_line(e).split('. Error code')[0][:160]}); "
                       f"lower --max-pixels (or the input's size), or free memory") from None
