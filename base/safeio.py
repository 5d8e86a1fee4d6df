"""Files that appear complete or not at all, and the clean-up of writes that were killed.

Every file the project writes (checkpoints, resume states, predictions, reports) goes through
:func:`atomic_write`: the data is written to a temporary file in the destination's folder, flushed
to disk, then renamed over the destination (``os.replace`` is atomic within one file system). A
killed process therefore leaves either the old file or the new one, plus at worst a temporary file,
named ``.<name>.<host>-<pid>.<random>.tmp``. :func:`clean_stale_temps` removes those whose process is
gone (same host, pid no longer alive), so the next start of a command cleans the litter of the last.
A failed write (full disk, no permission) raises :class:`WriteError`, which names the path and
what the system said (a full disk, a folder in the way, no permission).

Whether a path may be written at all is decided in one place, :func:`check_write`, which every
command and library entry that writes calls before it starts: never a file this process reads as
an input (:func:`protect` registers them: the checkpoint being read, the input video or image;
:func:`atomic_write` refuses those too, whoever calls it), never a folder or a path below a file,
and an existing file only when asked (``overwrite``) or when this command made it (``ours``; a
command that replaces its own earlier outputs records them with :func:`record_made`).
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

__all__ = ["WriteError", "atomic_write", "atomic_torch_save", "check_folder", "check_report", "check_write",
           "hold_lock", "json_report", "clean_stale_temps", "made_by",
           "protect", "read_json", "read_jsonl", "record_made", "round_floats", "write_json"]

_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40] or "host"
# .<name>.<host>-<pid>.<random>.tmp (ours) and .<name>.<random>.tmp (before the pid was recorded)
_OURS = re.compile(r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp$")
_LEGACY = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp$")
LEGACY_AGE_S = 3600  # an old-style temp file (no pid in its name) older than this is litter


class WriteError(OSError):
    """A file could not be written (the message names it); nothing partial was left behind."""


def write_error(path, exc) -> WriteError:
    """A WriteError naming ``path`` and what the system said; "the disk is full" only when it is."""
    import errno
    reason = exc.strerror or str(exc) if isinstance(exc, OSError) else str(exc).splitlines()[0]
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        reason = f"{reason} (the disk is full)"
    return WriteError(f"cannot write {os.fspath(path)}: {reason}")


# ----- the one rule for what may be written ------------------------------------------------
_INPUTS: dict = {}  # (st_dev, st_ino) -> (what, st_mtime_ns), of the files this process reads as inputs


def protect(path, what: str = "an input of this command") -> None:
    """Register ``path`` as an input this process reads (a checkpoint, a video, an image): no write
    of this process may replace it (:func:`check_write`, :func:`atomic_write`)."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return
    _INPUTS[(st.st_dev, st.st_ino)] = (what, st.st_mtime_ns)  # the time: a reused inode is another file


def _input_of(path) -> str | None:
    """What ``path`` is when it is a registered input (the same file, by device and inode), else None."""
    if not _INPUTS:
        return None
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    what, mtime = _INPUTS.get((st.st_dev, st.st_ino), (None, None))
    return what if mtime == st.st_mtime_ns else None


def _refuse_input(path, option: str = "output") -> None:
    what = _input_of(path)
    if what is not None:
        from base.errors import InputError
        raise InputError(f"{option} {os.fspath(path)}: is {what}, which this command reads; writing it "
                         f"would replace it. Choose another file name")


def check_write(path, *, option: str = "--out", overwrite: bool = False, ours=None, hint: str = "") -> None:
    """Whether this process may write the file ``path``; an InputError naming ``option`` otherwise.

    Never a file this process reads (:func:`protect`; not even with ``overwrite``), never a folder
    or a path below a file; an existing file only with ``overwrite`` or when ``ours(path)`` says
    this command made it (e.g. :func:`made_by`). ``hint``: what to do instead, for the message."""
    from base.errors import InputError
    p = os.fspath(path)
    _refuse_input(p, option)
    if os.path.isdir(p):
        raise InputError(f"{option} {p}: is a folder; expected a file name")
    parent = next((a for a in [os.path.dirname(os.path.abspath(p))] + _ancestors(p) if os.path.exists(a)), None)
    if parent is not None and not os.path.isdir(parent):
        raise InputError(f"{option} {p}: {parent} is a file, not a folder")
    if os.path.lexists(p) and not overwrite and not (ours is not None and ours(p)):
        raise InputError(f"{option} {p}: exists; "
                         + (hint or "pass --overwrite to replace it, or choose another file name"))


def _ancestors(path) -> list:
    out, a = [], os.path.dirname(os.path.abspath(path))
    while True:
        up = os.path.dirname(a)
        if up == a:
            return out
        out.append(up)
        a = up


def json_report(path) -> bool:
    """Whether ``path`` holds a JSON value (an earlier run's report, which a command's ``--json`` may
    replace; a model, an image or a text of the user's is not one)."""
    try:
        with open(path, "rb") as f:
            head = f.read(1)
    except OSError:
        return False
    return head in (b"{", b"[") and read_json(path) is not None


def check_report(path, option: str = "--json") -> None:
    """:func:`check_write` for a JSON report: an existing JSON file (an earlier report) is replaced,
    anything else (the checkpoint, a user's file) refused."""
    check_write(path, option=option, ours=json_report,
                hint="a --json report replaces only an earlier JSON report; choose another file name")


def check_folder(path, option: str = "--out") -> None:
    """An output folder: nothing there yet, or a folder (not a file, not below a file); InputError otherwise."""
    from base.errors import InputError
    p = os.fspath(path)
    if os.path.exists(p) and not os.path.isdir(p):
        raise InputError(f"{option} {p}: is a file; expected a folder")
    bad = next((a for a in _ancestors(os.path.join(p, "x")) if os.path.exists(a) and not os.path.isdir(a)), None)
    if bad is not None:
        raise InputError(f"{option} {p}: cannot create the folder: {bad} is a file, not a folder")


@contextlib.contextmanager
def hold_lock(path, busy: str):
    """Hold an exclusive lock on the file ``path`` (created; an flock, released by the kernel when the
    process ends, also on kill -9) while the block runs; InputError ``busy`` (its ``{pid}`` filled with
    the holder's) when another process holds it."""
    from base.errors import InputError
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        handle = open(path, "a+")
    except OSError as exc:
        raise write_error(path, exc) from exc
    try:
        try:
            import fcntl
        except ImportError:  # no flock on this platform: unlocked
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                holder = handle.read().strip() or "?"
                raise InputError(busy.format(pid=holder)) from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
        yield
    finally:
        handle.close()


MADE_FILE = ".made-by.json"  # per folder: which command made which of its files


def record_made(path, command: str) -> None:
    """Record that ``command`` made ``path`` (its size and time), so that it may replace it later
    (:func:`made_by`) while a file of the user's under that name stays refused."""
    p = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(p))
    index = read_json(os.path.join(folder, MADE_FILE))
    index = index if isinstance(index, dict) else {}
    st = os.stat(p)
    index[os.path.basename(p)] = {"command": command, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    write_json(os.path.join(folder, MADE_FILE), index, round_digits=None)


def made_by(path, command: str) -> bool:
    """Whether ``path`` is, unchanged, a file ``command`` made (:func:`record_made`)."""
    p = os.fspath(path)
    index = read_json(os.path.join(os.path.dirname(os.path.abspath(p)), MADE_FILE))
    entry = index.get(os.path.basename(p)) if isinstance(index, dict) else None
    try:
        st = os.stat(p)
    except OSError:
        return False
    return isinstance(entry, dict) and entry.get("command") == command and \
        entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns


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
    _refuse_input(path)  # never the checkpoint / input this process reads, whoever writes
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=_temp_prefix(folder, os.path.basename(path)),
                                   suffix=".tmp")
    except OSError as exc:
        raise write_error(path, exc) from exc
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
            raise write_error(path, exc) from exc
        raise


def atomic_torch_save(obj, path) -> None:
    """``torch.save`` through :func:`atomic_write`. torch reports a full disk as a RuntimeError of
    its zip writer ("unexpected pos ..."); it becomes a WriteError naming the path."""
    import torch
    with atomic_write(path, "wb") as f:
        try:
            torch.save(obj, f)
        except RuntimeError as exc:  # the zip writer says "unexpected pos" on a full disk
            raise WriteError(f"cannot write {os.fspath(path)}: {str(exc).splitlines()[0]} "
                             f"(the disk may be full)") from exc


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
        raise write_error(path, exc) from exc
    clean_stale_temps(folder)
    with atomic_write(path, "w", encoding="utf-8") as f:
        json.dump(payload if round_digits is None else round_floats(payload, round_digits), f, indent=2)
        f.write("\n")
