"""Domain prototypes and nearest-prototype head selection (inference without the domain prior).

Two prototype forms are kept per learned domain:

- ``map``: the authors' form, the mean fused feature map (64, h, w) over a domain's samples. A query
  map is resized to each prototype's size before the L2 distance, so domains learned at different
  input sizes can still be compared.
- ``pooled``: resolution independent. Each fused feature map is reduced to the per-channel mean and
  standard deviation (128 values); the prototype is their mean over the domain's samples. This is
  the default selector: it costs almost nothing and does not depend on the input size.
- ``lda`` (the default where a checkpoint stores it): linear discriminant analysis of the pooled
  descriptor. From the replay images *under the training augmentation* (flips, colour jitter,
  lighting; ``LDA_PASSES`` passes) it keeps each domain's mean descriptor and one within-domain
  covariance shared by all domains (shrunk by ``LDA_SHRINK`` towards a multiple of the identity so
  that it inverts); a query goes to the domain with the smallest Mahalanobis distance. The
  covariance learns which descriptor directions move with flips, brightness and contrast and
  discounts them, which the plain ``pooled`` distance cannot (README, selection benchmark).
- ``authors``: the released ``test_inference.py`` exactly (``--selector authors``): per domain the
  fused feature maps of (up to) 500 replay images loaded *with the training augmentation*, summed
  and divided by N-1 (their ``mean_feas / 499`` after 500 images); a query scores each domain by the
  mean squared difference between its feature map and that prototype *resized to the query's size*
  (bilinear, align_corners=True). Needs the replay images: ``compute_authors_prototypes``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

SELECTORS = ("lda", "pooled", "map", "authors")
DEFAULT_SELECTOR = "lda"  # the best on test_inference.py --selection-benchmark (README); a
# checkpoint without LDA statistics falls back to "pooled" (choose_selector)
LDA_PASSES = 2       # augmented passes over each domain's replay images
# What the whole-frame ``frames`` LDA selects on (inference/frames.py, fit_frame_statistics):
# "fused+layer1" joins the pooled fused features with the encoder's layer1 statistics (inference/ood.py's
# descriptor, computed for the verdict anyway); "fused", the fused features alone (the rule before,
# and of older checkpoints). Chosen on the held-out replay frames' accuracy (0.995 -> 1.000 on both
# aerial-added models; the test frames after it: docs/BENCHMARKS.md#your-own-domain).
SELECT_DESCRIPTORS = ("fused+layer1", "fused")
DEFAULT_SELECT_DESCRIPTOR = "fused+layer1"
LDA_SHRINK = 0.01    # covariance shrinkage (measured: 0.003 .. 0.03 give the same accuracy)
#: Replay images per domain behind a prototype or the selector statistics, unless told otherwise.
DEFAULT_PROTO_IMAGES = 200
AUTHORS_PROTO_IMAGES = 500  # the authors' loop stops after image index 499


def pooled_descriptor(feats: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) fused features -> (B, 2C) channel means and standard deviations.
    Traceable with dynamic sizes (export.OnnxDepth's graph uses it)."""
    flat = feats.float().flatten(2)
    return torch.cat([flat.mean(dim=2), flat.std(dim=2, unbiased=False)], dim=1)


def pooled_descriptor_nhwc(feats: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
    """``prototypes.pooled_descriptor`` (per-channel mean and population std, (B, 2C) float32),
    computed over the pixel axis of an NHWC view, ``chunk`` pixels at a time.

    Same values to ~1e-7 relative (two passes in float32: mean, then mean squared deviation), but
    without materialising float32 copies of the whole map: each chunk is converted, used and
    dropped while it is in cache: faster than converting the whole map first on the fast path's
    bf16 channels_last features at large inputs
    (measured: docs/BENCHMARKS.md#figures-that-were-in-the-codes-comments).
    Scriptable (export.py uses it too). The product's query descriptor (inference, export).
    """
    b, c = feats.shape[0], feats.shape[1]
    x = feats.permute(0, 2, 3, 1).reshape(b, -1, c)  # a view for channels_last input
    n = x.shape[1]
    total = torch.zeros(b, c, dtype=torch.float32, device=feats.device)
    for part in x.split(chunk, dim=1):
        total += part.sum(dim=1, dtype=torch.float32)
    mean = total / n
    squares = torch.zeros_like(mean)
    for part in x.split(chunk, dim=1):
        squares += (part.float() - mean.unsqueeze(1)).square_().sum(dim=1)
    return torch.cat([mean, (squares / n).sqrt_()], dim=1)


def pooled_distances(desc: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """The pooled rule: (B, D) Euclidean distances of (B, 2C) descriptors to the (D, 2C) prototypes.

    A broadcast difference, not ``torch.cdist`` (same values to float rounding): cdist has no ONNX
    export, and this one rule serves eager code, TorchScript and the ONNX graph (export.py)."""
    diff = desc[:, None, :] - pooled.to(desc.device, desc.dtype)[None]
    return diff.square().sum(dim=2).sqrt()


def map_distance(feats: torch.Tensor, proto: torch.Tensor) -> torch.Tensor:
    """The map rule for one domain: (B,) L2 distances of the feature maps, resized (bilinear,
    align_corners=True) to the prototype's size, to the (C, h, w) prototype. Scriptable."""
    proto = proto.to(feats.device, torch.float32)
    query = feats.float()
    if query.shape[-2] != proto.shape[-2] or query.shape[-1] != proto.shape[-1]:
        query = F.interpolate(query, size=[proto.shape[-2], proto.shape[-1]], mode="bilinear",
                              align_corners=True)
    return torch.linalg.vector_norm((query - proto.unsqueeze(0)).flatten(1), dim=1)


class PrototypeAccumulator:
    """Running means of both prototype forms for one domain."""

    def __init__(self):
        self.count = 0
        self.pooled_sum = None
        self.map_sum = None

    def add(self, feats: torch.Tensor) -> None:
        feats = feats.detach().float()
        pooled = pooled_descriptor(feats).sum(dim=0).cpu()
        maps = feats.sum(dim=0).cpu()
        if self.count == 0:
            self.pooled_sum, self.map_sum = pooled, maps
        else:
            if maps.shape != self.map_sum.shape:  # one size per domain: resize stragglers to the first
                maps = F.interpolate(maps[None], size=self.map_sum.shape[-2:], mode="bilinear",
                                     align_corners=True)[0]
            self.pooled_sum += pooled
            self.map_sum += maps
        self.count += feats.shape[0]

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.count == 0:
            raise ValueError("no samples were given to compute a domain prototype")
        return self.pooled_sum / self.count, self.map_sum / self.count


@torch.no_grad()
def compute_prototypes(net, loaders, device="cpu", max_images=None, progress=None) -> dict:
    """Prototypes of every domain: ``loaders[i]`` yields batches of domain i's images.

    Returns ``{"pooled": Tensor(D, 2C), "map": [Tensor(C, h_i, w_i), ...], "counts": [n_i, ...]}``,
    the form stored in checkpoints.
    """
    was_training = net.training
    net.eval()
    pooled, maps, counts = [], [], []
    for loader in loaders:
        acc = PrototypeAccumulator()
        for batch in loader:
            acc.add(net.features(batch["image"].to(device)))
            if progress is not None:
                progress.update(batch["image"].shape[0])
            if max_images is not None and acc.count >= max_images:
                break
        p, m = acc.result()
        pooled.append(p)
        maps.append(m)
        counts.append(acc.count)
    net.train(was_training)
    return {"pooled": torch.stack(pooled), "map": maps, "counts": counts}


@torch.no_grad()
def compute_authors_prototypes(net, loaders, device="cpu", max_images=AUTHORS_PROTO_IMAGES,
                               progress=None) -> list:
    """The authors' prototypes: for each domain, the sum of the fused feature maps of its first
    ``max_images`` images (``loaders[i]``: the replay rows with the *training* transform, in their
    shuffled order), divided by N-1 where N is the number of images used (their 499 for 500).
    Returns a list of (C, h, w) float32 tensors (the network runs in eval mode, as theirs)."""
    was_training = net.training
    net.eval()
    maps = []
    for loader in loaders:
        total, n = None, 0
        for batch in loader:
            feats = net.features(batch["image"].to(device)).float()[:max_images - n]
            part = feats.sum(dim=0).cpu()
            total = part if total is None else total + part
            n += feats.shape[0]
            if progress is not None:
                progress.update(feats.shape[0])
            if n >= max_images:
                break
        if n < 2:
            raise ValueError("the authors' prototype needs at least 2 images per domain (it divides by N-1)")
        maps.append(total / (n - 1))
    net.train(was_training)
    return maps


def authors_distances(feats: torch.Tensor, maps) -> torch.Tensor:
    """(B, D): mean over (C, h, w) of (query - prototype resized to the query's h x w)^2."""
    query = feats.float()
    dists = []
    for proto in maps:
        proto = proto.to(query.device, torch.float32)[None]
        if proto.shape[-2:] != query.shape[-2:]:
            proto = F.interpolate(proto, size=query.shape[-2:], mode="bilinear", align_corners=True)
        dists.append(((query - proto) ** 2).flatten(1).mean(dim=1))
    return torch.stack(dists, dim=1)


@torch.no_grad()
def compute_lda(net, loaders, device="cpu", passes=LDA_PASSES, shrink=LDA_SHRINK, progress=None) -> dict:
    """The ``lda`` selector's statistics from ``loaders[i]``: domain i's replay images with the
    TRAINING transform (each pass draws new augmentations). Returns ``{"means": (D, 2C),
    "precision": (2C, 2C), "shrink": float, "counts": [n_i]}`` (float32 tensors)."""
    was_training = net.training
    net.eval()
    per_domain = []
    for loader in loaders:
        descs = []
        for k in range(passes):
            if hasattr(loader.dataset, "epoch"):  # engine.sampling.SeededSamples: new augmentations per pass
                loader.dataset.epoch = k
            descs += [pooled_descriptor(net.features(batch["image"].to(device))).double().cpu()
                      for batch in loader]
        per_domain.append(torch.cat(descs))
        if progress is not None:
            progress.update(per_domain[-1].shape[0])
    net.train(was_training)
    return fit_lda(per_domain, shrink)


def fit_lda(per_domain, shrink=LDA_SHRINK) -> dict:
    """Domain means and the inverse of the shared, shrunk within-domain covariance:
    S = sum_d sum_i (x - m_d)(x - m_d)^T / (N - D); S' = (1 - shrink) S + shrink tr(S)/p I."""
    means = torch.stack([x.mean(dim=0) for x in per_domain])
    resid = torch.cat([x - m for x, m in zip(per_domain, means)])
    if resid.shape[0] <= len(per_domain):
        raise ValueError("the lda selector needs more than one image per domain")
    cov = resid.T @ resid / (resid.shape[0] - len(per_domain))
    p = cov.shape[0]
    cov = (1 - shrink) * cov + shrink * torch.trace(cov) / p * torch.eye(p, dtype=cov.dtype)
    return {"means": means.float(), "precision": torch.linalg.inv(cov).float(), "shrink": float(shrink),
            "counts": [int(x.shape[0]) for x in per_domain]}


def lda_distances(query: torch.Tensor, lda: dict) -> torch.Tensor:
    """(B, D) squared Mahalanobis distances of pooled descriptors ``query`` (B, 2C)."""
    diff = query.double()[:, None, :] - lda["means"].to(query.device, torch.float64)[None]
    precision = lda["precision"].to(query.device, torch.float64)
    return torch.einsum("bdi,ij,bdj->bd", diff, precision, diff).float()


def choose_selector(prototypes, selector=None) -> str:
    """``selector`` if given, else DEFAULT_SELECTOR when the prototypes support it, else pooled."""
    if selector is not None:
        return selector
    return DEFAULT_SELECTOR if (prototypes or {}).get(DEFAULT_SELECTOR) else "pooled"


def prototype_distances(feats: torch.Tensor, prototypes: dict, selector: str = "pooled") -> torch.Tensor:
    """(B, D) distances from each image's fused features to each domain prototype."""
    if selector == "lda":
        if not prototypes.get("lda"):
            raise ValueError("this checkpoint stores no statistics for the lda selector; compute them "
                             "from replay data (test_inference.py --replay-root DIR) or use --selector pooled")
        return lda_distances(pooled_descriptor(feats), prototypes["lda"])
    if selector == "authors":
        if not prototypes.get("authors"):
            raise ValueError("the authors' selector needs prototypes from training-augmented replay "
                             "images (test_inference.py --selector authors --replay-root DIR)")
        return authors_distances(feats, prototypes["authors"])
    if selector == "pooled":
        return pooled_distances(pooled_descriptor(feats), prototypes["pooled"])
    if selector == "map":
        return torch.stack([map_distance(feats, proto) for proto in prototypes["map"]], dim=1)
    raise ValueError(f"unknown selector {selector!r}; choose one of {SELECTORS}")


def select_domain(feats: torch.Tensor, prototypes: dict, selector: str = "pooled") -> torch.Tensor:
    """Index of the nearest domain prototype for each image, shape (B,)."""
    if not prototypes:
        raise ValueError("this checkpoint stores no domain prototypes; compute them from replay data "
                         "(test_inference.py --replay-root DIR)")
    return prototype_distances(feats, prototypes, selector).argmin(dim=1)
