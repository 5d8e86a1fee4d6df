"""Index CSVs (train, test, replay) of a real dataset on disk: the library behind prepare_data.py.

A source (:class:`NyuSource`, :class:`KittiSource`, :class:`ScanNetSource`, :class:`NyuH5Source`,
:class:`NyuMatSource`, :class:`GenericSource`; :data:`SOURCES` by command name) finds the file
pairs of one layout; :func:`prepare` checks every pair, writes the CSVs as :class:`IndexOptions`
say and returns a :class:`Report` of the rows written and the files skipped with their reasons.
:func:`draw_replay` (re)draws a replay CSV. Rows are `image_path,depth_path` relative to the data
root. A dataset this cannot index raises :class:`base.errors.InputError`. The settings' help texts
(field metadata) are the command's option help (cli/prepare_data.py).
"""

from __future__ import annotations

import csv
import os
import random
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Iterable, List, Optional, Sequence, Tuple

from PIL import Image
from tqdm import tqdm

from base import domains as dom
from base.errors import InputError

Pair = Tuple[str, str]   # absolute (or cwd-relative) image path, depth path (or .mat frame number)
IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".ppm")
SIXTEEN = ("I;16", "I;16B", "I;16L", "I")


# ============================================================================ report
class Report:
    """Counts of written rows and skipped files with their reasons."""

    def __init__(self, name: str):
        self.name = name
        self.skipped: "OrderedDict[str, List[str]]" = OrderedDict()
        self.written: List[Tuple[str, int]] = []
        self.notes: List[str] = []
        self.skip_list: Optional[str] = None   # the file of every skipped path (prepare writes it)

    def skip(self, path: str, reason: str) -> None:
        self.skipped.setdefault(reason, []).append(path)

    @property
    def n_skipped(self) -> int:
        return sum(len(v) for v in self.skipped.values())

    def text(self, examples: int = 10) -> str:
        """Human-readable summary; at most `examples` paths per reason."""
        lines = [f"{self.name}: wrote " + ", ".join(f"{p} ({n} rows)" for p, n in self.written)]
        lines += [f"note: {n}" for n in self.notes]
        if not self.skipped:
            lines.append("skipped: nothing")
        for reason, paths in self.skipped.items():
            lines.append(f"skipped {len(paths)}: {reason}")
            lines += [f"    {p}" for p in paths[:examples]]
            if len(paths) > examples:
                lines.append(f"    ... and {len(paths) - examples} more")
        return "\n".join(lines)

    def write_full(self, path: str) -> None:
        """Every skipped file, one `reason<TAB>path` per line."""
        with open(path, "w", encoding="utf-8") as f:
            for reason, paths in self.skipped.items():
                f.writelines(f"{reason}\t{p}\n" for p in paths)


# ============================================================================ helpers
def natural_key(s: str):
    """Sort '2.jpg' before '10.jpg'."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def rel_to_root(path: str, data_root: str) -> str:
    """Path as written in a CSV: relative to the data root, forward slashes."""
    return os.path.relpath(os.path.abspath(path), os.path.abspath(data_root)).replace(os.sep, "/")


def read_csv_rows(path: str) -> List[List[str]]:
    """Non-blank rows of an index CSV."""
    with open(path, newline="", encoding="utf-8") as f:
        return [r for r in csv.reader(f) if r and any(x.strip() for x in r)]


def write_rows(path: str, rows: Iterable[Sequence[str]]) -> int:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    rows = list(rows)
    from base.safeio import atomic_write  # an index CSV appears complete or not at all
    with atomic_write(path, "w", encoding="utf-8") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)
    return len(rows)


def write_replay_csv(train_csv: str, out_csv: str, n: int = 500, seed: int = 0) -> int:
    """Write `n` random rows (without replacement, seeded) of `train_csv` to `out_csv`, unchanged.

    All rows (shuffled) if the training index has fewer than `n`.  Returns the number written.
    """
    if not os.path.isfile(train_csv):
        raise FileNotFoundError(f"training index {train_csv!r} does not exist; write it first "
                                f"(python prepare_data.py <dataset> --src ...)")
    rows = read_csv_rows(train_csv)
    if not rows:
        raise InputError(f"training index {train_csv!r} has no rows to draw a replay set from")
    picks = random.Random(seed).sample(range(len(rows)), min(int(n), len(rows)))
    return write_rows(out_csv, [rows[i] for i in picks])


def check_pair(image: str, depth: str, bits: Optional[int], same_size: bool, verify: bool) -> Optional[str]:
    """Reason to skip a pair, or None.  Reads headers only unless `verify` (full decode)."""
    try:
        with Image.open(image) as im:
            if verify:
                im.load()
            isize = im.size
    except Exception as e:  # noqa: BLE001 - any failure means "cannot be read"
        return f"unreadable image ({type(e).__name__})"
    try:
        with Image.open(depth) as d:
            if verify:
                d.load()
            dmode, dsize = d.mode, d.size
    except Exception as e:  # noqa: BLE001
        return f"unreadable depth ({type(e).__name__})"
    if dmode not in ("L",) + SIXTEEN:
        return f"depth is not a single-channel PNG (mode {dmode})"
    if bits == 8 and dmode != "L":
        return "depth is not 8-bit as expected"
    if bits == 16 and dmode not in SIXTEEN:
        return "depth is not 16-bit as expected"
    if same_size and isize != dsize:
        return "image and depth sizes differ"
    return None


def filter_pairs(pairs: List[Pair], report: Report, bits, same_size, check=True, verify=False, desc="") -> List[Pair]:
    """Pairs that pass check_pair (with a progress bar); the others go to the report."""
    if not check:
        return pairs
    keep = []
    for img, dep in tqdm(pairs, desc=f"checking {desc}", unit="pair", leave=False, disable=None):
        why = check_pair(img, dep, bits, same_size, verify)
        if why:
            report.skip(f"{img} | {dep}", why)
        else:
            keep.append((img, dep))
    return keep


def first_dir(*candidates: str) -> Optional[str]:
    return next((c for c in candidates if os.path.isdir(c)), None)


def _need_dir(path: Optional[str], what: str) -> str:
    if path is None or not os.path.isdir(path):
        raise InputError(what)
    return path


# ============================================================================ NYU CSV release
def scan_nyu(src: str, report: Report) -> Tuple[List[Pair], List[Pair]]:
    """data/nyu2_train/<scene>/<n>.jpg + <n>.png and data/nyu2_test/<id>_colors.png + _depth.png."""
    train_dir = first_dir(os.path.join(src, "data", "nyu2_train"), os.path.join(src, "nyu2_train"))
    test_dir = first_dir(os.path.join(src, "data", "nyu2_test"), os.path.join(src, "nyu2_test"))
    if train_dir is None and test_dir is None:
        raise InputError(f"no data/nyu2_train or data/nyu2_test under {src!r} (the NYU-v2 CSV release, "
                         f"unzipped); for the sparse-to-dense .h5 layout use `prepare_data.py nyu_h5`")
    train = []
    if train_dir:
        for scene in sorted(os.listdir(train_dir), key=natural_key):
            sdir = os.path.join(train_dir, scene)
            if os.path.isdir(sdir):
                train += _pair_by_stem(sdir, report, image_ext=(".jpg", ".jpeg"), depth_ext=(".png",))
    test = []
    if test_dir:
        names = set(os.listdir(test_dir))
        for name in sorted(names, key=natural_key):
            if name.endswith("_colors.png"):
                dep = name[: -len("_colors.png")] + "_depth.png"
                if dep in names:
                    test.append((os.path.join(test_dir, name), os.path.join(test_dir, dep)))
                else:
                    report.skip(os.path.join(test_dir, name), "image without depth")
            elif name.endswith("_depth.png") and name[: -len("_depth.png")] + "_colors.png" not in names:
                report.skip(os.path.join(test_dir, name), "depth without image")
    return train, test


def _pair_by_stem(folder: str, report: Report, image_ext, depth_ext, depth_folder: Optional[str] = None,
                  keep=lambda stem: True) -> List[Pair]:
    """Pairs of files with the same stem: images in `folder`, depths in `depth_folder` (or the same).
    A stem with depth files of several extensions takes the first of `depth_ext` (the others skipped)."""
    depth_folder = depth_folder or folder
    dfiles, rank = {}, {e: i for i, e in enumerate(depth_ext)}
    for n in sorted(os.listdir(depth_folder), key=lambda n: (rank.get(os.path.splitext(n)[1].lower(), 0), n)):
        s, e = os.path.splitext(n)
        if e.lower() not in depth_ext:
            continue
        if s in dfiles:
            if keep(s):
                report.skip(os.path.join(depth_folder, n), f"another depth file of this stem is read "
                                                           f"(first of {', '.join(depth_ext)})")
            continue
        dfiles[s] = n
    pairs, used = [], set()
    for n in sorted(os.listdir(folder), key=natural_key):
        s, e = os.path.splitext(n)
        if e.lower() not in image_ext or (folder == depth_folder and e.lower() in depth_ext):
            continue
        if not keep(s):
            continue
        if s in dfiles:
            pairs.append((os.path.join(folder, n), os.path.join(depth_folder, dfiles[s])))
            used.add(s)
        else:
            report.skip(os.path.join(folder, n), "image without depth")
    for s, n in sorted(dfiles.items()):
        if s not in used and keep(s):
            report.skip(os.path.join(depth_folder, n), "depth without image")
    return pairs


# ============================================================================ KITTI
KITTI_VAL_RE = re.compile(r"^(?P<drive>.+)_image_(?P<frame>\d+)_image_(?P<cam>\d+)\.png$")


def kitti_gt_name(image_name: str) -> Optional[str]:
    """val_selection_cropped image name -> ground-truth name (None if the name does not match)."""
    m = KITTI_VAL_RE.match(image_name)
    if not m:
        return None
    return f"{m['drive']}_groundtruth_depth_{m['frame']}_image_{m['cam']}.png"


def scan_kitti(src: str, raw: Optional[str], report: Report) -> Tuple[List[Pair], List[Pair]]:
    """train/<drive>/proj_depth/groundtruth/image_0X/<f>.png with <raw>/<date>/<drive>/image_0X/data/<f>.png;
    val_selection_cropped/{image,groundtruth_depth}/ pairs for the test index."""
    train_dir = first_dir(os.path.join(src, "train"))
    val_dir = first_dir(os.path.join(src, "val_selection_cropped"), os.path.join(src, "val_selection"))
    if train_dir is None and val_dir is None:
        raise InputError(f"no train/ or val_selection_cropped/ under {src!r} (the KITTI depth benchmark)")
    train = []
    if train_dir:
        raw = raw or first_dir(os.path.join(src, "raw"), os.path.join(src, "imgs"))
        _need_dir(raw, f"KITTI raw images not found: pass --raw /path/to/kitti_raw (holding <date>/<drive>/"
                       f"image_02/data/*.png); tried {os.path.join(src, 'raw')} and {os.path.join(src, 'imgs')}")
        train = _kitti_train(train_dir, raw, report)
    test = _kitti_val(val_dir, report) if val_dir else []
    return train, test


def _kitti_train(train_dir: str, raw: str, report: Report) -> List[Pair]:
    pairs = []
    for drive in sorted(os.listdir(train_dir)):
        gt_root = os.path.join(train_dir, drive, "proj_depth", "groundtruth")
        if not os.path.isdir(gt_root):
            continue
        for cam in sorted(os.listdir(gt_root)):
            for name in sorted(os.listdir(os.path.join(gt_root, cam)), key=natural_key):
                if not name.endswith(".png"):
                    continue
                dep = os.path.join(gt_root, cam, name)
                img = os.path.join(raw, drive[:10], drive, cam, "data", name)
                if os.path.isfile(img):
                    pairs.append((img, dep))
                else:
                    report.skip(dep, "depth without raw image")
    return pairs


def _kitti_val(val_dir: str, report: Report) -> List[Pair]:
    idir, ddir = os.path.join(val_dir, "image"), os.path.join(val_dir, "groundtruth_depth")
    dnames = set(os.listdir(ddir)) if os.path.isdir(ddir) else set()
    pairs, used = [], set()
    for name in sorted(os.listdir(idir)) if os.path.isdir(idir) else []:
        gt = kitti_gt_name(name)
        if gt is None:
            report.skip(os.path.join(idir, name), "name not <drive>_image_<frame>_image_<cam>.png")
        elif gt in dnames:
            pairs.append((os.path.join(idir, name), os.path.join(ddir, gt)))
            used.add(gt)
        else:
            report.skip(os.path.join(idir, name), "image without depth")
    for gt in sorted(dnames - used):
        report.skip(os.path.join(ddir, gt), "depth without image")
    return pairs


# ============================================================================ ScanNet
def find_scannet_scenes(src: str) -> List[str]:
    """Scene folders (scene*/ with color/ and depth/) directly under src or one level deeper."""
    found = []
    for base in [src] + [os.path.join(src, d) for d in sorted(os.listdir(src))]:
        if not os.path.isdir(base):
            continue
        for d in sorted(os.listdir(base)):
            p = os.path.join(base, d)
            if d.startswith("scene") and os.path.isdir(os.path.join(p, "color")) and os.path.isdir(os.path.join(p, "depth")):
                found.append(p)
    return found


def split_scenes(scenes: List[str], test_scenes_file: Optional[str], fraction: float, seed: int,
                 report: Report) -> Tuple[List[str], List[str]]:
    """Test scenes from a file (names, one per line), from parent folders named *train*/*test*, or a
    seeded random fraction of the scenes."""
    if test_scenes_file:
        with open(test_scenes_file, encoding="utf-8") as f:
            names = {l.strip() for l in f if l.strip()}
        report.notes.append(f"test scenes from {test_scenes_file} ({len(names)} names)")
        missing = names - {os.path.basename(s) for s in scenes}
        for m in sorted(missing):
            report.skip(m, "test scene listed but not found")
        return ([s for s in scenes if os.path.basename(s) not in names],
                [s for s in scenes if os.path.basename(s) in names])
    parents = {os.path.basename(os.path.dirname(s)).lower() for s in scenes}
    if any("test" in p for p in parents) and any("train" in p for p in parents):
        report.notes.append("split by parent folders (*train* / *test*)")
        par = lambda s: os.path.basename(os.path.dirname(s)).lower()
        return [s for s in scenes if "train" in par(s)], [s for s in scenes if "test" in par(s)]
    k = int(round(len(scenes) * fraction))
    k = min(max(k, 1 if len(scenes) > 1 and fraction > 0 else 0), max(len(scenes) - 1, 0))
    test = set(random.Random(seed).sample(scenes, k))
    report.notes.append(f"{k} of {len(scenes)} scenes drawn as test scenes (fraction {fraction}, seed {seed})")
    return [s for s in scenes if s not in test], sorted(test)


def scan_scannet(src, test_scenes, fraction, seed, stride, report) -> Tuple[List[Pair], List[Pair]]:
    """scene*/color/<n>.jpg with scene*/depth/<n>.png, every `stride`-th frame number."""
    scenes = find_scannet_scenes(src)
    if not scenes:
        raise InputError(f"no scene*/color + scene*/depth folders under {src!r} (exported ScanNet frames)")
    train_s, test_s = split_scenes(scenes, test_scenes, fraction, seed, report)
    keep = (lambda s: not s.isdigit() or int(s) % stride == 0) if stride > 1 else (lambda s: True)

    def pairs(ss):
        out = []
        for s in ss:
            out += _pair_by_stem(os.path.join(s, "color"), report, (".jpg", ".jpeg", ".png"), (".png",),
                                 os.path.join(s, "depth"), keep)
        return out
    return pairs(train_s), pairs(test_s)


# ============================================================================ NYU HDF5 / .mat / generic
def scan_nyu_h5(src: str, report: Report, check: bool) -> Tuple[List[Pair], List[Pair]]:
    """nyudepthv2/{train,val}/<scene>/*.h5 (val is the 654-image test set)."""
    base = src if os.path.isdir(os.path.join(src, "train")) or os.path.isdir(os.path.join(src, "val")) \
        else os.path.join(src, "nyudepthv2")
    out = []
    for split in ("train", "val"):
        files = []
        d = os.path.join(base, split)
        for dirpath, _, names in os.walk(d):
            files += [os.path.join(dirpath, n) for n in names if n.lower().endswith((".h5", ".hdf5"))]
        files.sort(key=natural_key)
        out.append([(f, f) for f in _check_h5(files, report, check, split)])
    if not out[0] and not out[1]:
        raise InputError(f"no .h5 files under {base}/train or {base}/val (sparse-to-dense nyudepthv2 layout)")
    return out[0], out[1]


def _check_h5(files: List[str], report: Report, check: bool, desc: str) -> List[str]:
    if not check:
        return files
    import h5py

    keep = []
    for f in tqdm(files, desc=f"checking {desc}", unit="file", leave=False, disable=None):
        try:
            with h5py.File(f, "r") as h:
                ok = "rgb" in h and "depth" in h
        except Exception as e:  # noqa: BLE001
            report.skip(f, f"unreadable HDF5 ({type(e).__name__})")
            continue
        if ok:
            keep.append(f)
        else:
            report.skip(f, "HDF5 without 'rgb' and 'depth' datasets")
    return keep


def scan_nyu_mat(mat: str, splits: Optional[str]) -> Tuple[List[Pair], List[Pair]]:
    """Rows `<mat>,<1-based frame>`; without a split file every frame goes to the test index."""
    import loaders

    if not os.path.isfile(mat):
        raise InputError(f".mat file {mat!r} does not exist")
    n = loaders.mat_num_frames(mat)
    if splits is None:
        return [], [(mat, str(i)) for i in range(1, n + 1)]
    return ([(mat, str(i)) for i in loaders.split_indices(n, "train", splits)],
            [(mat, str(i)) for i in loaders.split_indices(n, "test", splits)])


def scan_generic(src, rgb_dir, depth_dir, fraction, seed, report) -> Tuple[List[Pair], List[Pair]]:
    """<src>/<rgb_dir>/<stem>.<img> with <src>/<depth_dir>/<stem>.png|.npy|.exr; seeded random test fraction."""
    rd, dd = os.path.join(src, rgb_dir), os.path.join(src, depth_dir)
    _need_dir(rd, f"no folder {rd!r} (colour images; see --rgb-dir)")
    _need_dir(dd, f"no folder {dd!r} (depth maps; see --depth-dir)")
    pairs = _pair_by_stem(rd, report, IMAGE_EXT, (".png", ".npy", ".exr"), dd)
    k = int(round(len(pairs) * fraction))
    test_idx = set(random.Random(seed).sample(range(len(pairs)), k))
    return ([p for i, p in enumerate(pairs) if i not in test_idx], [p for i, p in enumerate(pairs) if i in test_idx])


# ============================================================================ writing
def spec_csv(spec: dom.DomainSpec, split: str) -> str:
    """A split's index CSV name from the domain's description, which must be a relative name inside
    the data root: a downloaded dataset's domains.json must not make this command write anywhere
    else (an absolute path, or '../' out of the root). --train-csv etc. are the user's own choice."""
    name = spec.csv_name(split)
    parts = Path(name.replace("\\", "/")).parts
    if os.path.isabs(name) or ".." in parts or not parts:
        raise InputError(f"domain {spec.name!r}: {split}_csv {name!r}: expected a file name inside "
                         f"the data root (no absolute path, no '..'); fix {dom.DOMAINS_JSON} or give "
                         f"--{split}-csv")
    return name


def custom_domain(data_root: str, key: str) -> dom.DomainSpec:
    """A domain by letter or name, custom ones read from <data_root>/domains.json."""
    try:
        dom.load_domains_from_root(data_root)
        return dom.get_domain(key)
    except ValueError as e:  # a malformed domains.json, an unknown domain
        raise InputError(str(e)) from None


def _option(help: str, default=None):
    """A settings field; ``help`` is the command's option help (cli/prepare_data.py builds it)."""
    return field(default=default, metadata={"help": help})


def _required(help: str):
    return field(metadata={"help": help})


@dataclass(frozen=True)
class IndexOptions:
    """Where and how the index CSVs of any source are written."""
    data_root: str = _option("folder the CSVs are written to; CSV paths are relative to it (default: datasets)",
                               dom.DEFAULT_DATA_ROOT)
    train_csv: Optional[str] = _option("training index file name (default: the domain's, e.g. nyu2_train.csv)")
    test_csv: Optional[str] = _option("test index file name (default: the domain's, e.g. nyu2_test.csv)")
    replay_csv: Optional[str] = _option("replay index file name (default: the domain's, e.g. replay_nyu.csv)")
    replay_size: int = _option("training rows drawn into the replay CSV; 0 = no replay CSV (default: 500)", 500)
    seed: int = _option("seed of every random draw (default: 0)", 0)
    check: bool = _option("do not open the files (faster on huge trees; bad files then fail at load time)",
                            True)   # the help is the one of --no-check (check=False)
    verify: bool = _option("fully decode every file instead of reading headers only (slow, catches "
                             "truncated files)", False)

    def csv_name(self, spec: dom.DomainSpec, split: str) -> str:
        """The split's file name: the one given, else the domain's."""
        return getattr(self, f"{split}_csv") or spec_csv(spec, split)


Scan = Tuple[dom.DomainSpec, List[Pair], List[Pair]]   # the domain, its train and test pairs


def _checked(spec: dom.DomainSpec, train: List[Pair], test: List[Pair], report: Report, options: IndexOptions,
             bits: Tuple[Optional[int], Optional[int]], same_size: bool, desc: str = "") -> Scan:
    """The pairs that pass check_pair (the others go to the report); ``bits``: of the train and
    test depth maps (None: either)."""
    prefix = f"{desc} " if desc else ""
    keep = [filter_pairs(pairs, report, b, same_size, options.check, options.verify, prefix + split)
            for pairs, b, split in ((train, bits[0], "train"), (test, bits[1], "test"))]
    return spec, keep[0], keep[1]


@dataclass(frozen=True)
class NyuSource:
    name: ClassVar[str] = "nyu"
    summary: ClassVar[str] = "NYU-v2 CSV release (data/nyu2_train, data/nyu2_test)"
    src: str = _required("folder holding data/nyu2_train and data/nyu2_test (or those two)")

    def scan(self, report: Report, options: IndexOptions) -> Scan:
        train, test = scan_nyu(self.src, report)
        return _checked(dom.NYU, train, test, report, options, (8, 16), True, "nyu")


@dataclass(frozen=True)
class KittiSource:
    name: ClassVar[str] = "kitti"
    summary: ClassVar[str] = "KITTI depth benchmark + KITTI raw images"
    src: str = _required("depth benchmark root holding train/<drive>/proj_depth/groundtruth and "
                         "val_selection_cropped/")
    raw: Optional[str] = _option("KITTI raw root holding <date>/<drive>/image_0X/data/*.png "
                                   "(default: <src>/raw or <src>/imgs)")

    def scan(self, report: Report, options: IndexOptions) -> Scan:
        train, test = scan_kitti(self.src, self.raw, report)
        return _checked(dom.KITTI, train, test, report, options, (16, 16), True, "kitti")


@dataclass(frozen=True)
class ScanNetSource:
    name: ClassVar[str] = "scannet"
    summary: ClassVar[str] = "ScanNet exported frames (scene*/color/*.jpg, scene*/depth/*.png)"
    src: str = _required("folder holding scene* folders (directly or one level deeper)")
    test_scenes: Optional[str] = _option("text file of test scene names, one per line (default: parent folders "
                                           "named *train*/*test* if present, else a random --test-fraction)")
    test_fraction: float = _option("fraction of scenes drawn (seeded) as test scenes without --test-scenes "
                                     "(default: 0.1)", 0.1)
    stride: int = _option("keep frames whose number is a multiple of this (the authors' test set used 12; "
                            "default: 1)", 1)

    def scan(self, report: Report, options: IndexOptions) -> Scan:
        train, test = scan_scannet(self.src, self.test_scenes, self.test_fraction, options.seed, self.stride,
                                   report)
        return _checked(dom.SCANNET, train, test, report, options, (16, 16), False, "scannet")


@dataclass(frozen=True)
class NyuH5Source:
    name: ClassVar[str] = "nyu_h5"
    summary: ClassVar[str] = "NYU-v2 sparse-to-dense HDF5 layout (train/ and val/ of .h5 files)"
    src: str = _required("the nyudepthv2 folder (or its parent)")

    def scan(self, report: Report, options: IndexOptions) -> Scan:
        return (dom.NYU,) + scan_nyu_h5(self.src, report, options.check)


@dataclass(frozen=True)
class NyuMatSource:
    name: ClassVar[str] = "nyu_mat"
    summary: ClassVar[str] = "NYU-v2 official labeled file nyu_depth_v2_labeled.mat (v7.3)"
    mat: str = _required("path to nyu_depth_v2_labeled.mat")
    splits: Optional[str] = _option("official splits.mat (testNdxs) or a .txt of 1-based test indices; "
                                      "without it every frame goes to the test index")

    def scan(self, report: Report, options: IndexOptions) -> Scan:
        return (dom.NYU,) + scan_nyu_mat(self.mat, self.splits)


@dataclass(frozen=True)
class GenericSource:
    name: ClassVar[str] = "generic"
    summary: ClassVar[str] = "a custom domain declared in <data-root>/domains.json"
    domain: str = _required("letter or name of the custom domain")
    src: str = _required("folder holding the colour and depth folders")
    rgb_dir: str = _option("colour folder under --src (default: rgb)", "rgb")
    depth_dir: str = _option("depth folder under --src, files matched by stem (default: depth)", "depth")
    test_fraction: float = _option("random (seeded) test fraction (default: 0.1)", 0.1)

    def scan(self, report: Report, options: IndexOptions) -> Scan:
        spec = custom_domain(options.data_root, self.domain)
        train, test = scan_generic(self.src, self.rgb_dir, self.depth_dir, self.test_fraction, options.seed, report)
        encoding = spec.encoding("train")
        if encoding.get("kind") != "png":   # .npy depth: nothing to check in a header
            return spec, train, test
        bits = encoding.get("bits")
        return _checked(spec, train, test, report, options, (bits, bits), not spec.rgb_to_depth_size)


SOURCES = {cls.name: cls for cls in (NyuSource, KittiSource, ScanNetSource, NyuH5Source, NyuMatSource,
                                     GenericSource)}


def write_indexes(spec: dom.DomainSpec, train: List[Pair], test: List[Pair], options: IndexOptions,
                  report: Report) -> None:
    """Write train/test CSVs (paths relative to the data root) and draw the replay CSV."""
    root = options.data_root
    os.makedirs(root, exist_ok=True)
    names = {split: options.csv_name(spec, split) for split in ("train", "test", "replay")}
    outside = False
    for split, pairs in (("train", train), ("test", test)):
        if not pairs:
            report.notes.append(f"no {split} pairs found: {names[split]} not written")
            continue
        rows = []
        for img, dep in pairs:
            r_img = rel_to_root(img, root)
            r_dep = dep if dep.isdigit() else rel_to_root(dep, root)
            outside |= r_img.startswith("../")
            rows.append((r_img, r_dep))
        path = os.path.join(root, names[split])
        report.written.append((path, write_rows(path, rows)))
    if outside:
        report.notes.append(f"the source is outside the data root {root!r}: rows are relative to it via '../' "
                            f"(move or symlink the data into {root} for portable indexes)")
    if train and options.replay_size > 0:
        path = os.path.join(root, names["replay"])
        report.written.append((path, write_replay_csv(os.path.join(root, names["train"]), path,
                                                      options.replay_size, options.seed)))


def prepare(source, options: IndexOptions = IndexOptions()) -> Report:
    """Index ``source`` (one of :data:`SOURCES`' classes) into ``options.data_root``; the full skip
    list goes next to the indexes (``report.skip_list``, None when nothing was skipped)."""
    report = Report(source.name)
    write_indexes(*source.scan(report, options), options, report)
    if report.skipped:
        report.skip_list = os.path.join(options.data_root, f"prepare_{report.name}_skipped.txt")
        report.write_full(report.skip_list)
    return report


@dataclass(frozen=True)
class ReplaySettings:
    """A replay CSV (re)drawn from an existing training CSV."""
    domain: str = _required("letter or name of the domain (gives the CSV names)")
    data_root: str = _option("folder of the CSVs (default: datasets)", dom.DEFAULT_DATA_ROOT)
    train_csv: Optional[str] = _option("training index to draw from (default: the domain's, under --data-root)")
    out: Optional[str] = _option("replay CSV to write (default: the domain's, under --data-root)")
    replay_size: int = _option("rows to draw (default: 500)", 500)
    seed: int = _option("seed of the draw (default: 0)", 0)


def draw_replay(settings: ReplaySettings) -> Tuple[str, int, str]:
    """Draw the replay CSV; returns (the CSV written, its row count, the training CSV drawn from)."""
    spec = custom_domain(settings.data_root, settings.domain)
    train = settings.train_csv or os.path.join(settings.data_root, spec_csv(spec, "train"))
    out = settings.out or os.path.join(settings.data_root, spec_csv(spec, "replay"))
    return out, write_replay_csv(train, out, settings.replay_size, settings.seed), train
