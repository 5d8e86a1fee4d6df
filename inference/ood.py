""""No head fits": the out-of-domain score of a whole frame and its verdict.

The frame's out-of-domain descriptor (:func:`ood_descriptor`) is the selection descriptor
(``prototypes.pooled_descriptor`` of the fused features of the selection input: per channel mean
and standard deviation, inference/frames.py) joined with the same statistics of the encoder's first
residual stage (``layer1``, computed on the plain float32 network from the same selection input:
the image statistics the network's trunk starts from, where rendered, aerial and photographed
frames differ most). It is compared with each head's replay frames by a **Mahalanobis distance with the head's own covariance** (shrunk by
``OOD_SHRINK`` towards a multiple of the identity so that it inverts), divided by the
``OOD_QUANTILE`` of that distance over the head's *held-out* replay frames (never fitted on).
The frame's score is the smallest of these ratios over the heads (1 = as far as the 99th
percentile of the nearest head's own held-out frames); the verdict is ``score > threshold``
(``OOD_MARGIN``), a fixed number, so it is monotone in the score by construction.

Why these: of the descriptors compared on the quickstart's N stage model (fused features alone,
the encoder's deepest stage, the head's mean predicted log-variance, fused + layer1), fused +
layer1 separated in-domain from aerial frames and photographs best, with every aerial frame above
every in-domain test frame (the AUROCs: docs/BENCHMARKS.md#intervals-and-out-of-domain-on-whole-frames).
Why per-head covariances: the ``frames`` LDA's one covariance
shared by all heads is built to *separate* the learned domains, and learns to ignore the directions
along which each domain varies; a frame that moves along those directions (an aerial view, a photo
of a cat) is then close to some domain. Each head's own covariance measures how unusual a frame is
for that head.

Everything needed travels in the checkpoint (``prototypes["frames"]["ood"]``) and into exports'
metadata: the means, precisions, per-head normalisers and the threshold (:func:`ood_record`).
"""
from __future__ import annotations

import torch

OOD_SHRINK = 0.1      # per-head covariance shrinkage towards tr(S)/p I
OOD_QUANTILE = 0.99   # of a head's held-out replay frames' distances: the score's unit
OOD_MARGIN = 1.25     # score above this (in units of that quantile) = out of domain
SCORE = ("per-head Mahalanobis distance of the pooled fused + encoder layer1 features / its 99th percentile "
         "on held-out replay frames, min over heads")

__all__ = ["OOD_SHRINK", "OOD_QUANTILE", "OOD_MARGIN", "SCORE", "DESCRIPTOR", "early_descriptor", "ood_descriptor",
           "fit_ood", "head_distances", "ood_scores", "ood_verdict", "ood_record"]

DESCRIPTOR = "fused+layer1"  # what ood_descriptor joins (stored with the statistics)


def _pooled(feats: torch.Tensor) -> torch.Tensor:
    flat = feats.float().flatten(2)
    return torch.cat([flat.mean(dim=2), flat.std(dim=2, unbiased=False)], dim=1)


@torch.no_grad()
def early_descriptor(net, x: torch.Tensor) -> torch.Tensor:
    """(B, 2*C1) channel means and standard deviations of the encoder's ``layer1`` output of the
    normalised selection input ``x``, on the plain float32 network ``net`` (any backend's
    DepthPredictor keeps it as ``.net``)."""
    enc = net.E
    dev = next(net.parameters()).device
    y = enc.layer1(enc.maxpool(enc.relu(enc.bn1(enc.conv1(x.to(dev, torch.float32))))))
    return _pooled(y).cpu()


def ood_descriptor(net, x: torch.Tensor, selection_desc: torch.Tensor, layer1=None) -> torch.Tensor:
    """The out-of-domain descriptor of the selection input ``x``: its selection descriptor (pooled
    fused features) joined with :func:`early_descriptor` (a stand-in network without the
    project's encoder ``E``: the selection descriptor alone, at fitting and at query alike).
    ``layer1``: the selection pass's own ``layer1`` output (its encoder blocks, on the fast path),
    which spares the float32 recomputation (measured: docs/BENCHMARKS.md#frame-rule)."""
    if not hasattr(net, "E"):
        return selection_desc.float().cpu()
    early = _pooled(layer1).cpu() if layer1 is not None else early_descriptor(net, x)
    return torch.cat([selection_desc.float().cpu(), early], dim=1)


def fit_ood(fit, calibrate, shrink: float = OOD_SHRINK, quantile: float = OOD_QUANTILE,
            margin: float = OOD_MARGIN) -> dict:
    """Per head the mean and shrunk inverse covariance of its fitting descriptors ``fit[k]``
    ((n_k, p) each), and the ``quantile`` of its held-out descriptors' distances ``calibrate[k]``
    (the normaliser); ``threshold`` = ``margin``."""
    means, precisions, refs = [], [], []
    for x in fit:
        x = x.double()
        if x.shape[0] < 2:
            raise ValueError("the out-of-domain statistics need at least two frames per head")
        m = x.mean(dim=0)
        cov = (x - m).T @ (x - m) / (x.shape[0] - 1)
        p = cov.shape[0]
        cov = (1 - shrink) * cov + shrink * torch.trace(cov) / p * torch.eye(p, dtype=cov.dtype)
        means.append(m)
        precisions.append(torch.linalg.inv(cov))
    stats = {"kind": "mahalanobis_per_head", "descriptor": DESCRIPTOR, "score": SCORE, "means": torch.stack(means).float(),
             "precisions": torch.stack(precisions).float(), "shrink": float(shrink), "quantile": float(quantile),
             "threshold": float(margin), "normalisers": [1.0] * len(fit)}
    for k, c in enumerate(calibrate):
        d = head_distances(c, stats)[:, k]
        refs.append(float(torch.quantile(d.double(), quantile)) if d.numel() else 1.0)
    stats["normalisers"] = refs
    stats["calibration_counts"] = [int(c.shape[0]) for c in calibrate]
    return stats


def head_distances(desc: torch.Tensor, stats: dict) -> torch.Tensor:
    """(B, D) squared Mahalanobis distances of descriptors (B, p) to each head (its own covariance),
    divided by the descriptor size p."""
    diff = desc.double()[:, None, :] - stats["means"].to(desc.device, torch.float64)[None]
    prec = stats["precisions"].to(desc.device, torch.float64)
    return (torch.einsum("bdi,dij,bdj->bd", diff, prec, diff) / diff.shape[-1]).float()


def ood_scores(desc: torch.Tensor, stats: dict) -> torch.Tensor:
    """(B,) the frame's out-of-domain score: min over heads of distance / normaliser."""
    ref = torch.tensor(stats["normalisers"], dtype=torch.float32, device=desc.device)
    return (head_distances(desc, stats) / ref[None]).min(dim=1).values


def ood_verdict(scores: torch.Tensor, stats: dict) -> torch.Tensor:
    """(B,) bool: score above the stored threshold (monotone in the score)."""
    return scores > float(stats["threshold"])


def ood_record(stats: dict | None) -> dict | None:
    """The verdict's definition as plain JSON (exports' metadata, predictions.json): score, threshold,
    normalisers, the means and precisions as nested lists."""
    if not stats:
        return None
    return {"kind": stats["kind"], "descriptor": stats.get("descriptor"), "score": stats["score"], "threshold": stats["threshold"],
            "quantile": stats["quantile"], "shrink": stats["shrink"], "normalisers": list(stats["normalisers"]),
            "means": stats["means"].tolist(), "precisions": stats["precisions"].tolist()}
