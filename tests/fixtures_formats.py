"""Tiny files in each real on-disk format (see shared reference formats.md), for tests.

Every writer returns what it wrote (paths relative to the root and the raw depth values), so
tests can compare decoded metres with the stored values.  Sizes are tiny (e.g. 48x64 NYU-like,
96x320 KITTI-like) so the whole suite stays fast.
"""

from __future__ import annotations

import csv
import os
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image

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
        write_rgb(os.path.join(root, img), rgb_pattern(hw, k))
        write_png16(os.path.join(root, dep), v)
        out["test"].append((img, dep, v))
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
                write_png16(os.path.join(root, dep), v)
                write_rgb(os.path.join(root, img), rgb_pattern(hw, k))
                out["train"].append((img, dep, v))
                k += 1
    for i in range(n_val):
        iname, dname = kitti_val_names(drives[0], f"{i:010d}", "02")
        img, dep = f"val_selection_cropped/image/{iname}", f"val_selection_cropped/groundtruth_depth/{dname}"
        v = sparse_values(hw, 256, 80 * 256, k, valid_frac)
        write_png16(os.path.join(root, dep), v)
        write_rgb(os.path.join(root, img), rgb_pattern(hw, k))
        out["test"].append((img, dep, v))
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
