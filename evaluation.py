"""Evaluation shared by training-time validation, test.py and test_inference.py.

One place decides how a prediction meets the ground truth: the network's half-resolution depth is
upsampled bilinearly (align_corners=True) to the ground-truth size, then optional caps and crops are
applied (metrics.prepare_pair) and errors are aggregated per image or per pixel.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from metrics import ErrorAggregator, prepare_pair


def resolve_cap(spec, cap: bool):
    """(min_depth, max_depth) for a domain when capping is on, else (None, None)."""
    return (spec.min_depth, spec.max_depth) if cap else (None, None)


def resolve_crop(spec, crop: str) -> str:
    """'default' means the domain's own convention (Eigen for NYU, Garg for KITTI, none otherwise)."""
    return spec.eval_crop if crop == "default" else crop


def upsample_to(depth: torch.Tensor, size) -> torch.Tensor:
    """Bring a (B,1,h,w) prediction to the ground-truth size, as the authors did."""
    if tuple(depth.shape[-2:]) == tuple(size):
        return depth
    return F.interpolate(depth, size=tuple(size), mode="bilinear", align_corners=True)


class DomainEvaluator:
    """Accumulates errors of one domain's predictions against its ground truth."""

    def __init__(self, spec, crop="none", cap=False, aggregate="image", rmse="pooled",
                 pred_clamp=True, delta="lt"):
        """``rmse``, ``pred_clamp``, ``delta`` ("lt" or "le"): see metrics.ErrorAggregator; the
        authors' evaluation is aggregate="pixel", rmse="weighted", pred_clamp=False, delta="le"."""
        if delta not in ("lt", "le"):
            raise ValueError(f"delta must be 'lt' or 'le', got {delta!r}")
        self.spec = spec
        self.crop = resolve_crop(spec, crop)
        self.min_depth, self.max_depth = resolve_cap(spec, cap)
        self.errors = ErrorAggregator(mode=aggregate, skip_empty=True,  # counted in "skipped"
                                      rmse=rmse, clamp=pred_clamp, delta_le=delta == "le")

    def add_batch(self, depth: torch.Tensor, gt: torch.Tensor, windows=None) -> None:
        """``windows``: the batch's ``"window"`` entry (B, 4) -- where each ground-truth crop sits in
        its full frame, so that Eigen/Garg crops land where they are defined; None = full frames."""
        depth = upsample_to(depth.float(), gt.shape[-2:]).cpu().numpy()
        gt = gt.float().cpu().numpy()
        windows = [None] * len(gt) if windows is None else [tuple(w) for w in torch.as_tensor(windows).tolist()]
        for pred_img, gt_img, window in zip(depth[:, 0], gt[:, 0], windows):
            pred_img, gt_img = prepare_pair(pred_img, gt_img, self.min_depth, self.max_depth, self.crop,
                                            window)
            self.errors.add(pred_img, gt_img)

    def result(self) -> dict:
        return self.errors.result()


def autocast_context(device: torch.device, dtype):
    """Autocast on the device when a reduced precision dtype is asked for, else a no-op context."""
    if dtype is None or dtype == torch.float32:
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate_domain(net, loader, head: int, spec, device="cpu", crop="none", cap=False,
                    aggregate="image", amp_dtype=None, progress=None) -> dict:
    """Errors of head ``head`` on every batch of ``loader`` (items with 'image' and 'depth')."""
    device = torch.device(device)
    was_training = net.training
    net.eval()
    evaluator = DomainEvaluator(spec, crop=crop, cap=cap, aggregate=aggregate)
    for batch in loader:
        with autocast_context(device, amp_dtype):
            depth, _ = net(batch["image"].to(device), domain=head, with_uncertainty=False)
        evaluator.add_batch(depth, batch["depth"], batch.get("window"))
        if progress is not None:
            progress.update(batch["image"].shape[0])
    net.train(was_training)
    return evaluator.result()
