"""Shared test utilities: tiny data roots, tiny checkpoints, small images.

Everything here is small enough for CI on two CPU cores:

* :func:`make_data_root` writes a data root in the real on-disk formats (the CSV names and depth
  encodings of NYU-v2, KITTI and ScanNet, see shared/reference/formats.md), at a fraction of the
  real frame sizes (``frame_scale``), readable by ``loaders.get_dataset`` at ``scale <= frame_scale``.
  ``style="constant"`` makes each domain's images one distinct flat colour (plus faint noise), a
  case where nearest-prototype domain selection must be perfect even with an untrained network.
* :func:`make_net` / :func:`make_checkpoint` / :func:`save_authors_checkpoint` build small networks
  (resnet18 by default) with well-behaved outputs (positive depth around a few metres), saved in the
  project format (with the metadata ``lifelong.py`` writes) or as an authors' state_dict-only file.
* :func:`write_image` writes test images in any PIL mode (RGB, L, RGBA, P, I;16).
* :func:`load_script` imports a top-level script (test.py shadows the standard library's ``test``).

Import as ``from helpers import ...`` (pytest puts tests/ on sys.path for rootdir-less test files)
or ``from tests.helpers import ...``.
"""
from __future__ import annotations

import contextlib
import csv
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Real frame sizes (W, H) of the three built-in domains.
FRAME_SIZES = {"N": (640, 480), "K": (1216, 352), "S": (640, 480)}
SCANNET_COLOR = (1296, 968)
# Per-domain flat colours of style="constant" (far apart in RGB).
CONSTANT_COLORS = {"N": (200, 40, 40), "K": (40, 190, 60), "S": (50, 60, 210)}
CSV_NAMES = {"N": ("nyu2_train.csv", "nyu2_test.csv", "replay_nyu.csv"),
             "K": ("kitti_train_sparse.csv", "kitti_val_select.csv", "replay_kitti.csv"),
             "S": ("scannet_train.csv", "scannet_test.csv", "replay_scannet.csv")}


def load_script(name: str):
    """Import /work/main/<name>.py as module ``lm_<name>`` (test.py clashes with stdlib ``test``)."""
    mod_name = f"lm_{name}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    spec.loader.exec_module(module)
    return module


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
    path.parent.mkdir(parents=True, exist_ok=True)
    if letter == "N" and split != "test":  # NYU CSV release training depth: 8-bit, value/255*10
        Image.fromarray(np.clip(np.round(depth_m / 10.0 * 255.0), 0, 255).astype(np.uint8)).save(path)
        return
    scale = 256.0 if letter == "K" else 1000.0  # KITTI value/256, NYU test & ScanNet millimetres
    Image.fromarray(np.clip(np.round(depth_m * scale), 0, 65535).astype(np.uint16)).save(path)


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
                (root / img).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rgb).save(root / img, quality=95) if img.endswith(".jpg") else \
                    Image.fromarray(rgb).save(root / img)
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
    from domains import get_domain
    from loaders import scaled
    return [[scaled(get_domain(c).input_size[0], scale), scaled(get_domain(c).input_size[1], scale)]
            for c in letters]


def replay_prototypes(net, letters, data_root, scale, max_images=None):
    """Prototypes of every domain from its replay rows (test transform), as lifelong.py stores them."""
    from loaders import get_dataset, get_loader
    from prototypes import compute_prototypes
    loaders = [get_loader(get_dataset(c, "replay", str(data_root), train=False, scale=scale), batch_size=4)
               for c in letters]
    return compute_prototypes(net, loaders, "cpu", max_images=max_images)


def make_checkpoint(path, letters="NKS", encoder="resnet18", scale=0.25, seed=0, net=None,
                    prototypes=None, data_root=None, strategy="ours"):
    """Save a project-format checkpoint with the metadata lifelong.py writes; returns the net.

    ``prototypes``: a prototype dict, or "replay" to compute them from ``data_root``'s replay rows,
    or None (no prototypes stored).
    """
    from domains import get_domain
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
    """Checkpoints of every stage of ``order`` named as lifelong.run_name names them.

    Stage k shares the trunk of stage k-1 and perturbs it slightly (so old domains' results change
    from stage to stage, like a real lifelong run). Returns the list of paths.
    """
    from lifelong import run_name
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
    from domains import get_domain
    from evaluation import resolve_cap, resolve_crop, upsample_to
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
