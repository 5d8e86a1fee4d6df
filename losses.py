"""Training losses of Lifelong-MonoDepth (Hu et al., IEEE TNNLS 2025).

Two losses, written after the authors' training scripts (``train_N.py``, ``train_NK.py``,
``train_NKS.py``):

* :func:`uncertainty_depth_loss` -- the supervised loss of the head that is being learned (and of
  replayed samples of old domains): a heteroscedastic, median-normalised squared error

      mean over valid pixels of  exp(-u) * (p/m - d/m)**2 + 2*u

  with ``p`` the predicted depth, ``u`` the predicted log-variance, ``d`` the ground truth and ``m``
  the median of the valid ground truth of the whole batch.

* :func:`distillation_loss` -- the knowledge-distillation loss that keeps the heads of old domains
  close to a frozen copy of the previous model (the teacher):

      mean over all pixels of  |p/m - p_old/m| + |u/mu - u_old/mu|

  with ``m`` and ``mu`` the medians of the teacher's depth and log-variance over the whole batch.
  The medians are floored in magnitude (see :data:`DEPTH_MEDIAN_FLOOR`,
  :data:`UNCERTAINTY_MEDIAN_FLOOR`); for medians at least that large in magnitude the value is
  exactly the authors'.

Both accept float32, float16 or bfloat16 inputs and compute in float32; the returned loss is a
float32 scalar tensor. Medians are ``torch.median`` medians, i.e. the *lower* median when the
number of values is even.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "uncertainty_depth_loss",
    "distillation_loss",
    "DEPTH_MEDIAN_FLOOR",
    "UNCERTAINTY_MEDIAN_FLOOR",
]

#: Smallest magnitude used for the teacher's depth median in :func:`distillation_loss` (metres).
#: An untrained or collapsed teacher can have a depth median of 0; real medians are >= ~0.5 m.
DEPTH_MEDIAN_FLOOR = 1e-2

#: Smallest magnitude used for the teacher's log-variance median in :func:`distillation_loss`.
#: A log-variance median can be ~0 or negative; dividing by ~0 would make the loss explode.
UNCERTAINTY_MEDIAN_FLOOR = 1e-2


def _as_float32(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    return x.float()


def _check_4d(x: torch.Tensor, name: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape (B,1,H,W), got {tuple(x.shape)}")


def upsample_to(x: torch.Tensor, size) -> torch.Tensor:
    """Bring a (B,C,h,w) prediction to the ground-truth ``size``: bilinear, align_corners=True, as the
    authors did (the losses and the evaluation both use it)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def _connected_zero(*tensors: torch.Tensor) -> torch.Tensor:
    """A float32 zero scalar that has a grad_fn connected to ``tensors`` (when they require grad).

    Built from sums over *empty* slices, so it stays exactly 0 even when the inputs contain
    NaN or inf (``0 * nan`` would be NaN), and backward gives zero gradients.
    """
    zero = None
    for t in tensors:
        z = t.reshape(-1)[:0].float().sum()
        zero = z if zero is None else zero + z
    return zero


def uncertainty_depth_loss(depth: torch.Tensor, uncertainty: torch.Tensor,
                           gt: torch.Tensor) -> torch.Tensor:
    """Uncertainty-weighted, median-normalised depth loss of the authors' code.

    Args:
        depth: predicted depth in metres, (B,1,h,w).
        uncertainty: predicted log-variance, (B,1,h,w).
        gt: ground-truth depth in metres, (B,1,H,W); pixels with ``gt > 0`` are valid.

    ``depth`` and ``uncertainty`` are upsampled bilinearly (align_corners=True) to (H,W) when
    their size differs. With ``m = torch.median(gt[gt > 0])`` over the whole batch (lower median
    for an even count) the loss is the mean over valid pixels of
    ``exp(-u) * (p/m - d/m)**2 + 2*u``.

    A batch without any valid pixel returns an exact float32 zero whose grad_fn is connected to
    ``depth`` and ``uncertainty`` (backward works and yields zero gradients) instead of NaN.

    Returns:
        float32 scalar tensor.
    """
    p = _as_float32(depth, "depth")
    u = _as_float32(uncertainty, "uncertainty")
    d = _as_float32(gt, "gt")
    for t, name in ((p, "depth"), (u, "uncertainty"), (d, "gt")):
        _check_4d(t, name)
    if p.shape[:2] != d.shape[:2] or u.shape[:2] != d.shape[:2]:
        raise ValueError(
            f"batch/channel mismatch: depth {tuple(p.shape)}, uncertainty {tuple(u.shape)}, "
            f"gt {tuple(d.shape)}")

    size = d.shape[-2:]
    p = upsample_to(p, size)
    u = upsample_to(u, size)

    mask = d > 0  # NaN ground truth compares False, so it is invalid too
    if not bool(mask.any()):
        return _connected_zero(depth, uncertainty)

    p = p[mask]
    u = u[mask]
    d = d[mask]
    m = d.median()  # lower median for an even count, as torch.median
    return (torch.exp(-u) * (p / m - d / m) ** 2 + 2.0 * u).mean()


def _floored_magnitude(median: torch.Tensor, floor: float) -> torch.Tensor:
    return median.abs().clamp_min(floor)


def distillation_loss(depth: torch.Tensor, uncertainty: torch.Tensor,
                      old_depth: torch.Tensor, old_uncertainty: torch.Tensor, *,
                      depth_floor: float = DEPTH_MEDIAN_FLOOR,
                      uncertainty_floor: float = UNCERTAINTY_MEDIAN_FLOOR) -> torch.Tensor:
    """Distillation loss between the student's and the frozen teacher's outputs of one old head.

    Args:
        depth, uncertainty: the student's outputs (B,1,h,w) for an old domain's head.
        old_depth, old_uncertainty: the teacher's outputs, same shape; they are targets and are
            detached (no gradient flows into them).
        depth_floor, uncertainty_floor: floors of the median magnitudes (see below).

    With ``m = median(old_depth)`` and ``mu = median(old_uncertainty)`` over the whole batch (all
    pixels, lower median for an even count) the authors' loss is the mean of
    ``|p/m - p_old/m| + |u/mu - u_old/mu|``.

    Guard of the medians: since ``|a/s - b/s| = |a - b| / |s|`` for any non-zero ``s``, dividing
    by the signed median or by its magnitude gives the identical value. We therefore divide by
    ``max(|m|, depth_floor)`` and ``max(|mu|, uncertainty_floor)``: this equals the authors' loss
    whenever ``|median| >= floor`` (including a negative log-variance median) and bounds the
    scale factor by ``1/floor`` when the median is ~0 (the log-variance median of a teacher can
    cross 0; the depth median of an untrained teacher can be 0), so the loss cannot explode or
    become inf/NaN.

    Returns:
        float32 scalar tensor.
    """
    p = _as_float32(depth, "depth")
    u = _as_float32(uncertainty, "uncertainty")
    p_old = _as_float32(old_depth, "old_depth").detach()
    u_old = _as_float32(old_uncertainty, "old_uncertainty").detach()
    if not (p.shape == u.shape == p_old.shape == u_old.shape):
        raise ValueError(
            "student and teacher outputs must have the same shape: depth "
            f"{tuple(p.shape)}, uncertainty {tuple(u.shape)}, old_depth {tuple(p_old.shape)}, "
            f"old_uncertainty {tuple(u_old.shape)}")
    if p.numel() == 0:
        return _connected_zero(depth, uncertainty)

    m = _floored_magnitude(p_old.median(), depth_floor)
    mu = _floored_magnitude(u_old.median(), uncertainty_floor)
    return ((p / m - p_old / m).abs() + (u / mu - u_old / mu).abs()).mean()
