import math

import numpy as np
import pytest
import torch


from metrics import (
    CROPS,
    HIGHER_IS_BETTER,
    LOWER_IS_BETTER,
    METRIC_NAMES,
    ErrorAggregator,
    compute_errors,
    crop_mask,
    eigen_crop_mask,
    format_table,
    garg_crop_mask,
    prepare_pair,
)

# valid pixels (pred, gt): (1,1), (1.5,1), (3.8,2), (1,2); two invalid gt (0 and -1)
PRED = np.array([[1.0, 1.5, 3.8], [1.0, 7.0, 9.0]])
GT = np.array([[1.0, 1.0, 2.0], [2.0, 0.0, -1.0]])


def expected_hand():
    ln = math.log
    d = [0.0, ln(1.5), ln(1.9), ln(0.5)]  # ln p - ln g
    mean_d = sum(d) / 4
    mean_d2 = sum(x * x for x in d) / 4
    return {
        "abs_rel": (0 / 1 + 0.5 / 1 + 1.8 / 2 + 1.0 / 2) / 4,          # 0.475
        "sq_rel": (0 / 1 + 0.25 / 1 + 3.24 / 2 + 1.0 / 2) / 4,         # 0.5925
        "rmse": math.sqrt((0 + 0.25 + 3.24 + 1.0) / 4),
        "rmse_log": math.sqrt(mean_d2),
        "log10": (0 + abs(math.log10(1.5)) + abs(math.log10(1.9)) + abs(math.log10(0.5))) / 4,
        "mae": (0 + 0.5 + 1.8 + 1.0) / 4,                              # 0.825
        "silog": 100 * math.sqrt(mean_d2 - mean_d ** 2),
        # ratios max(p/g, g/p): 1, 1.5, 1.9, 2 vs thresholds 1.25, 1.5625, 1.953125
        "delta1": 1 / 4,
        "delta2": 2 / 4,
        "delta3": 3 / 4,
    }


def assert_errors_close(a, b, rel=1e-9):
    for k in METRIC_NAMES:
        assert a[k] == pytest.approx(b[k], rel=rel, abs=1e-12), k


def test_compute_errors_hand_computed():
    e = compute_errors(PRED, GT)
    assert set(e) == set(METRIC_NAMES)
    assert all(type(v) is float for v in e.values())
    assert_errors_close(e, expected_hand())
    assert e["abs_rel"] == pytest.approx(0.475)
    assert e["sq_rel"] == pytest.approx(0.5925)
    assert e["mae"] == pytest.approx(0.825)


def test_compute_errors_numpy_and_torch_agree():
    a = compute_errors(PRED, GT)
    b = compute_errors(torch.from_numpy(PRED), torch.from_numpy(GT))
    c = compute_errors(torch.from_numpy(PRED).float(), torch.from_numpy(GT).float())
    d = compute_errors(PRED.astype(np.float32), GT.astype(np.float32))
    assert a == b
    assert c == d
    assert_errors_close(a, c, rel=1e-6)


def test_compute_errors_perfect_prediction():
    rng = np.random.default_rng(0)
    gt = rng.uniform(0.5, 10, size=(1, 8, 9))
    gt[0, :2] = 0.0
    e = compute_errors(gt.copy(), gt)
    for k in LOWER_IS_BETTER:
        assert e[k] == 0.0, k
    for k in HIGHER_IS_BETTER:
        assert e[k] == 1.0, k


def test_compute_errors_empty_gt_raises():
    with pytest.raises(ValueError, match="no valid pixel"):
        compute_errors(np.ones((3, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="no valid pixel"):
        compute_errors(torch.ones(2, 2), torch.full((2, 2), float("nan")))


def test_compute_errors_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        compute_errors(np.ones((2, 2)), np.ones((2, 3)))


def test_compute_errors_nonpositive_pred_stays_finite():
    e = compute_errors(np.array([0.0, -1.0, 2.0]), np.array([1.0, 1.0, 2.0]))
    assert all(math.isfinite(v) for v in e.values())


def test_metric_name_sets():
    assert LOWER_IS_BETTER | HIGHER_IS_BETTER == set(METRIC_NAMES)
    assert not LOWER_IS_BETTER & HIGHER_IS_BETTER
    assert HIGHER_IS_BETTER == {"delta1", "delta2", "delta3"}
    assert METRIC_NAMES[0] == "abs_rel"


# ----------------------------------------------------------------------------- crops and caps

def rect(mask):
    """(r0, r1, c0, c1) of a mask that must be exactly one filled rectangle."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    assert mask[r0:r1, c0:c1].all() and mask.sum() == (r1 - r0) * (c1 - c0)
    return (int(r0), int(r1), int(c0), int(c1))


def test_eigen_crop_ranges():
    m = eigen_crop_mask(480, 640)
    assert m.shape == (480, 640) and m.dtype == bool
    assert rect(m) == (45, 471, 41, 601)
    # scaled proportionally, halves rounded up: 45*352/480=33, 471*352/480=345.4,
    # 41*1216/640=77.9, 601*1216/640=1141.9
    assert rect(eigen_crop_mask(352, 1216)) == (33, 345, 78, 1142)
    # 22.5 -> 23, 235.5 -> 236, 20.5 -> 21, 300.5 -> 301
    assert rect(eigen_crop_mask(240, 320)) == (23, 236, 21, 301)


def test_garg_crop_ranges():
    m = garg_crop_mask(352, 1216)
    assert m.shape == (352, 1216)
    # int(0.40810811*352)=143, int(0.99189189*352)=349, int(0.03594771*1216)=43,
    # int(0.96405229*1216)=1172
    assert rect(m) == (143, 349, 43, 1172)
    assert rect(garg_crop_mask(375, 1242)) == (153, 371, 44, 1197)
    assert rect(garg_crop_mask(480, 640)) == (195, 476, 23, 616)


def test_crop_mask_names():
    assert CROPS == {"none", "eigen", "garg"}
    assert crop_mask("none", 4, 4) is None and crop_mask(None, 4, 4) is None
    assert np.array_equal(crop_mask("Eigen", 480, 640), eigen_crop_mask(480, 640))
    with pytest.raises(ValueError, match="unknown crop"):
        crop_mask("eigne", 4, 4)


def test_crop_mask_in_a_window_of_the_frame():
    # NYU test crop: 228x304 centred in the 240x320 resized frame -> Eigen rows 17:228, cols 13:293
    m = crop_mask("eigen", 228, 304, window=(6, 8, 240, 320))
    assert rect(m) == (23 - 6, 228, 21 - 8, 301 - 8)
    # KITTI bottom crop 320x480 at x=368 of 352x1216 -> Garg rows 143-32:349-32, all its columns
    m = crop_mask("garg", 320, 480, window=(32, 368, 352, 1216))
    assert rect(m) == (111, 317, 0, 480)
    assert crop_mask("none", 3, 3, window=(0, 0, 9, 9)) is None
    with pytest.raises(ValueError, match="does not contain"):
        crop_mask("eigen", 228, 304, window=(20, 8, 240, 320))
    # prepare_pair with the window keeps exactly the pixels the full-frame crop keeps there
    gt = np.random.default_rng(0).uniform(0.5, 9.0, (240, 320))
    _, full = prepare_pair(gt, gt, crop="eigen")
    _, win = prepare_pair(gt[6:234, 8:312], gt[6:234, 8:312], crop="eigen", window=(6, 8, 240, 320))
    assert np.array_equal(win, full[6:234, 8:312])


def test_prepare_pair_caps():
    gt = np.array([[0.0005, 0.001, 0.5, 10.0, 10.5, 0.0]])
    pred = np.array([[0.0, 20.0, 5.0, -1.0, 3.0, 2.0]])
    p, g = prepare_pair(pred, gt, min_depth=1e-3, max_depth=10.0)
    assert p.dtype == np.float64 and g.dtype == np.float64
    # gt valid in (1e-3, 10): 0.001 (== min) and 10 (== max) are dropped, as the field does
    np.testing.assert_array_equal(g, [[0.0, 0.0, 0.5, 0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(p, [[1e-3, 10.0, 5.0, 1e-3, 3.0, 2.0]])
    # inputs untouched
    assert gt[0, 4] == 10.5 and pred[0, 1] == 20.0


def test_prepare_pair_defaults_only_drop_nonpositive():
    gt = torch.tensor([[-1.0, 0.0, 0.25, 100.0]])
    pred = torch.tensor([[5.0, 5.0, 5.0, 500.0]])
    p, g = prepare_pair(pred, gt)
    np.testing.assert_array_equal(g, [[0.0, 0.0, 0.25, 100.0]])
    np.testing.assert_array_equal(p, [[5.0, 5.0, 5.0, 500.0]])


def test_prepare_pair_crop_on_batched_shape():
    gt = np.ones((1, 1, 352, 1216))
    p, g = prepare_pair(np.ones_like(gt), gt, crop="garg")
    assert g.shape == gt.shape
    assert rect(g[0, 0] > 0) == (143, 349, 43, 1172)
    p, g = prepare_pair(np.ones((480, 640)), np.ones((480, 640)), crop="eigen")
    assert rect(g > 0) == (45, 471, 41, 601)
    with pytest.raises(ValueError):
        prepare_pair(np.ones((4, 4)), np.ones((4, 4)), crop="kitti")


# ----------------------------------------------------------------------------- aggregation

def two_images():
    # image A: 4 valid pixels; image B: 1 valid pixel
    pa = np.array([[1.0, 2.0], [3.0, 4.0]])
    ga = np.array([[1.0, 1.0], [2.0, 5.0]])
    pb = np.array([[9.0, 1.0], [1.0, 1.0]])
    gb = np.array([[3.0, 0.0], [0.0, 0.0]])
    return (pa, ga), (pb, gb)


def test_pixel_mode_equals_concatenated_compute_errors():
    (pa, ga), (pb, gb) = two_images()
    agg = ErrorAggregator(mode="pixel")
    agg.add(pa, ga)
    agg.add(torch.from_numpy(pb), torch.from_numpy(gb))
    r = agg.result()
    va, vb = ga > 0, gb > 0
    concat = compute_errors(np.concatenate([pa[va], pb[vb]]), np.concatenate([ga[va], gb[vb]]))
    assert_errors_close(r, concat)
    assert r["count"] == 2 and r["pixels"] == 5 and r["skipped"] == 0
    # explicit value for one of them: abs errors 0,1,1,1 and 6 -> mae 9/5
    assert r["mae"] == pytest.approx(9 / 5)


def test_image_mode_is_mean_of_per_image_and_differs_from_pixel_mode():
    (pa, ga), (pb, gb) = two_images()
    img, pix = ErrorAggregator(), ErrorAggregator(mode="pixel")
    for agg in (img, pix):
        agg.add(pa, ga)
        agg.add(pb, gb)
    ri, rp = img.result(), pix.result()
    ea, eb = compute_errors(pa, ga), compute_errors(pb, gb)
    for k in METRIC_NAMES:
        assert ri[k] == pytest.approx((ea[k] + eb[k]) / 2), k
    # mae: per image (3/4 + 6)/2 = 3.375 vs per pixel 9/5 = 1.8
    assert ri["mae"] == pytest.approx(3.375)
    assert rp["mae"] == pytest.approx(1.8)
    assert ri["count"] == rp["count"] == 2 and ri["pixels"] == rp["pixels"] == 5


def test_pixel_mode_random_many_images():
    rng = np.random.default_rng(1)
    agg = ErrorAggregator(mode="pixel")
    ps, gs = [], []
    for i in range(5):
        g = rng.uniform(0.2, 8, size=(6, 7))
        g[rng.random(g.shape) < 0.1 * (i + 1)] = 0
        p = g * rng.uniform(0.6, 1.6, size=g.shape)
        agg.add(p, g)
        ps.append(p[g > 0])
        gs.append(g[g > 0])
    assert_errors_close(agg.result(), compute_errors(np.concatenate(ps), np.concatenate(gs)))


def test_aggregator_empty_handling():
    with pytest.raises(ValueError):
        ErrorAggregator(mode="batch")
    agg = ErrorAggregator()
    with pytest.raises(ValueError):
        agg.result()
    with pytest.raises(ValueError, match="no valid pixel"):
        agg.add(np.ones((2, 2)), np.zeros((2, 2)))
    skip = ErrorAggregator(mode="pixel", skip_empty=True)
    assert skip.add(np.ones((2, 2)), np.zeros((2, 2))) is None
    skip.add(np.ones((2, 2)), np.ones((2, 2)))
    r = skip.result()
    assert r["count"] == 1 and r["skipped"] == 1 and r["pixels"] == 4 and r["rmse"] == 0.0


def test_format_table():
    agg = ErrorAggregator()
    agg.add(PRED, GT)
    res = agg.result()
    out = format_table([("nyu", res), ("kitti-long-name", {"abs_rel": 0.1})])
    lines = out.splitlines()
    assert len(lines) == 4
    for col in ("domain", "images", "AbsRel", "SqRel", "RMSE", "RMSElog", "log10", "MAE",
                "d1", "d2", "d3"):
        assert col in lines[0].split()
    assert set(lines[1]) == {"-"}
    row = lines[2].split()
    assert row[0] == "nyu" and row[1] == "1" and row[2] == f"{res['abs_rel']:.4f}"
    assert row[-1] == f"{res['delta3']:.4f}" and len(row) == 11
    assert lines[3].split()[:3] == ["kitti-long-name", "-", "0.1000"]
    assert len({len(line) for line in lines}) == 1  # fixed width
