"""Files that appear complete or not at all, and the clean-up of writes that were killed.

Every file the project writes (checkpoints, resume states, predictions, reports) goes through
:func:`atomic_write`: the data is written to a temporary file in the destination's folder, flushed
to disk, then renamed over the destination (``os.replace`` is atomic within one file system). A
killed process therefore leaves either the old file or the new one, plus at worst a temporary file,
named ``.<name>.<host>-<pid>.<random>.tmp``. :func:`clean_stale_temps` removes those whose process is
gone (same host, pid no longer alive), so the next start of a command cleans the litter of the last.
A failed write (full disk, no permission) raises :class:`WriteError`, which names the path.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import socket
import tempfile
import time
from typing import Optional

__all__ = ["WriteError", "atomic_write", "atomic_torch_save", "clean_stale_temps", "read_json", "read_jsonl",
           "round_floats", "write_json"]

_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40] or "host"
# .<name>.<host>-<pid>.<random>.tmp (ours) and .<name>.<random>.tmp (before the pid was recorded)
_OURS = re.compile(r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp$")
_LEGACY = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp$")
LEGACY_AGE_S = 3600  # an old-style temp file (no pid in its name) older than this is litter


class WriteError(OSError):
    """A file could not be written (the message names it); nothing partial was left behind."""


def _temp_prefix(folder: str, name: str) -> str:
    """``.<name>.<host>-<pid>.`` with ``name`` shortened so that the whole temporary name (plus
    mkstemp's 8 random characters and ``.tmp``) fits the file system's name limit: a legal
    250-byte destination name must not fail because its temporary name is longer."""
    tail = f".{_HOST}-{os.getpid()}."
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        limit = 255
    budget = max(1, limit - len(os.fsencode(tail)) - 1 - 8 - len(".tmp"))
    short = os.fsencode(name)[:budget].decode(errors="ignore") or "x"  # no split multi-byte character
    return f".{short}{tail}"


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb", encoding: str | None = None):
    """``with atomic_write(p, "w") as f: f.write(...)``: ``p`` appears complete or is left as it was."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=_temp_prefix(folder, os.path.basename(path)),
                                   suffix=".tmp")
    except OSError as exc:
        raise WriteError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        text = {} if "b" in mode else {"encoding": encoding or "utf-8", "newline": ""}  # "\n" as written
        with os.fdopen(fd, mode, **text) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the result gets an ordinary file's mode
        os.replace(tmp, path)
    except BaseException as exc:  # KeyboardInterrupt included: never leave the temp file around
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            raise WriteError(f"cannot write {path}: {exc.strerror or exc} "
                             f"(is the disk full?)") from exc
        raise


def atomic_torch_save(obj, path) -> None:
    """``torch.save`` through :func:`atomic_write`. torch reports a full disk as a RuntimeError of
    its zip writer ("unexpected pos ..."); it becomes a WriteError naming the path."""
    import torch
    with atomic_write(path, "wb") as f:
        try:
            torch.save(obj, f)
        except RuntimeError as exc:
            raise WriteError(f"cannot write {os.fspath(path)}: {str(exc).splitlines()[0]} "
                             f"(is the disk full?)") from exc


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def clean_stale_temps(folder) -> list[str]:
    """Remove the temporary files of killed atomic writes in ``folder``; returns their paths.

    A file is removed only when its writer cannot still be running: our pattern with this host's
    name and a pid that is not alive, or the old pattern (no pid) when older than an hour. Files
    of live processes or other hosts (a shared file system) are left alone.
    """
    folder = os.fspath(folder)
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    now = time.time()
    for name in names:
        if not name.endswith(".tmp") or not name.startswith("."):
            continue
        path = os.path.join(folder, name)
        m = _OURS.match(name)
        if m:
            stale = m["host"] == _HOST and int(m["pid"]) != os.getpid() and not _alive(int(m["pid"]))
        elif _LEGACY.match(name):
            try:
                stale = now - os.path.getmtime(path) > LEGACY_AGE_S
            except OSError:
                stale = False
        else:
            stale = False
        if stale:
            with contextlib.suppress(OSError):
                os.unlink(path)
                removed.append(path)
    return removed


def read_jsonl(path) -> list[dict]:
    """The records of a JSON-lines file (none when it is missing; a partial last line of a killed
    writer is skipped)."""
    out = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    except FileNotFoundError:
        pass
    return out


def read_json(path, *, required: bool = False, what: str = "file"):
    """The JSON value in ``path``. Not ``required`` (a cache, a record that may not exist yet, an
    optional meta.json): None when the file is missing or not valid JSON (a killed writer's).
    ``required``: FileNotFoundError naming the ``what`` and the path, or ValueError with the path,
    line and column of the fault."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        if required:
            raise FileNotFoundError(f"{what} {os.fspath(path)!r} does not exist") from None
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        if required:
            raise ValueError(f"{os.fspath(path)}: not valid JSON ({e})") from None
        return None


def round_floats(obj, digits=6):
    """``obj`` with every finite float rounded to ``digits`` (the project's JSON files)."""
    if isinstance(obj, float):
        return obj if not math.isfinite(obj) else round(obj, digits)
    if isinstance(obj, dict):
        return {k: round_floats(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [round_floats(v, digits) for v in obj]
    return obj


def write_json(path, payload, *, round_digits: Optional[int] = 6) -> None:
    """``payload`` as indented JSON, floats rounded to ``round_digits`` (None: as they are, for a
    record such as a run's options, where an lr of 1e-7 must stay 1e-7), complete or not at all (a failed write, e.g. a
    full disk, raises :class:`WriteError` naming the path); the temp files of killed earlier writes
    in that folder (made if missing) go first."""
    folder = os.path.dirname(os.fspath(path)) or "."
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise WriteError(f"cannot write {os.fspath(path)}: {exc.strerror or exc}") from exc
    clean_stale_temps(folder)
    with atomic_write(path, "w", encoding="utf-8") as f:
        json.dump(payload if round_digits is None else round_floats(payload, round_digits), f, indent=2)
        f.write("\n")
