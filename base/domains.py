"""Domains: what a dataset is (files, units, sizes, augmentation recipe) and the registry of them.

A `DomainSpec` says everything the loaders, the training engine and the evaluation need to know
about one domain.  Three domains are built in (the paper's): N/nyu, K/kitti, S/scannet.  A user's
own RGB-D data becomes one more domain through a small JSON file, with no code change:

    <data_root>/domains.json   (read automatically by loaders.get_dataset), or
    domains.load_domain_file("my_domain.json")

JSON format of one custom domain (every field except `name` and `letter` is optional; the
`#` comments are explanations only, JSON has none)::

    {
      "name": "office",              # unique name, [a-z0-9_-], used in checkpoints and logs
      "letter": "O",                 # unique single letter A-Z, used in learning orders ("NKSO")
      "train_csv": "office_train.csv",   # index CSVs under data_root (defaults shown:
      "test_csv": "office_test.csv",     #   <name>_train.csv, <name>_test.csv,
      "replay_csv": "replay_office.csv", #   replay_<name>.csv)
      "min_depth": 0.001,            # metres; evaluation lower cap (default 1e-3)
      "max_depth": 10.0,             # metres; evaluation upper cap, plotting range (default 10)
      "input_size": [228, 304],      # [H, W] network input at scale 1 (default [228, 304])
      "transform": "nyu",            # augmentation recipe: "nyu" | "kitti" | "scannet" (default "nyu")
      "resize": null,                # resize before cropping at scale 1: an int = short side,
                                     #   [H, W] = exact size, null = derived: "nyu" resizes (aspect
                                     #   kept) to cover input_size * 240/228, "scannet" to
                                     #   input_size * (240/228, 320/304), "kitti" does not resize
      "depth_encoding": {"kind": "png", "scale": 0.001, "bits": 16},
                                     # how a depth file decodes to metres; one dict for all splits or
                                     #   {"train": {...}, "test": {...}[, "replay": {...}]}.
                                     #   kinds: "png" (metres = value * scale; bits 8, 16 or null =
                                     #   any single-channel integer PNG), "npy" (float depth * scale:
                                     #   a .npy array or an OpenEXR .exr's depth channel),
                                     #   "h5" (keys "rgb"/"depth", metres), "mat" (NYU labeled .mat)
                                     #   (default: 16-bit PNG in millimetres)
      "source": "generic_png",       # dataset class: generic_png | nyu_csv | nyu_h5 | nyu_mat |
                                     #   kitti | scannet (default "generic_png")
      "eval_crop": "none",           # "eigen" | "garg" | "none" (default "none")
      "rgb_to_depth_size": false,    # resize the colour image to the depth size (ScanNet style);
                                     #   if false, sizes must match exactly (default false)
      "alt_roots": [],               # extra folders under data_root where relative CSV paths may
                                     #   live (default none)
      "description": "",             # free text
      "camera": null                 # [fx, fy, cx, cy, width, height] of the depth frames in pixels:
                                     #   the camera the domain's head learns (predict.py resamples a
                                     #   user's frame to its focal length; default: unknown)
    }

`<data_root>/domains.json` holds a list of such objects (or {"domains": [...]}).
Depth value 0 always means "no ground truth".
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

from base.safeio import read_json, write_json

TRANSFORMS = ("nyu", "kitti", "scannet")
SOURCES = ("nyu_csv", "nyu_h5", "nyu_mat", "kitti", "scannet", "generic_png")
EVAL_CROPS = ("eigen", "garg", "none")
ENCODING_KINDS = ("png", "npy", "h5", "mat")
SPLITS = ("train", "test", "replay")
DOMAINS_JSON = "domains.json"
#: Where the index CSVs (and the data they name) are looked for when no --data-root is given.
DEFAULT_DATA_ROOT = "datasets"

# 16-bit millimetre PNG: the default for custom domains (most RGB-D sensors export this).
DEFAULT_ENCODING = {"kind": "png", "scale": 0.001, "bits": 16}


def _freeze_encoding(enc: dict) -> dict:
    """Fill encoding defaults so that equal encodings compare equal."""
    enc = dict(enc)
    if enc.get("kind") in ("png", "npy"):
        enc.setdefault("scale", 1.0 if enc["kind"] == "npy" else 0.001)
        enc["scale"] = float(enc["scale"])
    if enc.get("kind") == "png":
        enc.setdefault("bits", None)
    return enc


def _check_encoding(enc, where: str) -> None:
    """Raise ValueError if one depth encoding dict is malformed."""
    if not isinstance(enc, dict):
        raise ValueError(f"{where}: expected an object like {DEFAULT_ENCODING}, got {enc!r}")
    kind = enc.get("kind")
    if kind not in ENCODING_KINDS:
        raise ValueError(f"{where}.kind: expected one of {ENCODING_KINDS}, got {kind!r}")
    known = {"kind", "scale", "bits", "key", "rgb_key"}
    extra = set(enc) - known
    if extra:
        raise ValueError(f"{where}: unknown key(s) {sorted(extra)}; known: {sorted(known)}")
    if "scale" in enc:
        s = enc["scale"]
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < s < float("inf"):
            raise ValueError(f"{where}.scale: expected a positive number (metres per unit), got {s!r}")
    if enc.get("bits") not in (None, 8, 16):
        raise ValueError(f"{where}.bits: expected 8, 16 or null, got {enc.get('bits')!r}")


def normalize_encodings(enc) -> Dict[str, dict]:
    """Per-split encodings from one dict (all splits) or a {"train":..., "test":...} dict.

    "replay" falls back to "train" (replay rows are training rows).
    """
    if not isinstance(enc, dict):
        _check_encoding(enc, "depth_encoding")
    if "kind" in enc:  # one encoding for every split
        _check_encoding(enc, "depth_encoding")
        out = {s: _freeze_encoding(enc) for s in SPLITS}
        return out
    extra = set(enc) - set(SPLITS)
    if extra or "train" not in enc or "test" not in enc:
        raise ValueError("depth_encoding: expected either one encoding (with 'kind') or an object with "
                         f"keys 'train', 'test' and optionally 'replay'; got keys {sorted(enc)}")
    for s in enc:
        _check_encoding(enc[s], f"depth_encoding.{s}")
    out = {s: _freeze_encoding(enc[s]) for s in enc}
    out.setdefault("replay", dict(out["train"]))
    return out


def _check_camera(cam) -> tuple:
    """The ``camera`` field: [fx, fy, cx, cy, width, height] of the depth frames, in pixels."""
    ok = isinstance(cam, (list, tuple)) and len(cam) == 6 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf") for v in cam)
    if not ok or min(cam[0], cam[1], cam[4], cam[5]) <= 0:
        raise ValueError(f"camera: expected [fx, fy, cx, cy, width, height] of the depth frames in pixels "
                         f"(positive focal lengths and size), got {cam!r}")
    return (float(cam[0]), float(cam[1]), float(cam[2]), float(cam[3]), int(cam[4]), int(cam[5]))


@dataclass(frozen=True)
class DomainSpec:
    """One domain: index files, depth units, network input size and augmentation recipe.

    CSV names are file names under the data root.  `depth_encoding` maps each split
    ("train", "test", "replay") to how its depth files decode to metres.
    """

    name: str
    letter: str
    train_csv: str
    test_csv: str
    replay_csv: str
    min_depth: float = 1e-3
    max_depth: float = 10.0
    input_size: Tuple[int, int] = (228, 304)
    transform: str = "nyu"
    depth_encoding: Dict[str, dict] = field(default_factory=lambda: normalize_encodings(DEFAULT_ENCODING))
    source: str = "generic_png"
    eval_crop: str = "none"
    description: str = ""
    resize: Optional[Union[int, Tuple[int, int]]] = None
    rgb_to_depth_size: bool = False
    alt_roots: Tuple[str, ...] = ()
    camera: Optional[Tuple[float, float, float, float, int, int]] = None  # fx, fy, cx, cy, width, height

    def __post_init__(self):
        self._check_types()
        # Normalise containers so JSON-loaded and code-built specs compare equal.
        object.__setattr__(self, "letter", str(self.letter).upper())
        object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))
        object.__setattr__(self, "depth_encoding", normalize_encodings(self.depth_encoding))
        object.__setattr__(self, "alt_roots", tuple(self.alt_roots))
        if self.camera is not None:
            object.__setattr__(self, "camera", _check_camera(self.camera))
        if isinstance(self.resize, (list, tuple)):
            object.__setattr__(self, "resize", tuple(int(v) for v in self.resize))
        self._validate()

    def _check_types(self) -> None:
        """Types JSON can get wrong in ways the normalisation would hide: "no" is a true string,
        "kitti" would become the roots k, i, t, t, i, and Infinity is a float."""
        if not isinstance(self.rgb_to_depth_size, bool):
            raise ValueError(f"rgb_to_depth_size: expected true or false, got {self.rgb_to_depth_size!r}")
        roots = self.alt_roots
        if isinstance(roots, (str, bytes)) or not isinstance(roots, (list, tuple)) or not all(
                isinstance(r, str) and r for r in roots):
            raise ValueError(f"alt_roots: expected a list of folder names, e.g. [\"kitti\"], got {roots!r}")
        for f in ("min_depth", "max_depth"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or abs(v) == float("inf"):
                raise ValueError(f"{f}: expected a finite number of metres, got {v!r}")
        size = self.input_size
        if not isinstance(size, (list, tuple)) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in size):
            raise ValueError(f"input_size: expected [H, W] with positive ints, got {size!r}")

    def _validate(self) -> None:
        """Raise ValueError naming the field that is wrong."""
        if not re.fullmatch(r"[a-z0-9][a-z0-9_\-]*", self.name or ""):
            raise ValueError(f"name: expected lower-case letters, digits, '_' or '-', got {self.name!r}")
        if not re.fullmatch(r"[A-Z]", self.letter):
            raise ValueError(f"letter: expected a single letter A-Z, got {self.letter!r}")
        for f in ("train_csv", "test_csv", "replay_csv"):
            if not isinstance(getattr(self, f), str) or not getattr(self, f):
                raise ValueError(f"{f}: expected a file name, got {getattr(self, f)!r}")
        if not (0 <= self.min_depth < self.max_depth):
            raise ValueError(f"min_depth/max_depth: expected 0 <= min < max, got {self.min_depth}, {self.max_depth}")
        if len(self.input_size) != 2 or min(self.input_size) <= 0:
            raise ValueError(f"input_size: expected [H, W] with positive ints, got {self.input_size!r}")
        if self.transform not in TRANSFORMS:
            raise ValueError(f"transform: expected one of {TRANSFORMS}, got {self.transform!r}")
        if self.source not in SOURCES:
            raise ValueError(f"source: expected one of {SOURCES}, got {self.source!r}")
        if self.eval_crop not in EVAL_CROPS:
            raise ValueError(f"eval_crop: expected one of {EVAL_CROPS}, got {self.eval_crop!r}")
        r = self.resize
        if r is not None and not ((isinstance(r, int) and r > 0) or (isinstance(r, tuple) and len(r) == 2 and min(r) > 0)):
            raise ValueError(f"resize: expected null, a positive int (short side) or [H, W], got {r!r}")

    def __hash__(self):
        # The dict field makes the generated hash fail; name and letter are unique anyway.
        return hash((self.name, self.letter))

    def encoding(self, split: str) -> dict:
        """Depth encoding of one split ("replay" = training rows)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return dict(self.depth_encoding.get(split) or self.depth_encoding["train"])

    def csv_name(self, split: str) -> str:
        """Index CSV file name of a split."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return getattr(self, f"{split}_csv")

    def to_dict(self) -> dict:
        """JSON-serialisable dict; `domain_from_dict(spec.to_dict()) == spec`."""
        d = dataclasses.asdict(self)
        d["input_size"] = list(self.input_size)
        d["alt_roots"] = list(self.alt_roots)
        if self.camera is not None:
            d["camera"] = list(self.camera)
        if isinstance(self.resize, tuple):
            d["resize"] = list(self.resize)
        return d


# ----------------------------------------------------------------------------- built-in domains
NYU = DomainSpec(
    name="nyu", letter="N",
    train_csv="nyu2_train.csv", test_csv="nyu2_test.csv", replay_csv="replay_nyu.csv",
    min_depth=1e-3, max_depth=10.0, input_size=(228, 304), transform="nyu",
    # CSV release: training depth is 8-bit (value/255*10 m), test depth 16-bit millimetres.
    depth_encoding={"train": {"kind": "png", "scale": 10.0 / 255.0, "bits": 8},
                    "test": {"kind": "png", "scale": 0.001, "bits": 16}},
    source="nyu_csv", eval_crop="eigen", resize=240,
    description="NYU-v2 indoor (Kinect), CSV-indexed release; 640x480; depth up to 10 m.",
)
KITTI = DomainSpec(
    name="kitti", letter="K",
    train_csv="kitti_train_sparse.csv", test_csv="kitti_val_select.csv", replay_csv="replay_kitti.csv",
    min_depth=1e-3, max_depth=80.0, input_size=(320, 480), transform="kitti",
    depth_encoding={"kind": "png", "scale": 1.0 / 256.0, "bits": 16},
    source="kitti", eval_crop="garg", resize=None,
    # The authors' KITTI CSVs are relative to datasets/kitti/, the others to datasets/.
    alt_roots=("kitti",),
    description="KITTI outdoor driving, sparse LiDAR ground truth (16-bit PNG /256, 0 = none); "
                "random 480x320 crops anchored at the bottom of the image; depth up to 80 m.",
)
SCANNET = DomainSpec(
    name="scannet", letter="S",
    train_csv="scannet_train.csv", test_csv="scannet_test.csv", replay_csv="replay_scannet.csv",
    min_depth=1e-3, max_depth=10.0, input_size=(228, 304), transform="scannet",
    depth_encoding={"kind": "png", "scale": 0.001, "bits": 16},
    source="scannet", eval_crop="none", resize=(240, 320), rgb_to_depth_size=True,
    description="ScanNet indoor (structure sensor); colour 1296x968 resized to the 640x480 depth; "
                "depth up to ~6 m (10 m sensor limit); 0 = hole.",
)
BUILTIN = (NYU, KITTI, SCANNET)


@dataclass(frozen=True)
class Intrinsics:
    """A pinhole camera's intrinsics at one image size (pixels): what a head learned (a checkpoint's
    ``cameras``), what a frame is assumed to have (``inference.frames.resolve_camera``), what a
    renderer projects with (``data.synthetic.RenderCamera``)."""
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def resized(self, width: int, height: int) -> "Intrinsics":
        """The same camera at another image size (the image resized, not cropped)."""
        sx, sy = width / self.width, height / self.height
        return Intrinsics(self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy, int(width), int(height))

    @property
    def focal_centre(self) -> Tuple[float, float, float, float]:
        """(fx, fy, cx, cy)."""
        return self.fx, self.fy, self.cx, self.cy

    @property
    def size(self) -> Tuple[int, int]:
        """(W, H)."""
        return self.width, self.height

    @property
    def hfov_deg(self) -> float:
        return math.degrees(2.0 * math.atan(0.5 * self.width / self.fx))

    def as_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d) -> "Intrinsics":
        return cls(float(d["fx"]), float(d["fy"]), float(d["cx"]), float(d["cy"]), int(d["width"]),
                   int(d["height"]))


@dataclass(frozen=True)
class Sensor:
    """The real sensor of a built-in domain: what synthetic.py renders, what predict.py's point clouds
    assume when no --intrinsics is given, and the frame sizes the test fixtures imitate."""
    depth: Intrinsics                                # the depth map's camera at its frame size
    color_size: Tuple[int, int]                      # (W, H) of the colour image

    @property
    def frame_size(self) -> Tuple[int, int]:
        """(W, H) of the depth map."""
        return self.depth.size


SENSORS: Dict[str, Sensor] = {
    "N": Sensor(Intrinsics(518.86, 519.47, 325.58, 253.74, 640, 480), (640, 480)),
    "K": Sensor(Intrinsics(721.5, 721.5, 596.5, 149.9, 1216, 352), (1216, 352)),
    "S": Sensor(Intrinsics(577.6, 577.6, 319.5, 239.5, 640, 480), (1296, 968)),
}

_REGISTRY: List[DomainSpec] = list(BUILTIN)
_PROVISIONAL: set = set()  # names registered from a checkpoint's description (register_domain)


# ----------------------------------------------------------------------------- registry
def all_domains() -> List[DomainSpec]:
    """Every registered domain, built-ins first, then custom ones in registration order."""
    return list(_REGISTRY)


def _known() -> str:
    return ", ".join(f"{d.letter}/{d.name}" for d in _REGISTRY)


def get_domain(key) -> DomainSpec:
    """Domain by letter ("N") or name ("nyu"), case-insensitive; a DomainSpec is returned as is."""
    if isinstance(key, DomainSpec):
        return key
    k = str(key).strip()
    for d in _REGISTRY:
        if k.upper() == d.letter or k.lower() == d.name:
            return d
    raise ValueError(f"unknown domain {key!r}; known domains: {_known()} "
                     f"(custom domains come from <data_root>/{DOMAINS_JSON} or domains.load_domain_file)")


def register_domain(spec: DomainSpec, provisional: bool = False) -> DomainSpec:
    """Add a domain.  Re-registering an identical spec is a no-op; a clash of letter or name is an error.

    ``provisional``: the description a checkpoint carries (models/checkpoint.register_domains); a
    later registration of the same name and letter (the user's domains.json, maybe edited since)
    replaces it instead of clashing."""
    if not isinstance(spec, DomainSpec):
        raise TypeError(f"register_domain expects a DomainSpec, got {type(spec).__name__}")
    for i, d in enumerate(_REGISTRY):
        if d == spec:
            return d
        if d.letter == spec.letter and d.name == spec.name and d.name in _PROVISIONAL and not provisional:
            _PROVISIONAL.discard(d.name)
            _REGISTRY[i] = spec
            return spec
        if d.letter == spec.letter or d.name == spec.name:
            raise ValueError(f"cannot register domain {spec.letter}/{spec.name}: letter or name already used "
                             f"by {d.letter}/{d.name}; known domains: {_known()}")
    _REGISTRY.append(spec)
    if provisional:
        _PROVISIONAL.add(spec.name)
    return spec


def unregister_domain(key) -> None:
    """Remove a custom domain (built-ins cannot be removed); mainly for tests."""
    spec = get_domain(key)
    if spec in BUILTIN:
        raise ValueError(f"built-in domain {spec.letter}/{spec.name} cannot be removed")
    _REGISTRY.remove(spec)
    _PROVISIONAL.discard(spec.name)


def parse_order(order) -> List[DomainSpec]:
    """Learning order "NKS" (letters) or "nyu,kitti" (names) -> list of specs; no repeats."""
    if isinstance(order, (list, tuple)):
        keys = list(order)
    else:
        text = str(order).strip()
        keys = [k.strip() for k in text.split(",")] if "," in text else list(text)
    if not keys or any(k == "" for k in keys):
        raise ValueError(f"empty or malformed domain order {order!r}; e.g. 'NKS'; known domains: {_known()}")
    specs = [get_domain(k) for k in keys]
    letters = [s.letter for s in specs]
    repeated = sorted({l for l in letters if letters.count(l) > 1})
    if repeated:
        raise ValueError(f"domain order {order!r} repeats {', '.join(repeated)}; each domain is learned once")
    return specs


# ----------------------------------------------------------------------------- JSON
_FIELDS = {f.name for f in dataclasses.fields(DomainSpec)}


def domain_from_dict(d: dict, where: str = "domain") -> DomainSpec:
    """Build a spec from a JSON object, filling defaults; errors name `where` and the field."""
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected a JSON object describing a domain, got {type(d).__name__}")
    unknown = sorted(set(d) - _FIELDS)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; known fields: {sorted(_FIELDS)}")
    for req in ("name", "letter"):
        if req not in d:
            raise ValueError(f"{where}: missing required field '{req}'")
    name = d["name"]
    kw = {"train_csv": f"{name}_train.csv", "test_csv": f"{name}_test.csv",
          "replay_csv": f"replay_{name}.csv", "depth_encoding": DEFAULT_ENCODING}
    kw.update(d)
    try:
        return DomainSpec(**kw)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where} (domain {name!r}): {e}") from None


def load_domains_file(path: str, register: bool = True) -> List[DomainSpec]:
    """Read a JSON list of domains (or {"domains": [...]}, or one object) and register them."""
    data = read_json(path, required=True, what="domain file")
    if isinstance(data, dict) and "domains" in data:
        data = data["domains"]
    items = data if isinstance(data, list) else [data]
    specs = [domain_from_dict(o, f"{path}: domain #{i}") for i, o in enumerate(items)]
    if register:
        for s in specs:
            try:
                register_domain(s)
            except ValueError as e:
                raise ValueError(f"{path}: {e}") from None
    return specs


def load_domain_file(path: str, register: bool = True) -> DomainSpec:
    """Read a JSON file describing one custom domain (format: module docstring) and register it."""
    data = read_json(path, required=True, what="domain file")
    if isinstance(data, list) or (isinstance(data, dict) and "domains" in data):
        raise ValueError(f"{path}: holds a list of domains; use load_domains_file for it")
    return load_domains_file(path, register)[0]


def load_domains_from_root(data_root: str, register: bool = True) -> List[DomainSpec]:
    """Register the custom domains of `<data_root>/domains.json`; [] if there is no such file."""
    path = os.path.join(data_root, DOMAINS_JSON)
    if not os.path.isfile(path):
        return []
    return load_domains_file(path, register)


def save_domains_file(specs: Sequence[DomainSpec], path: str) -> None:
    """Write specs as a JSON list that load_domains_file reads back."""
    write_json(path, [s.to_dict() for s in specs], round_digits=None)


def run_name(letters: str, strategy: str) -> str:
    """Checkpoint stem: the order, plus the strategy unless it is ours. A first stage is the same
    single-domain model for every lifelong strategy, so its name has no suffix."""
    if strategy == "ours" or len(letters) == 1:
        return letters
    return f"{letters}_{strategy}"


def clamp_depth(depth, depth_range):
    """``depth`` (metres, an array) clipped to a head's ``depth_range`` (min, max): the one clamp
    of every output (``inference.images.Predictor.clamp``: predict.py, the streams and the demo;
    ``DepthPredictor.predict_image``'s intervals and ``write_outputs``; the calibration on whole
    frames, evaluation/frame_calibration.py). Where the range comes from is the caller's."""
    import numpy as np
    lo, hi = depth_range
    return np.clip(depth, lo, hi)
