"""The library's one base class for input it refuses.

Library code (models, data, the engine, evaluation, inference) raises ordinary exceptions; the
command lines (``cli/``) alone turn them into one ``error:`` line and an exit status
(``cli.errors.run_command``). A user's input the library cannot work with (an option value, a
data file or index row, a checkpoint) is an :class:`InputError`, so that a caller can tell it from a
bug; it is a ``ValueError`` for callers that catch those.
"""
from __future__ import annotations

__all__ = ["InputError", "RuntimeUnavailable"]


class InputError(ValueError):
    """A setting, file or row the library refuses; the message says what was expected."""


class RuntimeUnavailable(ImportError):
    """A runtime (onnxruntime, openvino, or the onnx package) is not installed
    (``models.runtimes``)."""
