import math

import pytest
import torch
import torch.nn.functional as F


from losses import (
    DEPTH_MEDIAN_FLOOR,
    UNCERTAINTY_MEDIAN_FLOOR,
    distillation_loss,
    uncertainty_depth_loss,
)


def t(rows):
    """(1,1,H,W) float32 tensor from a nested list of rows."""
    return torch.tensor(rows, dtype=torch.float32)[None, None]


# ----------------------------------------------------------------------------- uncertainty loss

def test_uncertainty_loss_hand_computed():
    p = t([[1.0, 2.0], [3.0, 4.0]])
    u = t([[0.0, 0.5], [-0.5, 1.0]])
    gt = t([[2.0, 0.0], [4.0, 1.0]])
    # valid gt: 2, 4, 1 -> median m = 2
    # (0,0): exp(-0)   * (1/2 - 2/2)^2 + 2*0    = 0.25
    # (1,0): exp(0.5)  * (3/2 - 4/2)^2 + 2*-0.5 = 0.25*e^0.5 - 1
    # (1,1): exp(-1)   * (4/2 - 1/2)^2 + 2*1    = 2.25*e^-1 + 2
    expected = (0.25 + (0.25 * math.exp(0.5) - 1.0) + (2.25 * math.exp(-1.0) + 2.0)) / 3.0
    loss = uncertainty_depth_loss(p, u, gt)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_uncertainty_loss_even_count_uses_lower_median():
    p = torch.zeros(1, 1, 2, 2)
    u = torch.zeros(1, 1, 2, 2)
    gt = t([[1.0, 2.0], [3.0, 4.0]])
    # torch.median of [1,2,3,4] is the lower median 2 (not 2.5):
    # mean((0/2 - d/2)^2) = (1 + 4 + 9 + 16) / 4 / 4 = 1.875   (with 2.5 it would be 1.2)
    assert uncertainty_depth_loss(p, u, gt).item() == pytest.approx(1.875, rel=1e-6)


def test_uncertainty_loss_median_over_whole_batch():
    p = torch.zeros(2, 1, 2, 2)
    u = torch.zeros(2, 1, 2, 2)
    gt = torch.cat([t([[1.0, 2.0], [0.0, 0.0]]), t([[3.0, 5.0], [7.0, 0.0]])])
    # valid over the batch: 1,2,3,5,7 -> median 3 (per-image medians would be 1 and 5)
    # loss = mean(d^2) / 9 = (1 + 4 + 9 + 25 + 49) / 5 / 9
    expected = (1 + 4 + 9 + 25 + 49) / 5 / 9
    assert uncertainty_depth_loss(p, u, gt).item() == pytest.approx(expected, rel=1e-6)


def test_uncertainty_loss_upsamples_align_corners_hand_computed():
    p = t([[1.0, 2.0], [3.0, 4.0]])
    u = torch.zeros(1, 1, 2, 2)
    gt = torch.full((1, 1, 3, 3), 2.0)
    gt[0, 0, 1, 1] = 0.0
    # 2x2 -> 3x3 bilinear, align_corners=True: [[1,1.5,2],[2,2.5,3],[3,3.5,4]]
    # valid (all but the centre) predictions: 1,1.5,2,2,3,3,3.5,4; median of gt = 2
    # ((p-2)/2)^2: 0.25, 0.0625, 0, 0, 0.25, 0.25, 0.5625, 1  -> sum 2.375, mean over 8
    expected = (0.25 + 0.0625 + 0 + 0 + 0.25 + 0.25 + 0.5625 + 1.0) / 8
    assert uncertainty_depth_loss(p, u, gt).item() == pytest.approx(expected, rel=1e-6)


def test_uncertainty_loss_interpolation_matches_explicit_upsampling():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(2, 1, 4, 5, generator=g) * 5 + 0.5
    u = torch.randn(2, 1, 4, 5, generator=g)
    gt = torch.rand(2, 1, 8, 10, generator=g) * 5
    gt[gt < 1.0] = 0.0
    up = lambda x: F.interpolate(x, size=(8, 10), mode="bilinear", align_corners=True)  # noqa: E731
    a = uncertainty_depth_loss(p, u, gt)
    b = uncertainty_depth_loss(up(p), up(u), gt)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)
    # and against the formula written out
    mask = gt > 0
    pp, uu, dd = up(p)[mask], up(u)[mask], gt[mask]
    m = dd.median()
    ref = (torch.exp(-uu) * (pp / m - dd / m) ** 2 + 2 * uu).mean()
    assert a.item() == pytest.approx(ref.item(), rel=1e-6)


def test_uncertainty_loss_no_valid_pixel_is_connected_zero():
    p = torch.rand(2, 1, 3, 3, requires_grad=True)
    u = torch.randn(2, 1, 3, 3, requires_grad=True)
    gt = torch.zeros(2, 1, 6, 6)
    loss = uncertainty_depth_loss(p, u, gt)
    assert loss.item() == 0.0 and torch.isfinite(loss)
    assert loss.grad_fn is not None
    loss.backward()
    assert p.grad is not None and u.grad is not None
    assert torch.equal(p.grad, torch.zeros_like(p)) and torch.equal(u.grad, torch.zeros_like(u))


def test_uncertainty_loss_no_valid_pixel_zero_even_with_nan_inputs():
    p = torch.full((1, 1, 2, 2), float("nan"), requires_grad=True)
    u = torch.full((1, 1, 2, 2), float("inf"), requires_grad=True)
    loss = uncertainty_depth_loss(p, u, torch.zeros(1, 1, 2, 2))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(p.grad == 0) and torch.all(u.grad == 0)


def test_uncertainty_loss_grad_only_on_valid_pixels():
    p = t([[1.0, 2.0], [3.0, 4.0]]).requires_grad_()
    u = torch.zeros(1, 1, 2, 2, requires_grad=True)
    gt = t([[2.0, 0.0], [4.0, 1.0]])
    uncertainty_depth_loss(p, u, gt).backward()
    assert p.grad[0, 0, 0, 1] == 0 and u.grad[0, 0, 0, 1] == 0
    # d/dp of mean(exp(-u)(p/m-d/m)^2) at (0,0): 2*(1/2-1)/2 / 3 = -1/6
    assert p.grad[0, 0, 0, 0].item() == pytest.approx(-1.0 / 6.0, rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_uncertainty_loss_low_precision_inputs_computed_in_float32(dtype):
    g = torch.Generator().manual_seed(1)
    p = (torch.rand(1, 1, 3, 4, generator=g) * 4 + 0.5).to(dtype)
    u = torch.randn(1, 1, 3, 4, generator=g).to(dtype)
    gt = (torch.rand(1, 1, 6, 8, generator=g) * 4 + 0.5).to(dtype)
    loss = uncertainty_depth_loss(p, u, gt)
    assert loss.dtype == torch.float32
    ref = uncertainty_depth_loss(p.float(), u.float(), gt.float())
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)


def test_uncertainty_loss_rejects_mismatched_batch():
    with pytest.raises(ValueError):
        uncertainty_depth_loss(torch.rand(2, 1, 2, 2), torch.rand(2, 1, 2, 2), torch.rand(3, 1, 2, 2))


# ----------------------------------------------------------------------------- distillation loss

def test_distillation_hand_computed_with_negative_uncertainty_median():
    p = t([[1.0, 2.0], [3.0, 4.0]])
    p_old = t([[2.0, 2.0], [4.0, 6.0]])      # sorted 2,2,4,6 -> lower median 2
    u = t([[0.0, 1.0], [0.0, -1.0]])
    u_old = t([[-2.0, -1.0], [-3.0, -4.0]])  # sorted -4,-3,-2,-1 -> lower median -3
    # |p - p_old| / 2 = 0.5, 0, 0.5, 1      -> sum 2
    # |u - u_old| / 3 = 2/3, 2/3, 1, 1      -> sum 10/3
    expected = (2.0 + 10.0 / 3.0) / 4.0
    loss = distillation_loss(p, u, p_old, u_old)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # identical to the authors' formula with the signed medians (|mu| = 3 >= floor)
    m, mu = p_old.median(), u_old.median()
    upstream = ((p / m - p_old / m).abs() + (u / mu - u_old / mu).abs()).mean()
    assert loss.item() == pytest.approx(upstream.item(), rel=1e-6)


def test_distillation_median_over_whole_batch():
    p = torch.zeros(2, 1, 1, 2)
    u = torch.zeros(2, 1, 1, 2)
    p_old = torch.tensor([1.0, 2.0, 8.0, 9.0]).view(2, 1, 1, 2)  # batch lower median 2
    u_old = torch.tensor([4.0, 4.0, 4.0, 4.0]).view(2, 1, 1, 2)  # median 4
    expected = ((1 + 2 + 8 + 9) / 2 + 4 * 4 / 4) / 4
    assert distillation_loss(p, u, p_old, u_old).item() == pytest.approx(expected, rel=1e-6)


def test_distillation_floor_prevents_explosion():
    g = torch.Generator().manual_seed(2)
    p = torch.rand(2, 1, 4, 4, generator=g) + 1.0
    p_old = torch.rand(2, 1, 4, 4, generator=g) + 1.0
    u = torch.randn(2, 1, 4, 4, generator=g)
    u_old = torch.randn(2, 1, 4, 4, generator=g)
    u_old = u_old - u_old.median() + 1e-8  # median ~ 0
    loss = distillation_loss(p, u, p_old, u_old)
    assert torch.isfinite(loss)
    m = max(abs(p_old.median().item()), DEPTH_MEDIAN_FLOOR)
    mu = max(abs(u_old.median().item()), UNCERTAINTY_MEDIAN_FLOOR)
    expected = ((p - p_old).abs() / m + (u - u_old).abs() / mu).mean().item()
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # bounded by 1/floor times the raw L1 terms
    bound = ((p - p_old).abs() / m).mean() + (u - u_old).abs().mean() / UNCERTAINTY_MEDIAN_FLOOR
    assert loss.item() <= bound.item() * (1 + 1e-5)


def test_distillation_zero_medians_are_finite():
    p = torch.rand(1, 1, 2, 2, requires_grad=True)
    u = torch.rand(1, 1, 2, 2, requires_grad=True)
    loss = distillation_loss(p, u, torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    expected = (p.detach() / DEPTH_MEDIAN_FLOOR + u.detach() / UNCERTAINTY_MEDIAN_FLOOR).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert torch.isfinite(p.grad).all() and torch.isfinite(u.grad).all()


def test_distillation_teacher_gets_no_grad():
    p = torch.rand(1, 1, 3, 3, requires_grad=True)
    u = torch.randn(1, 1, 3, 3, requires_grad=True)
    p_old = torch.rand(1, 1, 3, 3, requires_grad=True)
    u_old = torch.randn(1, 1, 3, 3, requires_grad=True)
    distillation_loss(p, u, p_old, u_old).backward()
    assert p.grad is not None and u.grad is not None
    assert p_old.grad is None and u_old.grad is None


def test_distillation_bfloat16_inputs():
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(1, 1, 3, 3, generator=g).to(torch.bfloat16) for _ in range(4)]
    loss = distillation_loss(*xs)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(distillation_loss(*[x.float() for x in xs]).item(), rel=1e-6)


def test_distillation_shape_mismatch():
    a = torch.rand(1, 1, 2, 2)
    with pytest.raises(ValueError):
        distillation_loss(a, a, torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4))
