"""Domain prototypes and nearest-prototype head selection (inference without the domain prior).

Two prototype forms are kept per learned domain:

- ``map``: the authors' form, the mean fused feature map (64, h, w) over a domain's samples. A query
  map is resized to each prototype's size before the L2 distance, so domains learned at different
  input sizes can still be compared.
- ``pooled``: resolution independent. Each fused feature map is reduced to the per-channel mean and
  standard deviation (128 values); the prototype is their mean over the domain's samples. This is
  the default selector: it costs almost nothing and does not depend on the input size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

SELECTORS = ("pooled", "map")


def pooled_descriptor(feats: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) fused features -> (B, 2C) channel means and standard deviations."""
    flat = feats.float().flatten(2)
    return torch.cat([flat.mean(dim=2), flat.std(dim=2, unbiased=False)], dim=1)


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


def prototype_distances(feats: torch.Tensor, prototypes: dict, selector: str = "pooled") -> torch.Tensor:
    """(B, D) distances from each image's fused features to each domain prototype."""
    if selector == "pooled":
        query = pooled_descriptor(feats)
        return torch.cdist(query, prototypes["pooled"].to(query.device, query.dtype))
    if selector == "map":
        dists = []
        for proto in prototypes["map"]:
            proto = proto.to(feats.device, torch.float32)
            query = feats.float()
            if query.shape[-2:] != proto.shape[-2:]:
                query = F.interpolate(query, size=proto.shape[-2:], mode="bilinear", align_corners=True)
            dists.append((query - proto[None]).flatten(1).norm(dim=1))
        return torch.stack(dists, dim=1)
    raise ValueError(f"unknown selector {selector!r}; choose one of {SELECTORS}")


def select_domain(feats: torch.Tensor, prototypes: dict, selector: str = "pooled") -> torch.Tensor:
    """Index of the nearest domain prototype for each image, shape (B,)."""
    if not prototypes:
        raise ValueError("this checkpoint stores no domain prototypes; compute them from replay data "
                         "(test_inference.py --replay-root DIR)")
    return prototype_distances(feats, prototypes, selector).argmin(dim=1)
