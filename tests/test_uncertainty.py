"""The uncertainty head measured and calibrated (evaluation/uncertainty.py) and shown (predict.py
--intervals, the stream log, the demo): each formula against a small hand-computed case, the
calibration fitted on validation rows only, stored in the checkpoint, changing no depth value."""
import csv
import json
import math
from statistics import NormalDist

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from base import uncertainty as U
from evaluation import uncertainty as EU
from losses import uncertainty_depth_loss

pytestmark = pytest.mark.usefixtures("single_thread")


# ------------------------------------------------------------------------------ the formulas
def test_the_loss_is_a_gaussian_likelihood_of_variance_two_exp_u():
    """loss = 4 * (NLL of N(p/m, 2 exp(u)) - log(2 pi)/2) - 2 log 2, pixel by pixel (module docstring)."""
    p = torch.tensor([1.0, 3.0, 2.5, 7.0]).view(1, 1, 2, 2)
    d = torch.tensor([2.0, 2.0, 4.0, 6.0]).view(1, 1, 2, 2)
    u = torch.tensor([-1.0, 0.0, 0.5, -2.0]).view(1, 1, 2, 2)
    m = 2.0  # torch's lower median of (2, 2, 4, 6)
    loss = float(uncertainty_depth_loss(p, u, d))
    r = ((d - p) / m).flatten().numpy()
    sigma = np.sqrt(2.0 * np.exp(u.flatten().numpy()))
    nll = U.gaussian_nll(r, sigma)
    assert loss == pytest.approx(4.0 * (nll - 0.5 * math.log(2 * math.pi)) - 2.0 * math.log(2.0), rel=1e-6)


def test_spread_is_median_depth_times_sqrt2_exp_half_u():
    depth = np.array([[2.0, 4.0], [6.0, 0.0]])  # 0 is not a depth: the median is of 2, 4, 6
    u = np.array([[0.0, 2 * math.log(2.0)], [0.0, 0.0]])
    s = U.spread(depth, u)
    assert s[0, 0] == pytest.approx(4.0 * math.sqrt(2.0))
    assert s[0, 1] == pytest.approx(4.0 * math.sqrt(2.0) * 2.0)
    assert U.spread(depth, u, scale=1.5)[0, 0] == pytest.approx(1.5 * 4.0 * math.sqrt(2.0))
    # an (untrained) map without positive depth: the median is floored, the spread stays positive
    assert U.spread(-depth, u)[0, 0] == pytest.approx(U.MEDIAN_FLOOR * math.sqrt(2.0))


def test_interval_of_a_central_coverage():
    assert U.z_value(0.9) == pytest.approx(1.6448536, abs=1e-6)
    assert U.z_value(0.5) == pytest.approx(0.6744898, abs=1e-6)
    lo, hi = U.interval(np.array([1.0, 10.0]), np.array([2.0, 1.0]), 0.9)
    assert lo.tolist() == pytest.approx([0.0, 10.0 - 1.6448536])  # clipped at 0 m
    assert hi.tolist() == pytest.approx([1.0 + 2 * 1.6448536, 10.0 + 1.6448536])
    with pytest.raises(ValueError, match="coverage"):
        U.z_value(1.0)


def test_nll_and_coverage_hand_computed():
    nll = U.gaussian_nll([0.0, 2.0], [1.0, 2.0])
    assert nll == pytest.approx(0.5 * math.log(2 * math.pi) + (math.log(2.0) + 0.5) / 2)
    err, sigma = [0.1, 0.5, -1.0, 2.0], [1.0] * 4
    assert U.coverage(err, sigma, 0.5) == 0.5   # |err| <= 0.674: 0.1, 0.5
    assert U.coverage(err, sigma, 0.9) == 0.75  # |err| <= 1.645: also -1.0


def test_sparsification_ause_aurg_hand_computed():
    pred, gt = np.ones(4), np.array([2.0, 1.0, 1.5, 1.0])
    sigma = np.array([0.1, 0.2, 0.3, 0.4])  # the most uncertain pixels are the good ones
    c = U.sparsification(pred, gt, sigma, "rmse", steps=2)
    full = math.sqrt(1.25 / 4)
    assert c["uncertainty"].tolist() == pytest.approx([full, math.sqrt(0.5)])  # kept: pixels 0, 1
    assert c["oracle"].tolist() == pytest.approx([full, 0.0])                  # kept: pixels 1, 3
    assert c["random"].tolist() == pytest.approx([full, full])
    a = U.ause_aurg(c)
    assert a["ause"] == pytest.approx((full + math.sqrt(0.5)) / 2 - full / 2)
    assert a["aurg"] == pytest.approx(full - (full + math.sqrt(0.5)) / 2)
    assert a["aurg"] < 0 and a["ratio"] == pytest.approx(a["ause"] / (full / 2))
    rel = U.sparsification(pred, gt, sigma, "abs_rel", steps=2)
    assert rel["uncertainty"].tolist() == pytest.approx([(0.5 + 1 / 3) / 4, 0.25])
    good = U.ause_aurg(U.sparsification(pred, gt, np.array([0.4, 0.1, 0.3, 0.2]), "rmse", steps=2))
    assert good["ause"] == pytest.approx(0.0) and good["ratio"] == pytest.approx(0.0)


def test_spearman_hand_computed_with_ties():
    assert U.spearman([1, 2, 3, 4], [10, 20, 40, 30]) == pytest.approx(0.8)
    assert U.spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(math.sqrt(3) / 2)


def test_fit_scale_minimises_the_largest_coverage_miss():
    # |err| / sigma = 1, 2, 3, 4 and the 50 % level alone: exact where the median of a is covered
    s = U.fit_scale([1.0, -2.0, 3.0, 4.0], np.ones(4), levels=(0.5,))
    assert s == pytest.approx(2.5 / U.z_value(0.5))
    # errors spread exactly as N(0, (2 sigma)^2): the fitted scale is 2 and every level is met
    q = (np.arange(20000) + 0.5) / 20000
    sigma = np.linspace(0.5, 3.0, q.size)
    err = 2.0 * sigma * np.array([NormalDist().inv_cdf(v) for v in q])
    s = U.fit_scale(err, sigma)
    assert s == pytest.approx(2.0, rel=2e-3)
    for level in U.LEVELS:
        assert U.coverage(err, s * sigma, level) == pytest.approx(level, abs=2e-3)


def test_evaluator_pools_pixels_and_averages_image_curves():
    rng = np.random.default_rng(0)
    images = [(rng.uniform(1, 5, 50), rng.uniform(1, 5, 50), rng.uniform(0.2, 2, 50)) for _ in range(2)]
    ev = EU.UncertaintyEvaluator(scales={"raw": 1.0, "calibrated": 1.7}, steps=5)
    for p, g, s in images:
        ev.add_pixels(p, g, s)
    r = ev.result()
    err = np.concatenate([g - p for p, g, _ in images])
    sig = np.concatenate([s for _, _, s in images])
    for label, k in (("raw", 1.0), ("calibrated", 1.7)):
        assert r["calibration"][label]["nll"] == pytest.approx(U.gaussian_nll(err, k * sig))
        assert r["calibration"][label]["coverage"]["90"] == pytest.approx(U.coverage(err, k * sig, 0.9))
    curves = [U.sparsification(p, g, s, "rmse", 5)["uncertainty"] for p, g, s in images]
    assert r["sparsification"]["rmse"]["curves"]["uncertainty"] == pytest.approx(np.mean(curves, axis=0).tolist())
    assert r["spearman"] == pytest.approx(U.spearman(sig, np.abs(err)))
    assert (r["images"], r["pixels"]) == (2, 100)


def test_a_degenerate_head_keeps_scale_one_instead_of_stopping_the_stage():
    batch = {"image": torch.zeros(1, 3, 4, 4), "depth": torch.full((1, 1, 4, 4), 2.0)}
    exact = lambda images, head: (torch.full((1, 1, 2, 2), 2.0), torch.zeros(1, 1, 2, 2))  # noqa: E731
    record = EU.fit_calibration(exact, [{"domain": "nyu", "loaders": [[batch]], "rules": (None, None, "none")},
                                       {"domain": "kitti", "loaders": [], "rules": (None, None, "none")}])
    assert record["scales"] == [1.0, 1.0] and record["fitted"] == [False, False]
    assert "zero" in record["validation"][0]["not_fitted"] and record["validation"][1]["images"] == 0
    assert "no validation rows for nyu, kitti" in U.calibration_note({U.CALIBRATION_KEY: record}, 2)


def test_old_checkpoints_read_as_scale_one_with_a_note():
    assert U.calibration_scales({}, 3) == [1.0, 1.0, 1.0]
    assert "no uncertainty calibration" in U.calibration_note({}, 3)
    meta = {U.CALIBRATION_KEY: {"scales": [2.0, 3.0], "fitted": [True, True],
                                "validation": [{"domain": "nyu"}, {"domain": "kitti"}]}}
    assert U.calibration_scales(meta, 2) == [2.0, 3.0] and "crops" in U.calibration_note(meta, 2)
    # such a checkpoint still works: its head's interval is z * scale * sigma, as before
    cal = U.head_calibration(meta, 1, 2)
    assert cal["method"] == "scale" and cal["path"] == "crops"
    depth, logvar = np.array([[2.0, 4.0], [6.0, 8.0]]), np.zeros((2, 2))
    lo, hi = U.interval_maps(depth, logvar, cal, 0.9)
    np.testing.assert_allclose(hi - depth, 3.0 * U.z_value(0.9) * U.spread(depth, logvar), rtol=1e-6)
    summary = U.interval_summary(meta, 1, 2, 0.9)
    assert summary["measured_coverage"] is None and "not measured on this path" in summary["meaning"]


def gaussian_images(n, seed, k=1.7, pixels=2000):
    """``n`` images whose errors are N(0, (k * sigma)^2) with a per-image sigma level: frame_pixels'
    dicts (a = |err| / sigma), i.e. a head whose raw spread is k times too small."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        sigma = rng.uniform(0.5, 2.0) * rng.uniform(0.5, 1.5, pixels)
        depth = rng.uniform(1.0, 10.0, pixels)
        err = k * sigma * rng.standard_normal(pixels)
        out.append({"a": np.abs(err) / sigma, "depth": depth, "gt": depth + err, "sigma": sigma})
    return out


@pytest.mark.parametrize("method", U.METHODS)
def test_every_method_meets_the_nominal_coverage_of_a_gaussian_case(method):
    """Fitted on 40 images of a head whose spread is 1.7x too small, measured on 40 fresh images:
    within sampling error (about 0.007 at 90 % over 80 000 independent pixels; 0.015 allowed) of the
    nominal level, where the raw spread misses by 0.23; conformal errs on the safe side by at most
    its finite-sample correction: the mean image coverage it asks is level * (n + 1) / n."""
    fit, test = gaussian_images(40, 1), gaussian_images(40, 2)
    cal = EU.fit_method(method, fit)
    raw = EU.frame_coverage(None, test, U.LEVELS)
    got = EU.frame_coverage(cal, test, U.LEVELS)
    assert raw["90"] < 0.7
    for level in U.LEVELS:
        key = f"{round(100 * level)}"
        if method == "conformal":
            assert level - 0.015 <= got[key] <= level * 41 / 40 + 0.015
        else:
            assert got[key] == pytest.approx(level, abs=0.015)


def test_conformal_needs_enough_images_for_a_finite_interval():
    """With n images the (n + 1) * level rule has no finite solution where n < level / (1 - level)."""
    assert math.isinf(U.fit_conformal([im["a"] for im in gaussian_images(8, 3)], (0.9,))[0])
    assert math.isfinite(U.fit_conformal([im["a"] for im in gaussian_images(9, 3)], (0.9,))[0])


def test_leave_one_image_out_coverage_is_measured_on_frames_not_fitted_on():
    images = gaussian_images(6, 4)
    record = EU.fit_head_calibration(images, "nyu", "quantile")
    loo = record["measured"]["validation_loo"]
    assert loo["images"] == 6 and record["path"] == "frames"
    manual = 0
    for i, im in enumerate(images):  # each image against the fit on the five others
        cal = EU.fit_method("quantile", images[:i] + images[i + 1:])
        manual += int(np.count_nonzero(im["a"] <= U.half_width(cal, 1.0, im["depth"], 0.9)))
    assert loo["coverage"]["90"] == pytest.approx(manual / sum(im["a"].size for im in images))


# ------------------------------------------------------------------------------ fitted at each stage
def stage_options(root, runs, *extra):
    return ["--data-root", str(root), "--runs-dir", str(runs), "--scale", "0.25", "--batch-size", "2",
            "--workers", "0", "--val-images", "2", "--proto-images", "2", "--replay-size", "4",
            "--encoder", "resnet18", "--max-steps", "1", "--quiet", *extra]


@pytest.fixture(scope="module")
def stages(synthetic_root, tmp_path_factory):
    """N, then NK (one step each); per stage, (head, the colour files) of every calibration read."""
    from cli import train as train_cli
    from evaluation import frame_calibration as FC
    runs, seen = tmp_path_factory.mktemp("runs"), []
    real = FC.frames_pixels

    def spy(pipeline, rows, head, depth_range, rules, **kw):  # kw: the stage's progress bar
        seen[-1].append((head, [str(p) for p, _ in rows]))
        return real(pipeline, rows, head, depth_range, rules, **kw)
    FC.frames_pixels = spy
    try:
        paths = []
        for order in ("N", "NK"):
            seen.append([])
            paths.append(train_cli.main(order, "", stage_options(synthetic_root, runs, "--order", order)))
    finally:
        FC.frames_pixels = real
    return runs, paths, seen


def rows_of(root, letter, split):
    from loaders import get_dataset
    return [r.image for r in get_dataset(letter, split, str(root), scale=0.25).rows]


def test_each_stage_calibrates_its_new_head_on_its_validation_frames_only(stages, synthetic_root):
    """The calibration never sees test rows, nor an old domain's rows: stage N fits head N on N's
    validation rows; stage NK fits head K on K's and keeps N's calibration from stage N (the
    training rows of N outside its replay buffer are data the learner no longer has)."""
    from loaders import split_validation
    from loaders import get_dataset
    from models import read_checkpoint
    _, paths, seen = stages
    assert [[h for h, _ in stage] for stage in seen] == [[0], [1]]  # NK reads nothing for head N
    for k, letter in enumerate("NK"):
        train = get_dataset(letter, "train", str(synthetic_root), scale=0.25)
        _, val = split_validation(train, set(rows_of(synthetic_root, letter, "replay")), 2, 0)
        expected = sorted(Path(train.rows[i].image).name for i in val)
        used = sorted(Path(p).name for p in seen[k][0][1])
        assert used == expected and len(used) == 2
        assert not set(seen[k][0][1]) & set(rows_of(synthetic_root, letter, "test"))
    first = read_checkpoint(paths[0])[1][U.CALIBRATION_KEY]
    record = read_checkpoint(paths[1])[1][U.CALIBRATION_KEY]
    assert record["version"] == 2 and record["path"] == "frames" and record["fitted"] == [True, True]
    kept = dict(record["heads"][0])
    assert kept.pop("kept").startswith("kept from the stage that learned it (N)")
    assert kept == first["heads"][0] and record["heads"][1]["fitted_at"] == "NK"
    assert record["heads"][1]["method"] == EU.DEFAULT_METHOD and record["heads"][1]["images"] == 2
    loo = record["heads"][1]["measured"]["validation_loo"]
    assert loo["images"] == 2 and 0.0 <= loo["coverage"]["90"] <= 1.0 and "NK" in record["note"]


# ------------------------------------------------------------------------------ the commands
@pytest.fixture(scope="module")
def old_and_calibrated(stages, synthetic_root, tmp_path_factory):
    """The NK model saved without a calibration (an older checkpoint), and test.py --calibrate-into's
    calibrated copy of it, with the copy's test.py --uncertainty result."""
    from cli import test as test_cli
    from models import load_checkpoint, save_checkpoint
    _, paths, _ = stages
    folder = tmp_path_factory.mktemp("old")
    net = load_checkpoint(paths[1])
    net.meta.pop(U.CALIBRATION_KEY)
    old = folder / "NK.pth.tar"
    save_checkpoint(old, net)
    into = tmp_path_factory.mktemp("calibrated")
    out = test_cli.main(["--checkpoint", str(old), "--data-root", str(synthetic_root), "--calibrate-into",
                         str(into), "--max-images", "2", "--batch-size", "2", "--quiet", "--no-fast",
                         "--backend", "torch", "--plots", str(into / "plots"), "--json", str(into / "r.json")])
    return old, into / "NK.pth.tar", out, paths[1]


def test_calibrate_into_fits_the_same_validation_rows_and_keeps_every_weight(old_and_calibrated):
    from models import read_checkpoint
    old, copy, out, trained = old_and_calibrated
    (old_state, old_meta), (new_state, new_meta) = read_checkpoint(old), read_checkpoint(copy)
    assert U.CALIBRATION_KEY not in old_meta  # the original is not written
    assert old_state.keys() == new_state.keys() and all(torch.equal(old_state[k], new_state[k]) for k in old_state)
    engine = read_checkpoint(trained)[1][U.CALIBRATION_KEY]
    new = new_meta[U.CALIBRATION_KEY]
    # the head this stage learned: the same fit as the engine's; the older head has no record to keep
    np.testing.assert_allclose(np.asarray(new["heads"][1]["multipliers"], float),
                               np.asarray(engine["heads"][1]["multipliers"], float), rtol=1e-4)
    assert new["fitted"] == [False, True] and new["scales"][1] == pytest.approx(engine["scales"][1], rel=1e-4)
    for c, head in (("N", 0), ("K", 1)):
        u = out["results"][c]["uncertainty"]
        assert u["calibration"]["raw"]["scale"] == 1.0
        if head == 1:
            assert u["calibration"]["calibrated"]["scale"] == pytest.approx(engine["scales"][head], rel=1e-4)
            assert 0.0 <= u["calibration"]["calibrated"]["coverage"]["90"] <= 1.0
        assert u["sparsification"]["rmse"]["aurg"] == pytest.approx(
            u["sparsification"]["rmse"]["areas"]["random"] - u["sparsification"]["rmse"]["areas"]["uncertainty"])
    assert sorted(p.split("/")[-1] for p in out["plots"]) == ["uncertainty_kitti.png", "uncertainty_nyu.png"]


def test_calibration_changes_no_depth_metric(old_and_calibrated, synthetic_root, tmp_path):
    from cli import test as test_cli
    old, _, calibrated, _ = old_and_calibrated
    before = test_cli.main(["--checkpoint", str(old), "--data-root", str(synthetic_root), "--max-images", "2",
                            "--batch-size", "2", "--quiet", "--no-fast", "--backend", "torch",
                            "--json", str(tmp_path / "b.json")])
    for c in "NK":
        for m in ("abs_rel", "rmse", "delta1"):
            assert calibrated["results"][c][m] == before["results"][c][m]


def test_old_checkpoint_is_refused_by_calibrate_into_without_options(tmp_path, synthetic_root):
    from cli import test as test_cli
    from helpers import make_checkpoint
    path = tmp_path / "N.pth.tar"
    make_checkpoint(path, "N")  # options without the validation settings
    with pytest.raises(SystemExit, match="validation rows are unknown"):
        test_cli.main(["--checkpoint", str(path), "--data-root", str(synthetic_root),
                       "--calibrate-into", str(tmp_path / "c"), "--quiet"])


def predict(ckpt, image, out, *extra):
    from cli import predict as P
    assert P.main([str(image), "--checkpoint", str(ckpt), "--out", str(out), "--domain", "K", "--quiet",
                   "--no-plots", "--no-fast", "--backend", "torch", *extra]) == 0
    return json.loads((out / "predictions.json").read_text())["images"][0]


def test_intervals_in_metres_and_calibration_changes_no_depth(old_and_calibrated, tmp_path, capsys):
    from helpers import write_image
    old, copy, _, _ = old_and_calibrated
    image = write_image(tmp_path / "frame.png", (96, 64), seed=3)
    a = predict(old, image, tmp_path / "a", "--intervals", "90")
    assert "no uncertainty calibration" in capsys.readouterr().err
    b = predict(copy, image, tmp_path / "b", "--intervals", "90")
    depth_a, depth_b = (np.load(tmp_path / d / "frame_depth.npy") for d in "ab")
    assert np.array_equal(depth_a, depth_b)  # the calibration never touches a depth value
    lo_a, hi_a, lo_b, hi_b = (np.load(tmp_path / d / f"frame_depth_{e}90.npy") for d in "ab" for e in ("lower", "upper"))
    assert a["interval"]["calibrated"] is False and a["interval"]["scale"] == 1.0
    assert a["interval"]["measured_coverage"] is None and "not measured" in a["interval"]["meaning"]
    assert b["interval"]["calibrated"] is True and b["interval"]["fitted_on"] == "frames"
    # the coverage quoted is the one measured on whole frames (leave-one-image-out on 2 validation frames)
    from models import read_checkpoint
    head = read_checkpoint(copy)[1][U.CALIBRATION_KEY]["heads"][1]
    assert b["interval"]["measured_coverage"] == pytest.approx(head["measured"]["validation_loo"]["coverage"]["90"],
                                                               abs=1e-6)
    assert b["interval"]["measured_images"] == 2 and "central 90 % interval in metres" in b["interval"]["meaning"]
    # the calibrated half-width over the raw one, per pixel (a depth-bin calibration: by its depth)
    factor = U.half_width(head, np.ones_like(depth_b), depth_b, 0.9) / U.z_value(0.9)
    unclipped = lo_a > 0
    assert np.all(lo_a <= depth_a) and np.all(hi_a >= depth_a)
    np.testing.assert_allclose((hi_b - depth_b)[unclipped], (factor * (hi_a - depth_a))[unclipped], rtol=1e-4)
    png = np.asarray(Image.open(tmp_path / "b" / "frame_depth_upper90.png"))
    assert png.dtype == np.uint16 and np.abs(png / 1000.0 - hi_b).max() <= 0.0005 + 1e-6
    assert b["interval"]["median_width_m"] == pytest.approx(float(np.median(hi_b - lo_b)), rel=1e-5)


def test_intervals_option_is_checked():
    from cli import predict as P
    with pytest.raises(SystemExit, match="--intervals '100'"):
        P.main(["x.png", "--intervals", "100"])


def test_stream_log_gives_each_frames_median_interval_width(old_and_calibrated, tmp_path):
    from helpers import write_image
    _, copy, _, _ = old_and_calibrated
    frames = tmp_path / "frames"
    for i in range(2):
        write_image(frames / f"f{i}.png", (96, 64), seed=i)
    from cli import predict as P
    assert P.main([str(frames), "--stream", "--checkpoint", str(copy), "--out", str(tmp_path / "o"), "--quiet",
                   "--no-plots", "--domain", "K", "--no-fast", "--backend", "torch", "--intervals", "80"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "o" / "frames_frames.csv")))
    widths = [float(r["median_interval80_m"]) for r in rows]
    assert len(widths) == 2 and all(w > 0 for w in widths)
    summary = json.loads((tmp_path / "o" / "frames_stream.json").read_text())["interval"]
    assert summary["coverage"] == 0.8 and summary["heads"]["K"]["calibrated"] is True
    assert summary["heads"]["N"]["calibrated"] is False  # the old file stored none to keep
    assert summary["median_width_m"] == pytest.approx(float(np.median(widths)), abs=1e-4)


def test_matrix_gains_ause_and_coverage_per_stage(stages, synthetic_root, tmp_path):
    from cli import test as test_cli
    runs, paths, _ = stages
    out = test_cli.main(["--matrix", "--checkpoint", str(paths[1]), "--data-root", str(synthetic_root),
                         "--uncertainty", "--max-images", "2", "--batch-size", "2", "--quiet", "--no-fast",
                         "--backend", "torch", "--json", str(tmp_path / "m.json")])
    m = out["uncertainty_matrix"]
    assert [len(r) for r in m["ause_rmse"]] == [1, 2] and [len(r) for r in m["coverage90_calibrated"]] == [1, 2]
    for s, stage in enumerate(out["stage_results"]):
        for d, c in enumerate("NK"[:s + 1]):
            u = stage["results"][c]["uncertainty"]
            assert m["ause_rmse"][s][d] == u["sparsification"]["rmse"]["ause"]
            assert m["coverage90_raw"][s][d] == u["calibration"]["raw"]["coverage"]["90"]
    assert "forgetting" in out["tables"]["ause_rmse"] and "after NK" in out["tables"]["coverage90_calibrated"]
