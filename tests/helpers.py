"""Shared test utilities: tiny data roots, tiny checkpoints, small images.

Everything here is small enough for CI on two CPU cores:

* :func:`make_data_root` writes a data root in the real on-disk formats (the CSV names and depth
  encodings of NYU-v2, KITTI and ScanNet, see shared/reference/formats.md), at a fraction of the
  real frame sizes (``frame_scale``), readable by ``loaders.get_dataset`` at ``scale <= frame_scale``.
  ``style="constant"`` makes each domain's images one distinct flat colour (plus faint noise), a
  case where nearest-prototype domain selection must be perfect even with an untrained network.
* :func:`make_net` / :func:`make_checkpoint` / :func:`save_authors_checkpoint` build small networks
  (resnet18 by default) with well-behaved outputs (positive depth around a few metres), saved in the
  project format (with the metadata ``engine/stage.py`` writes) or as an authors' state_dict-only file.
* :func:`write_image` writes test images in any PIL mode (RGB, L, RGBA, P, I;16);
  :func:`png_header_only` a PNG whose header declares a huge size (a hostile upload).
* :func:`error_of` / :func:`assert_one_error_line`: a command's one ``error:`` line (no traceback);
  :func:`predict_args`: predict.py's arguments for one forced head, quiet, on the CPU.
* Raw dataset trees, the inputs of prepare_data.py (:func:`write_nyu_release`, :func:`write_kitti`,
  :func:`write_scannet`, :func:`write_nyu_h5`, :func:`write_nyu_mat`): tiny files in each real
  on-disk format; every writer returns what it wrote (paths relative to the root and the raw
  depth values), so tests can compare decoded metres with the stored values.

Import as ``from helpers import ...`` (pytest puts tests/ on sys.path for rootdir-less test files)
or ``from tests.helpers import ...``.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import struct
import zlib
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import pytest
import torch
from PIL import Image

from base.domains import SENSORS, get_domain

ROOT = Path(__file__).resolve().parents[1]

# Real frame sizes (W, H) of the three built-in domains (base.domains.SENSORS).
FRAME_SIZES = {c: cam.frame_size for c, cam in SENSORS.items()}
SCANNET_COLOR = SENSORS["S"].color_size
# Per-domain flat colours of style="constant" (far apart in RGB).
CONSTANT_COLORS = {"N": (200, 40, 40), "K": (40, 190, 60), "S": (50, 60, 210)}
CSV_NAMES = {c: (get_domain(c).train_csv, get_domain(c).test_csv, get_domain(c).replay_csv) for c in SENSORS}


@contextlib.contextmanager
def torch_threads(n=1):
    """Run with ``n`` torch threads, then restore. On a shared, oversubscribed CPU, OpenMP's
    spin-waiting makes 2-thread convolutions 10-20x slower than 1 thread; tests use 1."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# ------------------------------------------------------------------------------------ images
def write_image(path, array_or_size, mode="RGB", seed=0) -> Path:
    """Write an image file. ``array_or_size``: an array, or (W, H) for a random image of ``mode``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(array_or_size, np.ndarray):
        img = Image.fromarray(array_or_size)
        if mode and img.mode != mode:
            img = img.convert(mode)
    else:
        w, h = array_or_size
        rng = np.random.default_rng(seed)
        rgb = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        img = Image.fromarray(rgb)
        if mode == "RGBA":
            alpha = rng.integers(0, 256, size=(h, w, 1), dtype=np.uint8)
            img = Image.fromarray(np.concatenate([rgb, alpha], axis=-1), "RGBA")
        elif mode == "P":
            img = img.convert("P", palette=Image.ADAPTIVE, colors=16)
        elif mode == "I;16":
            img = Image.fromarray(rng.integers(0, 65536, size=(h, w), dtype=np.uint16))
        elif mode != "RGB":
            img = img.convert(mode)
    img.save(path)
    return path


# ------------------------------------------------------------------- raw dataset trees and files
NYU_HW = (48, 64)
KITTI_HW = (96, 320)
SCANNET_DEPTH_HW = (48, 64)
SCANNET_COLOR_HW = (97, 130)   # 1296x968 vs 640x480 in the real data: colour ~2.02x the depth size


def _mkdir_for(path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)


def rgb_pattern(hw: Tuple[int, int], seed: int) -> np.ndarray:
    """Smooth colour image with some texture (uint8 HxWx3)."""
    h, w = hw
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) * 127 // max(h + w - 2, 1)], -1)
    noise = rng.integers(0, 40, size=(h, w, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def write_rgb(path: str, rgb: np.ndarray) -> None:
    _mkdir_for(path)
    Image.fromarray(rgb).save(path, quality=95) if path.lower().endswith(".jpg") else Image.fromarray(rgb).save(path)


def write_png8(path: str, values: np.ndarray) -> None:
    _mkdir_for(path)
    Image.fromarray(values.astype(np.uint8)).save(path)          # mode "L"


def write_png16(path: str, values: np.ndarray) -> None:
    _mkdir_for(path)
    Image.fromarray(values.astype(np.uint16)).save(path)         # mode "I;16": 16-bit PNG


def write_csv(path: str, rows: Sequence[Sequence[str]]) -> None:
    _mkdir_for(path)
    with open(path, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)


def dense_values(hw, lo, hi, seed, hole_frac=0.05) -> np.ndarray:
    """Random integer depth values in [lo, hi] with a few 0 holes."""
    rng = np.random.default_rng(seed)
    v = rng.integers(lo, hi + 1, size=hw)
    v[rng.random(hw) < hole_frac] = 0
    return v


def sparse_values(hw, lo, hi, seed, valid_frac=0.1, empty_top=0.3) -> np.ndarray:
    """KITTI-like sparse LiDAR values: about valid_frac of the pixels, none in the top rows."""
    rng = np.random.default_rng(seed)
    v = rng.integers(lo, hi + 1, size=hw)
    v[rng.random(hw) >= valid_frac] = 0
    v[: int(hw[0] * empty_top)] = 0
    return v


def write_pair(root: str, img: str, dep: str, depth_values: np.ndarray, rgb: np.ndarray, rows: list) -> None:
    """One sample of a 16-bit depth release: the colour image and the depth PNG under ``root``, and its
    (image, depth, values) row appended to ``rows``."""
    write_rgb(os.path.join(root, img), rgb)
    write_png16(os.path.join(root, dep), depth_values)
    rows.append((img, dep, depth_values))


# ------------------------------------------------------------------------------ NYU CSV release
def write_nyu_release(root: str, scenes=("bedroom_0001_out", "kitchen_0002_out"), per_scene=2, n_test=2,
                      hw=NYU_HW, seed=0, csvs=True) -> Dict[str, List[Tuple[str, str, np.ndarray]]]:
    """data/nyu2_train/<scene>/<n>.jpg + <n>.png (8-bit, m = v/255*10) and
    data/nyu2_test/<00000>_colors.png + _depth.png (16-bit mm); CSVs at the root if `csvs`."""
    out = {"train": [], "test": []}
    k = seed
    for scene in scenes:
        for n in range(1, per_scene + 1):
            img, dep = f"data/nyu2_train/{scene}/{n}.jpg", f"data/nyu2_train/{scene}/{n}.png"
            v = dense_values(hw, 1, 255, k)
            write_rgb(os.path.join(root, img), rgb_pattern(hw, k))
            write_png8(os.path.join(root, dep), v)
            out["train"].append((img, dep, v))
            k += 1
    for i in range(n_test):
        img, dep = f"data/nyu2_test/{i:05d}_colors.png", f"data/nyu2_test/{i:05d}_depth.png"
        v = dense_values(hw, 500, 9999, k)
        write_pair(root, img, dep, v, rgb_pattern(hw, k), out["test"])
        k += 1
    if csvs:
        write_csv(os.path.join(root, "nyu2_train.csv"), [r[:2] for r in out["train"]])
        write_csv(os.path.join(root, "nyu2_test.csv"), [r[:2] for r in out["test"]])
        write_csv(os.path.join(root, "replay_nyu.csv"), [r[:2] for r in out["train"][:2]])
    return out


# ------------------------------------------------------------------------------ KITTI
def kitti_val_names(drive: str, frame: str, cam: str) -> Tuple[str, str]:
    """val_selection_cropped file names of one frame, as in the real release."""
    return (f"{drive}_image_{frame}_image_{cam}.png", f"{drive}_groundtruth_depth_{frame}_image_{cam}.png")


def write_kitti(root: str, drives=("2011_09_26_drive_0001_sync",), frames=("0000000005", "0000000006"),
                cams=("02", "03"), n_val=2, hw=KITTI_HW, seed=0, raw_dir="raw", csvs=True, valid_frac=0.1):
    """Depth benchmark (train/<drive>/proj_depth/groundtruth/image_0X/<frame>.png, 16-bit, m = v/256)
    with raw images at <raw_dir>/<date>/<drive>/image_0X/data/<frame>.png, plus
    val_selection_cropped/{image,groundtruth_depth}/ pairs."""
    out = {"train": [], "test": []}
    k = seed
    for drive in drives:
        for cam in cams:
            for fr in frames:
                dep = f"train/{drive}/proj_depth/groundtruth/image_{cam}/{fr}.png"
                img = f"{raw_dir}/{drive[:10]}/{drive}/image_{cam}/data/{fr}.png"
                v = sparse_values(hw, 256, 80 * 256, k, valid_frac)
                write_pair(root, img, dep, v, rgb_pattern(hw, k), out["train"])
                k += 1
    for i in range(n_val):
        iname, dname = kitti_val_names(drives[0], f"{i:010d}", "02")
        img, dep = f"val_selection_cropped/image/{iname}", f"val_selection_cropped/groundtruth_depth/{dname}"
        v = sparse_values(hw, 256, 80 * 256, k, valid_frac)
        write_pair(root, img, dep, v, rgb_pattern(hw, k), out["test"])
        k += 1
    if csvs:
        write_csv(os.path.join(root, "kitti_train_sparse.csv"), [r[:2] for r in out["train"]])
        write_csv(os.path.join(root, "kitti_val_select.csv"), [r[:2] for r in out["test"]])
        write_csv(os.path.join(root, "replay_kitti.csv"), [r[:2] for r in out["train"][:2]])
    return out


# ------------------------------------------------------------------------------ ScanNet
def write_scannet(root: str, scenes=("scene0000_00", "scene0001_00", "scene0002_00"), frames=(0, 12),
                  seed=0, prefix="", csvs=True, test_scenes=("scene0002_00",)):
    """<prefix>scene*/color/<n>.jpg (colour ~2x the depth size) and depth/<n>.png (16-bit mm, 0 = hole)."""
    out = {"train": [], "test": []}
    k = seed
    for scene in scenes:
        for n in frames:
            img, dep = f"{prefix}{scene}/color/{n}.jpg", f"{prefix}{scene}/depth/{n}.png"
            v = dense_values(SCANNET_DEPTH_HW, 300, 6000, k, hole_frac=0.1)
            write_rgb(os.path.join(root, img), rgb_pattern(SCANNET_COLOR_HW, k))
            write_png16(os.path.join(root, dep), v)
            out["test" if scene in test_scenes else "train"].append((img, dep, v))
            k += 1
    if csvs:
        write_csv(os.path.join(root, "scannet_train.csv"), [r[:2] for r in out["train"]])
        write_csv(os.path.join(root, "scannet_test.csv"), [r[:2] for r in out["test"]])
        write_csv(os.path.join(root, "replay_scannet.csv"), [r[:2] for r in out["train"][:2]])
    return out


# ------------------------------------------------------------------------------ NYU HDF5 / .mat
def write_nyu_h5(root: str, splits=("train", "val"), scenes=("office_0001",), per_scene=2, hw=NYU_HW, seed=0):
    """nyudepthv2/<split>/<scene>/<nnnnn>.h5 with rgb uint8 (3,H,W) and depth float32 (H,W) metres."""
    import h5py

    out = {s: [] for s in splits}
    k = seed
    for split in splits:
        for scene in scenes:
            for n in range(1, per_scene + 1):
                rel = f"nyudepthv2/{split}/{scene}/{n:05d}.h5"
                path = os.path.join(root, rel)
                _mkdir_for(path)
                rgb = rgb_pattern(hw, k).transpose(2, 0, 1)
                depth = np.random.default_rng(k).uniform(0.5, 9.5, size=hw).astype(np.float32)
                with h5py.File(path, "w") as f:
                    f.create_dataset("rgb", data=rgb)
                    f.create_dataset("depth", data=depth)
                out[split].append((rel, rgb.transpose(1, 2, 0), depth))
                k += 1
    return out


def write_nyu_mat(path: str, n=3, hw=NYU_HW, seed=0):
    """A v7.3-like nyu_depth_v2_labeled.mat: images uint8 (N,3,W,H), depths float32 (N,W,H).

    Returns the frames as (H,W,3) colour and (H,W) depth, i.e. what a reader must give back.
    """
    import h5py

    _mkdir_for(path)
    rgbs = [rgb_pattern(hw, seed + i) for i in range(n)]
    deps = [np.random.default_rng(seed + i).uniform(0.5, 9.5, size=hw).astype(np.float32) for i in range(n)]
    with h5py.File(path, "w") as f:
        # MATLAB writes column-major, so HDF5 sees every frame transposed (width before height).
        f.create_dataset("images", data=np.stack([r.transpose(2, 1, 0) for r in rgbs]))
        f.create_dataset("depths", data=np.stack([d.T for d in deps]))
    return rgbs, deps


# ------------------------------------------------------------------------------------ data roots
def _domain_rgb(letter, w, h, rng, style, k):
    if style == "constant":
        base = np.array(CONSTANT_COLORS[letter], dtype=np.int16)
        noise = rng.integers(-3, 4, size=(h, w, 3))
        return np.clip(base + noise, 0, 255).astype(np.uint8)
    # textured: smooth gradients + stripes + noise, different per domain and image
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi)
    freq = {"N": 0.15, "K": 0.05, "S": 0.3}.get(letter, 0.1)
    base = np.array(CONSTANT_COLORS.get(letter, (128, 128, 128)), dtype=np.float32)
    wave = 60 * np.sin(freq * (xx + 0.5 * yy) + phase)[..., None]
    grad = (40 * yy / max(h - 1, 1))[..., None]
    noise = rng.normal(0, 12, size=(h, w, 3))
    return np.clip(base + wave + grad + noise, 0, 255).astype(np.uint8)


def _domain_depth(letter, w, h, rng):
    """Depth in metres (0 = no ground truth) with the domain's character."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    if letter == "K":  # outdoor: far at the horizon, near at the bottom; sparse LiDAR, lower part only
        d = 4.0 + 60.0 * (1.0 - yy / max(h - 1, 1)) ** 2 + rng.uniform(0, 3)
        valid = (rng.random((h, w)) < 0.25) & (yy > 0.35 * h)
        return np.where(valid, d, 0.0)
    top = {"N": 5.0, "S": 3.5}.get(letter, 5.0)
    d = 1.0 + (top - 1.0) * (1.0 - yy / max(h - 1, 1)) + 0.3 * np.sin(xx / 7.0) + rng.uniform(0, 0.5)
    if letter == "S":  # sensor holes
        d = np.where(rng.random((h, w)) < 0.05, 0.0, d)
    return np.clip(d, 0.0, 9.9)


def _write_depth(path, depth_m, letter, split):
    if letter == "N" and split != "test":  # NYU CSV release training depth: 8-bit, value/255*10
        write_png8(str(path), np.clip(np.round(depth_m / 10.0 * 255.0), 0, 255))
        return
    scale = 256.0 if letter == "K" else 1000.0  # KITTI value/256, NYU test & ScanNet millimetres
    write_png16(str(path), np.clip(np.round(depth_m * scale), 0, 65535))


def make_data_root(root, letters="NKS", n_train=8, n_test=4, n_replay=4, frame_scale=0.25,
                   style="textured", seed=0) -> Path:
    """A data root in the real formats with frames ``frame_scale`` times the real sizes.

    Readable by ``loaders.get_dataset(letter, split, root, scale=s)`` for ``s <= frame_scale``.
    Replay rows are the first ``n_replay`` training rows (as prepare_data.py draws them).
    Writes ``meta.json`` describing what was made.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for letter in letters:
        fw, fh = FRAME_SIZES[letter]
        w, h = max(2, round(fw * frame_scale)), max(2, round(fh * frame_scale))
        train_csv, test_csv, replay_csv = CSV_NAMES[letter]
        rows = {"train": [], "test": []}
        for split, n in (("train", n_train), ("test", n_test)):
            for i in range(n):
                if letter == "N":
                    if split == "train":
                        img, dep = f"data/nyu2_train/scene_{i // 4}/{i}.jpg", f"data/nyu2_train/scene_{i // 4}/{i}.png"
                    else:
                        img, dep = f"data/nyu2_test/{i:05d}_colors.png", f"data/nyu2_test/{i:05d}_depth.png"
                elif letter == "K":
                    drive = "2011_09_26_drive_0001_sync"
                    img = f"kitti/{split}/{drive}/image_02/data/{i:010d}.png"
                    dep = f"kitti/{split}/{drive}/proj_depth/groundtruth/image_02/{i:010d}.png"
                else:
                    img = f"scannet/{split}/scene{i // 4:04d}_00/color/{i}.jpg"
                    dep = f"scannet/{split}/scene{i // 4:04d}_00/depth/{i}.png"
                rgb = _domain_rgb(letter, w, h, rng, style, i)
                depth = _domain_depth(letter, w, h, rng)
                if letter == "S":  # colour at the (larger) colour-camera size, resized by the loader
                    cw, ch = max(2, round(SCANNET_COLOR[0] * frame_scale)), max(2, round(SCANNET_COLOR[1] * frame_scale))
                    rgb = np.asarray(Image.fromarray(rgb).resize((cw, ch), Image.BILINEAR))
                write_rgb(str(root / img), rgb)
                _write_depth(root / dep, depth, letter, split)
                rows[split].append((img, dep))
        for name, items in ((train_csv, rows["train"]), (test_csv, rows["test"]),
                            (replay_csv, rows["train"][:n_replay])):
            with open(root / name, "w", newline="") as f:
                csv.writer(f).writerows(items)
    with open(root / "meta.json", "w") as f:
        json.dump({"made_by": "tests/helpers.py make_data_root", "letters": letters, "style": style,
                   "frame_scale": frame_scale, "n_train": n_train, "n_test": n_test,
                   "n_replay": n_replay, "synthetic": True}, f, indent=2)
    return root


# ------------------------------------------------------------------------------------ networks
def make_net(heads=3, encoder="resnet18", seed=0, depth_bias=None):
    """A small LifelongDepthNet in eval mode with positive, image-dependent depth.

    Head i's final depth conv gets small weights and bias ``depth_bias[i]`` (default 2 + i metres),
    so untrained heads predict plausible, distinct depths.
    """
    from models import LifelongDepthNet
    torch.manual_seed(seed)
    net = LifelongDepthNet(encoder=encoder, num_domains=heads)
    with torch.no_grad():
        for i, head in enumerate(net.heads):
            conv = head.depth.conv2
            conv.weight.mul_(0.05)
            conv.bias.fill_(float(depth_bias[i]) if depth_bias is not None else 2.0 + i)
            head.uncertainty.conv2.weight.mul_(0.05)
    return net.eval()


def input_sizes(letters, scale):
    from base.domains import get_domain
    from base.images import scaled
    return [[scaled(get_domain(c).input_size[0], scale), scaled(get_domain(c).input_size[1], scale)]
            for c in letters]


def replay_prototypes(net, letters, data_root, scale, max_images=None):
    """Prototypes of every domain from its replay rows (test transform), as engine/stage.py stores them."""
    from loaders import get_dataset, get_loader
    from inference.prototypes import compute_prototypes
    loaders = [get_loader(get_dataset(c, "replay", str(data_root), train=False, scale=scale), batch_size=4)
               for c in letters]
    return compute_prototypes(net, loaders, "cpu", max_images=max_images)


def make_checkpoint(path, letters="NKS", encoder="resnet18", scale=0.25, seed=0, net=None,
                    prototypes=None, data_root=None, strategy="ours"):
    """Save a project-format checkpoint with the metadata engine/stage.py writes; returns the net.

    ``prototypes``: a prototype dict, or "replay" to compute them from ``data_root``'s replay rows,
    or None (no prototypes stored).
    """
    from base.domains import get_domain
    from models import save_checkpoint
    net = net if net is not None else make_net(len(letters), encoder, seed)
    if isinstance(prototypes, str) and prototypes == "replay":
        prototypes = replay_prototypes(net, letters, data_root, scale)
    specs = [get_domain(c) for c in letters]
    save_checkpoint(path, net, domains=[s.name for s in specs], letters=letters,
                    depth_ranges=[[s.min_depth, s.max_depth] for s in specs],
                    input_sizes=input_sizes(letters, scale), strategy=strategy,
                    options={"scale": scale, "encoder": encoder, "order": letters},
                    prototypes=prototypes)
    return net


def save_authors_checkpoint(path, net, module_prefix=False):
    """The released files' layout: ``torch.save({'state_dict': sd})`` and nothing else."""
    sd = {("module." if module_prefix else "") + k: v for k, v in net.state_dict().items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": sd}, path)
    return Path(path)


def make_stage_checkpoints(runs_dir, order="NKS", encoder="resnet18", scale=0.25, strategy="ours",
                           seed=0, data_root=None, prototypes=None):
    """Checkpoints of every stage of ``order`` named as base.domains.run_name names them.

    Stage k shares the trunk of stage k-1 and perturbs it slightly (so old domains' results change
    from stage to stage, like a real lifelong run). Returns the list of paths.
    """
    from base.domains import run_name
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    net = make_net(1, encoder, seed)
    paths = []
    for k in range(1, len(order) + 1):
        if k > 1:
            net.add_domain()
            with torch.no_grad():
                head = net.heads[-1]
                head.depth.conv2.weight.mul_(0.05)
                head.depth.conv2.bias.fill_(2.0 + k - 1)
                head.uncertainty.conv2.weight.mul_(0.05)
                g = torch.Generator().manual_seed(seed + k)
                for p in net.MFF.parameters():
                    p.add_(0.02 * torch.randn(p.shape, generator=g))
            net.eval()
        path = runs_dir / f"{run_name(order[:k], strategy)}.pth.tar"
        protos = prototypes
        make_checkpoint(path, order[:k], encoder, scale, net=net, prototypes=protos,
                        data_root=data_root, strategy=strategy)
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------------ direct maths
@torch.no_grad()
def direct_errors(net, letter, head, data_root, scale, crop="none", cap=False, aggregate="image",
                  max_images=None):
    """Errors computed straight from the network, independently of evaluation.DomainEvaluator:
    forward each test image alone through head ``head``, upsample to the ground truth, apply the
    conventions (``crop`` may be "default" = the domain's own), then ``compute_errors`` per image
    (``aggregate="image"``: their mean) or on all valid pixels pooled (``"pixel"``).
    Returns (result dict with ``count``, list of per-image error dicts)."""
    from base.domains import get_domain
    from evaluation.evaluate import resolve_cap, resolve_crop
    from losses import upsample_to
    from loaders import get_dataset
    from metrics import METRIC_NAMES, compute_errors, prepare_pair
    spec = get_domain(letter)
    ds = get_dataset(letter, "test", str(data_root), train=False, scale=scale)
    n = len(ds) if max_images is None else min(max_images, len(ds))
    lo, hi = resolve_cap(spec, cap)
    per, pooled_p, pooled_g = [], [], []
    for i in range(n):
        item = ds[i]
        depth, _ = net(item["image"][None], domain=head, with_uncertainty=False)
        gt = item["depth"][None]
        pred = upsample_to(depth, gt.shape[-2:])[0, 0].numpy()
        # the crop is placed in the test crop's full frame (item["window"], checked in test_loaders)
        p, g = prepare_pair(pred, gt[0, 0].numpy(), lo, hi, resolve_crop(spec, crop), item["window"].tolist())
        valid = g > 0
        if valid.any():
            per.append(compute_errors(p, g))
            pooled_p.append(p[valid])
            pooled_g.append(g[valid])
    if aggregate == "pixel":
        result = compute_errors(np.concatenate(pooled_p), np.concatenate(pooled_g))
    else:
        result = {k: float(np.mean([e[k] for e in per])) for k in METRIC_NAMES}
    result["count"] = len(per)
    return result, per


# ------------------------------------------------------------------------------------ commands
def error_of(fn, *args) -> str:
    """The one-line message of a command's SystemExit (any other exception fails the test)."""
    with pytest.raises(SystemExit) as stop:
        fn(*args)
    msg = str(stop.value.code)
    assert msg.startswith("error: ") and "Traceback" not in msg and "\n" not in msg.strip(), msg
    return msg


def assert_one_error_line(msg: str, *words):
    """``msg`` is an ``error:`` line without a traceback that names each of ``words``."""
    assert msg.startswith("error: ") and "Traceback" not in msg, msg
    for w in words:
        assert w in msg, (w, msg)


def predict_args(ckpt, inputs, out, *extra):
    """predict.py's arguments: head N forced, quiet, no plots, on the CPU."""
    return [str(inputs), "--checkpoint", str(ckpt), "--domain", "N", "--out", str(out), "--quiet",
            "--no-plots", "--device", "cpu", *extra]


def png_header_only(path, width, height):
    """A PNG whose header declares width x height and whose pixel data is a few bytes: what a
    hostile upload looks like (118 KB for 11000x11000 in the issue; here a header suffices)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                           + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return Path(path)
