"""Saving and loading LifelongDepthNet checkpoints.

Two on-disk formats are read:

* the authors' release: ``torch.save({'state_dict': sd})`` (or a bare state_dict), possibly with
  a ``module.`` prefix from DataParallel; the learning order is only in the file name (NKS...);
* the project format: a plain dict with ``state_dict`` plus metadata, ``"format":
  "lifelong-monodepth"``, ``"version": 1`` (see docs/DESIGN.md).
"""
import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from base import domains as dom
from base.domains import BUILTIN
from base.safeio import atomic_torch_save, protect
from base.errors import InputError

from .net import LifelongDepthNet
from .resnet import ENCODERS

__all__ = ["CheckpointMeta", "checkpoint_meta", "CheckpointError", "check_checkpoint_path", "checkpoint_letters", "default_scale", "check_finite", "check_letters", "check_meta", "check_values", "state_digest", "STATE_HASH", "save_checkpoint",
           "read_checkpoint", "load_checkpoint", "infer_encoder", "order_names", "register_domains",
           "domain_specs", "FORMAT", "VERSION"]

FORMAT = "lifelong-monodepth"
VERSION = 1
AUTHORS = "authors"
# Letters of the released files' names: the built-in domains (base/domains.py owns the registry).
LETTER_NAMES = {spec.letter: spec.name for spec in BUILTIN}
NAME_LETTERS = {v: k for k, v in LETTER_NAMES.items()}
_TASK_KEY = re.compile(r"^task(\d+)\.")
SPEC_FIELDS = {f.name for f in dataclasses.fields(dom.DomainSpec)}  # read generically: new fields travel


class CheckpointError(InputError):
    """A checkpoint file is missing, unreadable or does not fit the network."""


def _preview(keys, n=5):
    keys = sorted(keys)
    more = f", ... (+{len(keys) - n} more)" if len(keys) > n else ""
    return "[" + ", ".join(keys[:n]) + more + "]"


def check_finite(state, path):
    """Raise CheckpointError if a floating-point tensor of ``state`` holds NaN or infinity: such a
    model predicts NaN everywhere, so it is never saved and never evaluated."""
    bad = [k for k, v in state.items()
           if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"checkpoint {os.fspath(path)!r}: non-finite (NaN/inf) weights in "
                              f"{len(bad)} tensor(s) {_preview(bad)}; the training that made it "
                              f"diverged, use an earlier checkpoint or retrain")


# ----- saving ----------------------------------------------------------------------------
def save_checkpoint(path, net, **meta):
    """Write ``net`` in the project format; ``meta`` (domains, letters, options, ...) is stored.

    ``net.meta`` is the starting point, the keyword arguments override it. The file is written
    to a temporary name in the same folder and then renamed, so an interrupted save never
    leaves a truncated checkpoint behind.
    """
    net = getattr(net, "module", net)  # unwrap DataParallel / DDP
    n = net.num_domains
    info = {k: v for k, v in getattr(net, "meta", {}).items() if k not in ("path", "format")}
    if "domains" in meta and "letters" not in meta:
        info.pop("letters", None)  # letters in net.meta describe the old domain list
    info.update(meta)
    info = _plain(info)  # keep the file loadable with torch.load(weights_only=True)
    domains = list(info.get("domains") or [f"domain{i}" for i in range(n)])
    if len(domains) != n:
        raise ValueError(f"save_checkpoint: {len(domains)} domain names for {n} heads: {domains}")
    letters = info.get("letters") or order_names(domains)[1]
    if letters:
        info["letters"] = letters
    info["domain_specs"] = domain_specs(domains, info.get("domain_specs"))
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    check_finite(state, path)
    payload = dict(info, domains=domains, encoder=net.encoder_name, format=FORMAT, version=VERSION,
                   state_dict=state, **{STATE_HASH: state_digest(state)})  # load verifies it
    atomic_save(payload, os.fspath(path))
    return path


def domain_specs(names, stored=None) -> list:
    """Each domain's full description (every DomainSpec field, as plain data) in learning order, so
    that a custom domain (domains.json) travels with the model: the registered spec, else the one
    the file was loaded with (``stored``), else None (a name nothing describes)."""
    known = {d.get("name"): d for d in (stored or []) if isinstance(d, dict)}
    out = []
    for name in names:
        try:
            out.append(dom.get_domain(name).to_dict())
        except ValueError:
            out.append(known.get(name))
    return out


def register_domains(meta: dict, path) -> list:
    """Register the custom domains a checkpoint describes (``meta["domain_specs"]``); returns the
    specs. Called wherever a checkpoint is loaded, so predict.py, the stream path, the demo, test.py
    and export.py know a domain the model learned from a domains.json they never saw. A domain
    already registered under the same name and letter is kept (the user's description wins);
    fields this code does not know (a newer file) are ignored, missing ones get their defaults (an
    older file)."""
    specs = []
    for i, d in enumerate(checkpoint_meta(meta).domain_specs or []):
        if not isinstance(d, dict) or d.get("name") in LETTER_NAMES.values():
            continue  # a built-in domain: this code's own description is the one to use
        fields = {k: v for k, v in d.items() if k in SPEC_FIELDS}
        try:
            current = dom.get_domain(fields.get("name", ""))
        except ValueError:
            current = None
        if current is not None and current.letter == str(fields.get("letter", "")).upper():
            specs.append(current)
            continue
        try:
            spec = dom.domain_from_dict(fields, f"domain_specs[{i}]")
            specs.append(dom.register_domain(spec, provisional=True))
        except ValueError as e:
            raise CheckpointError(f"checkpoint {os.fspath(path)!r}: its domain description {e}") from None
    return specs


def check_meta(meta: dict, n: int, path) -> None:
    """The metadata a tool relies on must fit the ``n``-head model: one input size (>= 32 pixels,
    the encoder downsamples 32 times) and one depth range (0 <= min < max) per head, prototypes
    for every head. A damaged or crafted file fails here with the entry named, not later."""
    where = f"checkpoint {os.fspath(path)!r}"
    for key, check, expected in (
            ("input_sizes", lambda v: len(v) == 2 and all(_number(x) and x >= 32 and x == int(x) for x in v),
             "[H, W] integers of at least 32 pixels"),
            ("depth_ranges", lambda v: len(v) == 2 and all(_number(x) for x in v) and 0 <= v[0] < v[1],
             "[min, max] metres with 0 <= min < max")):
        values = meta.get(key)
        if values is None:
            continue
        if not isinstance(values, (list, tuple)) or len(values) != n:
            held = len(values) if isinstance(values, (list, tuple)) else repr(values)
            raise CheckpointError(f"{where}: '{key}' holds {held} entries for {n} head(s)")
        for i, v in enumerate(values):
            if not (isinstance(v, (list, tuple)) and check(v)):
                raise CheckpointError(f"{where}: '{key}'[{i}] is {v!r}; expected {expected}")
    for kind, value in (meta.get("prototypes") or {}).items():
        count = _rows(value)
        if count is not None and count != n:
            raise CheckpointError(f"{where}: its '{kind}' prototypes describe {count} domain(s), the model "
                                  f"has {n} head(s); recompute them (test_inference.py --replay-root)")
    check_values(meta, n, where)


def _non_finite(value, key):
    """The first entry under ``value`` (tensors, numbers, nested dicts/lists) that is NaN or infinite."""
    if torch.is_tensor(value):
        return key if value.is_floating_point() and not bool(torch.isfinite(value).all()) else None
    if isinstance(value, float):
        return key if not np.isfinite(value) else None
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    return next((bad for k, v in items if (bad := _non_finite(v, f"{key}[{k!r}]")) is not None), None)


def check_values(meta: dict, n: int, where: str) -> None:
    """The values a tool computes with, checked on every load (a damaged or hand-edited file fails
    here, naming the entry, instead of choosing head 0, printing NaN intervals or failing per image):
    prototypes and selector statistics finite, out-of-domain thresholds finite and positive,
    calibration scales finite and positive, cameras with positive finite focal lengths and a size."""
    protos = meta.get("prototypes")
    if protos is not None and (bad := _non_finite(protos, "prototypes")) is not None:
        raise CheckpointError(f"{where}: {bad} holds NaN or infinite values; recompute the prototypes "
                              f"(test_inference.py --replay-root, --add-frame-statistics)")
    frames = (protos or {}).get("frames") if isinstance(protos, dict) else None
    if isinstance(frames, dict) and frames.get("thresholds") is not None:
        thr = frames["thresholds"]
        if not isinstance(thr, (list, tuple)) or len(thr) != n or not all(_number(t) and t >= 0 for t in thr):
            raise CheckpointError(f"{where}: the out-of-domain thresholds {thr!r} are not {n} non-negative "
                                  f"numbers; recompute them (test_inference.py --add-frame-statistics)")
    record = meta.get("uncertainty_calibration")
    if isinstance(record, dict) and record.get("scales") is not None:
        scales = record["scales"]
        if not isinstance(scales, (list, tuple)) or not all(_number(s) and s > 0 for s in scales):
            raise CheckpointError(f"{where}: the uncertainty calibration scales {scales!r} are not positive "
                                  f"numbers; refit them (test.py --calibrate-into DIR)")
    cameras = meta.get("cameras")
    if cameras is not None:
        if not isinstance(cameras, (list, tuple)) or len(cameras) != n:
            raise CheckpointError(f"{where}: 'cameras' holds {len(cameras) if isinstance(cameras, (list, tuple)) else repr(cameras)} "
                                  f"entries for {n} head(s)")
        for i, c in enumerate(cameras):
            if c is None:
                continue
            ok = isinstance(c, dict) and all(_number(c.get(k)) for k in ("fx", "fy", "cx", "cy", "width", "height")) \
                and c["fx"] > 0 and c["fy"] > 0 and c["width"] >= 1 and c["height"] >= 1
            if not ok:
                raise CheckpointError(f"{where}: 'cameras'[{i}] is {c!r}; expected fx, fy > 0, cx, cy, width, "
                                      f"height >= 1 (pixels)")


STATE_HASH = "state_sha256"  # the metadata key of the weights' checksum (save_checkpoint)


def state_digest(state) -> str:
    """SHA-256 of a state_dict: every tensor's name, dtype, shape and bytes, in name order."""
    import hashlib
    h = hashlib.sha256()
    for k in sorted(state):
        v = state[k].detach().cpu().contiguous()
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
        h.update(memoryview(v.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x)


def _rows(value):
    """How many domains a stored prototype entry describes (None: not a per-domain entry)."""
    if torch.is_tensor(value):
        return int(value.shape[0]) if value.dim() else None
    if isinstance(value, (list, tuple)):
        return len(value)
    if isinstance(value, dict) and torch.is_tensor(value.get("means")):
        return int(value["means"].shape[0])
    return None


def _plain(obj):
    """Options objects (a settings dataclass, a namespace of a user's script), paths and numpy values
    -> plain Python, which ``weights_only`` loading accepts. A namespace is recognised by its shape
    (argparse's ``_get_kwargs``, or ``types.SimpleNamespace``), so the library needs no command line."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    elif isinstance(obj, SimpleNamespace) or callable(getattr(obj, "_get_kwargs", None)):
        obj = vars(obj)
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (np.generic, np.ndarray)):
        return obj.tolist()
    return obj


def atomic_save(obj, path):
    """torch.save that leaves the complete file or none (safeio.atomic_torch_save)."""
    atomic_torch_save(obj, path)


# ----- reading ---------------------------------------------------------------------------
def read_checkpoint(path, map_location="cpu"):
    """Return ``(state_dict, meta)`` of an authors' or project file, ``module.`` prefixes removed.

    ``meta`` holds every other entry of the file, with ``meta["format"]`` set to
    ``"lifelong-monodepth"`` or ``"authors"``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r}: no such file")
    protect(path, "the checkpoint")  # no write of this process may replace the model it reads
    try:
        # weights_only: the released files come from the internet; ours hold only plain data.
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path!r}: not a readable PyTorch file "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
                              ) from exc
    state, meta = _split(obj, path)
    stripped = {k[len("module."):] if k.startswith("module.") else k for k in state}
    if len(stripped) != len(state):  # one weight stored twice: which one is meant is unknown
        twice = sorted(k for k in stripped if k in state and f"module.{k}" in state)
        raise CheckpointError(f"checkpoint {path!r}: {len(twice)} weight(s) stored both with and without "
                              f"the 'module.' prefix {_preview(twice)}; the file was edited or merged, "
                              f"keep one copy of each")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    meta.setdefault("format", AUTHORS)
    if meta["format"] == FORMAT and int(meta.get("version", VERSION)) > VERSION:
        raise CheckpointError(f"checkpoint {path!r}: format version {meta['version']} is newer "
                              f"than this code (version {VERSION})")
    stored = meta.get(STATE_HASH)
    if stored is not None and stored != state_digest(state):  # torch.load checks no CRC: a flipped bit loads
        raise CheckpointError(f"checkpoint {path!r}: its weights do not match the checksum stored at save "
                              f"(a damaged copy: a flipped bit, a partial transfer, an edit); copy it again")
    register_domains(meta, path)  # every reader (tools, tests, the engine) knows the model's domains
    return state, meta


def _is_state_dict(obj):
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items())


def _split(obj, path):
    """Separate the state_dict from the metadata of a loaded checkpoint object."""
    if _is_state_dict(obj):  # bare state_dict, treated like the authors' files
        return dict(obj), {}
    if not isinstance(obj, dict) or "state_dict" not in obj:
        what = f"keys {_preview(map(str, obj))}" if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"checkpoint {path!r}: no 'state_dict' entry (found {what})")
    if not _is_state_dict(obj["state_dict"]):
        raise CheckpointError(f"checkpoint {path!r}: 'state_dict' is not a dict of tensors")
    meta = {k: v for k, v in obj.items() if k != "state_dict"}
    return dict(obj["state_dict"]), meta


# ----- loading into a network ------------------------------------------------------------
def infer_encoder(state):
    """Guess the encoder of an ``E.*`` state_dict from its block layout (resnet34 if unsure)."""
    bottleneck = "E.layer1.0.conv3.weight" in state
    counts = tuple(len({k.split(".")[2] for k in state if k.startswith(f"E.layer{j}.")})
                   for j in range(1, 5))
    for name, (block, layers) in ENCODERS.items():
        if tuple(layers) == counts and (block.expansion == 4) == bottleneck:
            return name
    return "resnet34"  # the released models; a wrong guess fails loudly in the strict load


def _head_count(state, path):
    found = sorted({int(m.group(1)) for m in map(_TASK_KEY.match, state) if m})
    if not found:
        raise CheckpointError(f"checkpoint {path!r}: no head keys 'task<i>.*' found")
    if found != list(range(len(found))):
        raise CheckpointError(f"checkpoint {path!r}: head indices must be contiguous from 0, "
                              f"found task{found}")
    return len(found)


def order_names(order):
    """Names and letters of an order given to a checkpoint (lenient: a letter or name outside the
    registry is kept, for custom domains not loaded yet; domains.parse_order is the strict parser).

    ``"NKS"`` / ``"nyu,kitti"`` / ``["N", "kitti"]`` -> (names, letters or None)."""
    if isinstance(order, str):
        if "," in order or order.strip().lower() in NAME_LETTERS:
            items = [s.strip() for s in order.split(",")]
        else:
            items = list(order.strip())
    else:
        items = [str(s).strip() for s in order]
    names, letters = [], []
    for item in items:
        if len(item) == 1:
            letters.append(item.upper())
            names.append(LETTER_NAMES.get(item.upper(), item.lower()))
        else:
            names.append(item.lower())
            letters.append(NAME_LETTERS.get(item.lower()))
    return names, ("".join(letters) if all(letters) else None)


def _check_fit(net, state, path):
    """Strict key/shape comparison with an error that names the offending keys."""
    own = net.state_dict()
    missing = own.keys() - state.keys()
    unexpected = state.keys() - own.keys()
    mismatched = sorted(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                        for k in own.keys() & state.keys() if own[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"checkpoint {path!r} does not fit {net.encoder_name} with {net.num_domains} head(s): "
            f"{len(missing)} missing key(s) {_preview(missing)}; "
            f"{len(unexpected)} unexpected key(s) {_preview(unexpected)}; "
            f"{len(mismatched)} shape mismatch(es) {_preview(mismatched)}")


def _domains(info, order, n, path):
    """Domain names/letters: the file's own (project format) or ``order`` or generic names."""
    stored = info.domains if info.format == FORMAT else None
    if order is not None:
        names, letters = order_names(order)
        if len(names) != n:
            raise CheckpointError(f"checkpoint {path!r} has {n} head(s) but order {order!r} "
                                  f"names {len(names)} domain(s)")
        if stored is not None and list(stored) != names:
            raise CheckpointError(f"checkpoint {path!r} stores domains {list(stored)}, "
                                  f"order {order!r} says {names}")
        return names, letters
    if stored is not None:
        names = list(stored)
        if len(names) != n:
            raise CheckpointError(f"checkpoint {path!r}: {len(names)} stored domain names "
                                  f"for {n} head(s)")
        letters = info.letters
        if letters:
            check_letters(letters, names, path)
        return names, letters or order_names(names)[1]
    return [f"domain{i}" for i in range(n)], None


def check_letters(letters, names, path):
    """Stored letters must agree with the stored domain names (built-in letters name their domain)."""
    wrong = not isinstance(letters, str) or len(letters) != len(names) or any(
        LETTER_NAMES.get(c, name) != name or NAME_LETTERS.get(name, c) != c for c, name in zip(letters, names))
    if wrong:
        raise CheckpointError(f"checkpoint {path!r}: stored letters {letters!r} disagree with its stored "
                              f"domains {names}; the file was edited or damaged, re-save it with matching "
                              f"'letters'")


def load_checkpoint(path, order=None, map_location="cpu", encoder=None):
    """Build a LifelongDepthNet from a checkpoint and return it in eval mode with ``net.meta``.

    ``order`` names the domains of an authors' file in learning order (e.g. ``"NKS"``, the
    file name); ``encoder`` overrides the stored/inferred encoder name.
    """
    state, meta = read_checkpoint(path, map_location)
    path = os.fspath(path)
    n = _head_count(state, path)
    info = CheckpointMeta.from_dict(meta, path, heads=n)  # check_meta: the values fit n heads
    names, letters = _domains(info, order, n, path)  # cheap checks before building the net
    for c in letters or "":
        try:
            dom.get_domain(c)
        except ValueError:
            raise CheckpointError(f"checkpoint {path!r}: its letter {c!r} names no domain this code knows "
                                  f"and the file carries no description of it ('domain_specs'); register "
                                  f"it (a domains.json in --data-root) or re-save the checkpoint") from None
    name = encoder or info.encoder or infer_encoder(state)
    try:
        net = LifelongDepthNet(encoder=name, num_domains=n)
    except ValueError as e:  # e.g. an unknown stored encoder name
        raise CheckpointError(f"checkpoint {path!r}: {e}") from None
    _check_fit(net, state, path)
    check_finite(state, path)
    net.load_state_dict(state, strict=True)
    if isinstance(map_location, (str, torch.device)):
        net.to(map_location)  # parameters live where the tensors were mapped
    info = info.updated(domains=names, encoder=net.encoder_name, path=path, prototypes=info.prototypes,
                        **({"letters": letters} if letters else {}))
    net.meta = info.to_dict()  # a plain dict (the API's, and save_checkpoint's starting point)
    return net.eval()


# ----- what a loaded checkpoint says about itself ------------------------------------------
DEFAULT_INPUT_SIZE = (228, 304)  # NYU's input (H, W): the example size where a file stores none


@dataclasses.dataclass(frozen=True)
class CheckpointMeta:
    """The metadata beside a checkpoint's state_dict, typed: one field per key the code reads, its
    default (what an authors' file, which stores none, or an older project file means) given here
    and nowhere else. :meth:`from_dict` builds it (validating, on load), :func:`checkpoint_meta`
    views a loaded network's ``net.meta`` through it, :meth:`to_dict` gives back the stored keys
    (the on-disk format is the dict: this object adds no key and drops none, ``extra`` holds the
    keys it does not type)."""
    format: str = AUTHORS
    """"lifelong-monodepth" (a project file) or "authors" (a released state_dict, no metadata)."""
    version: int | None = None
    """The project format's version (VERSION); None in an authors' file."""
    state_sha256: str | None = None
    """SHA-256 of the weights at save (state_digest), verified on read; None: not stored."""
    encoder: str | None = None
    """The encoder's name (models.resnet.ENCODERS); None: inferred from the weights' layout."""
    domains: list | None = None
    """The heads' domain names in learning order (a loaded net always has them: domain0... where
    the file does not say); None: not stored."""
    letters: str | None = None
    """The heads' domain letters in learning order ("NKS"); None: not stored (an authors' file, a
    custom name without a letter, a shared head)."""
    domain_specs: list | None = None
    """Every head's full domain description (DomainSpec.to_dict), so custom domains travel."""
    trained_letters: str | None = None
    """The order the run trained on (the letters of a shared-head run, which has one head)."""
    strategy: str | None = None
    """The training strategy ("ours", "joint", ...); None: not stored (an authors' file)."""
    shared_head: bool = False
    """Whether one head serves every trained domain."""
    options: dict = dataclasses.field(default_factory=dict)
    """The training options (engine.options.StageOptions as a dict); {} where none are stored."""
    depth_ranges: list | None = None
    """Per head [min, max] metres; None: not stored."""
    input_sizes: list | None = None
    """Per head the training input [H, W] in pixels; None: not stored."""
    cameras: list | None = None
    """Per head the camera it learned (base.domains.Intrinsics.as_dict, or None); None: not stored."""
    prototypes: dict | None = None
    """The domain prototypes by kind ("pooled", "map", "lda", "frames", ...); None: not stored."""
    uncertainty_calibration: dict | None = None
    """The uncertainty calibration record (base.uncertainty, CALIBRATION_KEY); None: not stored."""
    path: str | None = None
    """The file it was loaded from (set by load_checkpoint, never saved)."""
    extra: dict = dataclasses.field(default_factory=dict)
    """Every other stored key, kept as it is (written back by to_dict)."""
    stored: frozenset = frozenset()
    """The typed keys the source dict held (to_dict writes these and ``extra``, nothing else)."""

    @classmethod
    def from_dict(cls, meta, path=None, heads: int | None = None) -> "CheckpointMeta":
        """The typed metadata of ``meta`` (a checkpoint's dict beside the state_dict, or a loaded
        net's ``net.meta``); with ``heads``, validated for a ``heads``-head model first
        (:func:`check_meta`, CheckpointError naming ``path`` and the entry)."""
        if isinstance(meta, CheckpointMeta):
            return meta
        meta = dict(meta or {})
        if heads is not None:
            check_meta(meta, heads, path if path is not None else meta.get("path"))
        typed = {k: meta[k] for k in _TYPED if k in meta}
        if not isinstance(typed.get("options", {}), dict):
            typed["options"] = {}  # a damaged entry reads as none stored
        return cls(**typed, extra={k: v for k, v in meta.items() if k not in _TYPED},
                   stored=frozenset(k for k in _TYPED if k in meta))

    def updated(self, **values) -> "CheckpointMeta":
        """A copy with ``values`` set (and stored: to_dict writes them)."""
        return dataclasses.replace(self, **values, stored=self.stored | set(values))

    def to_dict(self) -> dict:
        """The keys it was built from, with their values (the dict save_checkpoint writes)."""
        out = {k: getattr(self, k) for k in _TYPED if k in self.stored}
        out.update(self.extra)
        return out

    # ---- what the fields mean where the file does not say (one rule each) --------------------
    @property
    def authors(self) -> bool:
        """An authors' file: its heads named only by the learning order (no stored letters)."""
        return not self.letters and self.format == AUTHORS

    @property
    def scale(self) -> float:
        """The training scale (options.scale), else 1.0 (an authors' file: the full-size inputs)."""
        value = self.options.get("scale")
        try:
            return float(value) if value else 1.0
        except (TypeError, ValueError):
            return 1.0

    @property
    def data_root(self) -> str | None:
        """The data root the model was trained on (options.data_root), None where not stored."""
        return self.options.get("data_root") or None

    def domain_names(self, heads: int) -> list:
        """The heads' domain names: the stored ones, else domain0, domain1, ..."""
        return list(self.domains or [f"domain{i}" for i in range(heads)])

    @property
    def letter_list(self) -> list:
        """The stored letters as a list ([] where none are stored)."""
        return list(self.letters or "")

    @property
    def example_size(self) -> tuple:
        """(H, W) of the first head's stored input, else DEFAULT_INPUT_SIZE: the size an example
        input (export, probe, benchmark) takes."""
        h, w = (self.input_sizes or [DEFAULT_INPUT_SIZE])[0]
        return int(h), int(w)

    def depth_range(self, head: int, heads: int) -> tuple:
        """(min, max) metres of ``head`` of ``heads``: :meth:`head_ranges`' rule (the stored range, else
        its domain's registered range, as predict.py, the streams and the demo clamp), and (0, inf)
        only where the file does not say which domain each head is (nothing to clamp to)."""
        letters = self.known_letters()
        if len(letters) == heads:
            return self.head_ranges(letters)[head]
        lo, hi = (self.depth_ranges or [[0.0, float("inf")]] * heads)[head]
        return float(lo), float(hi)

    def known_letters(self) -> list:
        """The heads' domain letters: stored, else from the stored domain names where every one is
        a registered domain; [] where the file does not say (an authors' file loaded without order)."""
        try:  # checkpoint_letters' rule, without its error
            return list(checkpoint_letters(self, self.path or "checkpoint"))
        except CheckpointError:
            return []

    def head_sizes(self, letters) -> list:
        """Per head of ``letters``, the input (H, W): the stored sizes when there is one per head,
        else each domain's registered input size."""
        sizes = self.input_sizes
        if sizes and len(sizes) == len(letters):
            return [tuple(int(v) for v in s) for s in sizes]
        return [tuple(dom.get_domain(c).input_size) for c in letters]

    def head_ranges(self, letters) -> list:
        """Per head of ``letters``, (min, max) metres: the stored ranges when there is one per head,
        else each domain's registered range."""
        ranges = self.depth_ranges
        if ranges and len(ranges) == len(letters):
            return [tuple(float(v) for v in r) for r in ranges]
        return [(dom.get_domain(c).min_depth, dom.get_domain(c).max_depth) for c in letters]

    @property
    def prototype_sets(self) -> dict:
        """The stored prototypes by kind ({} where none are stored)."""
        return dict(self.prototypes or {})

    @property
    def frame_statistics(self) -> dict:
        """The frame pipeline's selector statistics (prototypes["frames"]: thresholds, ood, ...),
        {} where none are stored."""
        return dict(self.prototype_sets.get("frames") or {})

    @property
    def calibration(self) -> dict:
        """The stored uncertainty calibration record, {} where none is stored."""
        record = self.uncertainty_calibration
        return record if isinstance(record, dict) else {}


_TYPED = tuple(f.name for f in dataclasses.fields(CheckpointMeta) if f.name not in ("extra", "stored"))


def checkpoint_meta(source) -> CheckpointMeta:
    """The typed metadata of ``source``: a loaded network or a predictor (their ``.meta``), a
    metadata dict, or a CheckpointMeta. No validation (load_checkpoint validated it): a view."""
    if isinstance(source, CheckpointMeta):
        return source
    if not isinstance(source, Mapping) and source is not None:
        source = getattr(source, "meta", None)
    return CheckpointMeta.from_dict(source)


def check_checkpoint_path(path, what="checkpoint") -> Path:
    """``path`` as a Path when it is a file, else CheckpointError saying how to make one."""
    path = Path(path)
    if not path.is_file():
        hint = ("train one with train_N.py / train_NK.py / train_NKS.py (or run quickstart.py), "
                "or give --checkpoint PATH")
        raise CheckpointError(f"{what} {str(path)!r} not found; {hint}")
    return path


def checkpoint_letters(meta: dict, path) -> str:
    """The learning order of a loaded checkpoint as domain letters (one per head); CheckpointError
    when the file does not say (an authors' file loaded without ``order``)."""
    info = checkpoint_meta(meta)
    if info.letters:
        return "".join(info.letters)
    names = info.domains or []
    if info.format == AUTHORS or not names or all(str(n).startswith("domain") for n in names):
        stem = Path(path).name.split(".")[0].split("_")[0]
        example = stem if stem.isalpha() and stem.isupper() else "NKS"
        raise CheckpointError(f"checkpoint {str(path)!r} does not say which domain each head belongs to (an "
                              f"authors' state_dict-only file); name the heads in learning order with "
                              f"--order, e.g. --order {example}")
    try:
        return "".join(dom.get_domain(n).letter for n in names)
    except ValueError as e:
        raise CheckpointError(f"checkpoint {str(path)!r}: {e}") from None


def default_scale(meta) -> float:
    """The checkpoint's training scale (CheckpointMeta.scale: options.scale, else 1.0)."""
    return checkpoint_meta(meta).scale
