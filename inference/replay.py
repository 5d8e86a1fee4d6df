"""Prototypes and selector statistics of a checkpoint computed from a data root's replay rows.

For checkpoints that store none (an authors' file) or when another selector's statistics are asked
for: ``prototypes.compute_prototypes`` / ``compute_authors_prototypes`` / ``compute_lda`` over
``get_dataset(letter, "replay", root)`` on the plain float32 network (the caller's, loaded once:
a DepthPredictor's ``net``). Used by the selection evaluation (evaluation/selection.py) and
predict.py (through ``inference.images.Predictor``). Bad replay data is an InputError.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Subset
from tqdm import tqdm

from base.errors import InputError
from loaders import DatasetFormatError, get_dataset, get_loader
from models import load_checkpoint
from models.checkpoint import checkpoint_meta
from inference.prototypes import DEFAULT_PROTO_IMAGES, DEFAULT_SELECT_DESCRIPTOR, AUTHORS_PROTO_IMAGES, LDA_PASSES, compute_authors_prototypes, compute_lda, compute_prototypes


def _replay_loaders(letters, replay_root, scale, device, train, batch_size, workers, max_images,
                    data_options=None):
    """One loader per domain over ``replay_root``'s replay rows (test or training transform)."""
    loaders, total = [], 0
    for c in letters:
        try:
            ds = get_dataset(c, "replay", str(replay_root), train=train, scale=scale, **(data_options or {}))
        except (FileNotFoundError, DatasetFormatError, ValueError) as e:
            raise InputError(f"--replay-root: {e}") from None
        if len(ds) == 0:
            raise InputError(f"--replay-root: the replay index of domain {c} under {str(replay_root)!r} is empty")
        total += min(len(ds), max_images)
        loaders.append(get_loader(ds, batch_size=batch_size, workers=workers, device=device.type,
                                  shuffle=train))
    return loaders, total


def replay_prototypes(net, letters: str, replay_root, scale, device, proto_images=DEFAULT_PROTO_IMAGES, batch_size=8,
                      workers=0, quiet=False) -> dict:
    """Prototypes of every learned domain from ``replay_root``'s replay rows.

    ``prototypes.compute_prototypes`` over ``get_dataset(letter, "replay", replay_root, train=False)``
    for each head in learning order, on ``net``, the plain float32 network (so the prototypes do
    not depend on the predictor's fast-path settings).
    """
    net = net.to(device)
    loaders, total = _replay_loaders(letters, replay_root, scale, device, False, batch_size, workers,
                                     proto_images)
    bar = tqdm(total=total, desc="prototypes", unit="img", disable=quiet, dynamic_ncols=True, leave=False)
    protos = compute_prototypes(net, loaders, device, max_images=proto_images, progress=bar)
    bar.close()
    return protos


def authors_prototypes(net, letters: str, replay_root, scale, device, seed=0, data_options=None, workers=0,
                       quiet=False) -> list:
    """The authors' selector's prototypes (``prototypes.compute_authors_prototypes``): up to 500
    replay images per domain through the *training* transform (shuffled, augmented, seeded by
    ``seed``), one image per batch as theirs, on ``net`` (plain float32)."""
    net = net.to(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        loaders, total = _replay_loaders(letters, replay_root, scale, device, True, 1, workers,
                                         AUTHORS_PROTO_IMAGES, data_options)
        bar = tqdm(total=total, desc="authors' prototypes", unit="img", disable=quiet,
                   dynamic_ncols=True, leave=False)
        try:
            maps = compute_authors_prototypes(net, loaders, device, progress=bar)
        except ValueError as e:
            raise InputError(f"--replay-root: {e}") from None
        bar.close()
    return maps


def lda_prototypes(net, letters: str, replay_root, scale, device, seed=0, proto_images=DEFAULT_PROTO_IMAGES, batch_size=8,
                   workers=0, quiet=False) -> dict:
    """The lda selector's statistics (``prototypes.compute_lda``) from ``replay_root``'s replay
    rows under the training transform, augmentations seeded by ``seed``; ``net`` plain float32."""
    net = net.to(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        loaders, total = _replay_loaders(letters, replay_root, scale, device, True, batch_size, workers,
                                         proto_images)
        loaders = [get_loader_subset(loader, proto_images) for loader in loaders]
        bar = tqdm(total=total * LDA_PASSES, desc="lda statistics", unit="img", disable=quiet,
                   dynamic_ncols=True, leave=False)
        lda = compute_lda(net, loaders, device, progress=bar)
        bar.close()
    return lda


def get_loader_subset(loader, n):
    """The same loader over the first ``n`` rows only (unshuffled)."""
    ds = loader.dataset
    return get_loader(Subset(ds, range(min(n, len(ds)))), batch_size=loader.batch_size)


def load_prototypes(net, letters, scale, device, *, data_root, replay_root=None, proto_images=DEFAULT_PROTO_IMAGES,
                    batch_size=8, workers=0, seed=0, data_options=None, need_authors=False,
                    need_lda=False, quiet=False) -> tuple:
    """(prototypes dict, where they came from) of the loaded ``net``: the checkpoint's, or computed
    from ``replay_root``'s replay rows; plus the authors' selector's ("authors") when
    ``need_authors`` (from ``replay_root``, else ``data_root``; ``data_options``: the training
    transform's ScanNet resize and NYU rotation), and the lda selector's when ``need_lda`` and the
    checkpoint has none (or ``replay_root`` is given)."""
    meta = checkpoint_meta(net)
    if replay_root:
        protos = replay_prototypes(net, letters, replay_root, scale, device, proto_images=proto_images,
                                   batch_size=batch_size, workers=workers, quiet=quiet)
        source = f"replay rows of {replay_root}"
    elif meta.prototypes or need_authors or need_lda:
        protos, source = meta.prototype_sets, "checkpoint"
    else:
        raise InputError(f"checkpoint {str(meta.path)!r} stores no domain prototypes (an authors' file, "
                         f"or a run saved without them); compute them from replay data with --replay-root DIR "
                         f"(a data root with replay_<domain>.csv, e.g. --replay-root {data_root})")
    root = replay_root or data_root
    if need_authors:
        protos["authors"] = authors_prototypes(net, letters, root, scale, device, seed=seed,
                                               data_options=data_options, workers=workers, quiet=quiet)
        source += f"; authors' from training-augmented replay rows of {root}"
    if need_lda and (replay_root or not protos.get("lda")):
        protos["lda"] = lda_prototypes(net, letters, root, scale, device, seed=seed, proto_images=proto_images,
                                       batch_size=batch_size, workers=workers, quiet=quiet)
        source += f"; lda from training-augmented replay rows of {root}"
    return protos, source


# The budget of the ``frames`` statistics (measured: docs/BENCHMARKS.md, "Work at a stage's end").
# The selection input is the first head's trained frame at most FRAME_AREA pixels: a model whose
# first domain learned whole 1216x352 frames (KITTI at its own pixel scale) otherwise ran the trunk
# at 428k pixels per variant, 20x the quickstart's 160x120, for no better selection.
FRAME_AREA = 160 * 120
FRAME_IMAGES = 100  # replay images per domain (each with its 5 variants); the stage passes its own


def selection_area(cameras=None, max_area=FRAME_AREA) -> float:
    """Pixel area of the selection input of the ``frames`` statistics: the first head's trained
    frame (``cameras[0]``; ``frames.SELECT_AREA`` without one), capped at ``max_area`` (None or
    0: no cap, the rule before the cap)."""
    from inference.frames import SELECT_AREA
    cam0 = (cameras or [None])[0]
    area = cam0.width * cam0.height if cam0 is not None else SELECT_AREA
    return min(area, max_area) if max_area else area


@torch.no_grad()
def frame_statistics(net, letters: str, data_root, cameras=None, max_images=FRAME_IMAGES, holdout=5, seed=0,
                     progress=None, max_area=FRAME_AREA, options=("--replay-root", None),
                     selector=DEFAULT_SELECT_DESCRIPTOR) -> dict:
    """The ``frames`` selector statistics and out-of-domain thresholds of ``net`` (a network, or a
    DepthPredictor: then its own path, the features queries get; frames.py):
    each domain's replay files *as they lie on disk* (no domain transform), with the variants a
    user feeds (mirrored, half resolution, a crop of another aspect ratio, the training colour
    jitter; ``frames.frame_variants``), through the selection input. Every ``holdout``-th replay
    image (and its variants) is held out of the fit and calibrates the thresholds. ``options``:
    the caller's command's names of ``data_root`` and ``max_images`` (None: no option sets it),
    for the message when too few rows are used. ``selector``: the descriptor the head choice is
    fitted on (``prototypes.SELECT_DESCRIPTORS``).

    The work is bounded whatever the frames' resolution: ``max_images`` images per domain, five
    trunk passes each, each at ``selection_area(cameras, max_area)`` pixels. ``progress``: a tqdm
    bar advanced by one per image."""
    from PIL import Image

    from inference.frames import descriptor_of, fit_frame_statistics, frame_variants, to_tensor
    from loaders import build_transform, load_rgb
    if hasattr(net, "trunk_features"):
        features, net = net.trunk_features, net.net
    else:
        device = next(net.parameters()).device
        features = lambda x: net.features(x.to(device))  # noqa: E731 - the frames arrive on the CPU
    was_training = net.training
    net.eval()
    area = selection_area(cameras, max_area)
    rng = np.random.default_rng(seed)
    fit, cal, ood_fit, ood_cal = [], [], [], []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for c in letters:
            try:
                ds = get_dataset(c, "replay", str(data_root), train=False)
            except (FileNotFoundError, DatasetFormatError, ValueError) as e:
                raise InputError(f"--replay-root: {e}") from None
            jitter = build_transform(c, train=True)  # the training colour jitter (loaders.JointTransform)
            mine, other = ([], []), ([], [])
            for i, row in enumerate(ds.rows[:max_images]):
                img = load_rgb(row.image)
                frames = [to_tensor(v) for v in frame_variants(img, rng)]
                raw = torch.from_numpy(np.asarray(img, np.float32) / 255.0).permute(2, 0, 1)
                frames.append(to_tensor(Image.fromarray(
                    (jitter._jitter(jitter._lighting(raw)).clamp(0, 1).permute(1, 2, 0).numpy() * 255
                     ).round().astype(np.uint8))))
                pairs = [descriptor_of(features, x, area, net) for x in frames]
                mine[int(i % holdout == holdout - 1)].extend(d.double().cpu() for d, _ in pairs)
                other[int(i % holdout == holdout - 1)].extend(o.double().cpu() for _, o in pairs)
                if progress is not None:
                    progress.update(1)
            if not mine[0] or not mine[1]:
                root_option, limit_option = options
                used, n = min(len(ds.rows), max_images), len(ds.rows)
                cut = (f" (the first {used} of its {n}" + (f", {limit_option} {max_images}" if limit_option else "")
                       + ")") if used < n else ""
                raise InputError(f"{root_option}: domain {c} needs at least {holdout} replay rows for the "
                                 f"frame statistics (held-out calibration), {used} used{cut}")
            fit.append(torch.cat(mine[0]))
            cal.append(torch.cat(mine[1]))
            ood_fit.append(torch.cat(other[0]))
            ood_cal.append(torch.cat(other[1]))
    net.train(was_training)
    return fit_frame_statistics(fit, cal, area, ood=(ood_fit, ood_cal), descriptor=selector)


def add_frame_statistics(checkpoint, out, data_root, order=None, max_images=FRAME_IMAGES, seed=0, quiet=False,
                         max_area=FRAME_AREA, options=("--data-root", "--proto-images"),
                         selector=DEFAULT_SELECT_DESCRIPTOR) -> dict:
    """Write a copy of ``checkpoint`` (a path, or a network loaded from one) to ``out`` with the
    ``frames`` selector statistics (computed from ``data_root``'s replay rows on the default
    inference path) and the per-domain ``cameras``: for a checkpoint trained before they existed,
    instead of retraining. Returns the statistics."""
    from inference.frames import head_cameras
    from inference.predictor import DepthPredictor
    from models import save_checkpoint
    net = checkpoint if isinstance(checkpoint, torch.nn.Module) else load_checkpoint(checkpoint, order=order)
    meta = checkpoint_meta(net)
    letters = meta.letters or order
    cameras = head_cameras(meta, list(letters), data_root)
    bar = tqdm(total=len(letters) * max_images, desc="frame statistics", unit="img", disable=quiet,
               dynamic_ncols=True, leave=False)
    # the product's own (fast) path computes the query features, so it computes these too
    stats = frame_statistics(DepthPredictor(net), letters, data_root, cameras, max_images=max_images, seed=seed,
                             progress=bar, max_area=max_area, options=options, selector=selector)
    bar.close()
    protos = meta.prototype_sets
    protos["frames"] = stats
    save_checkpoint(out, net, prototypes=protos,
                    cameras=[c.as_dict() if c is not None else None for c in cameras])
    return stats
