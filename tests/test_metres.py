"""Right metres on every path (issue 36): the pixel scale of whole test frames, the KITTI camera,
the runtimes' output precision, the camera hint of a file on every path, the stream smoother's
thresholds under --size, --intrinsics checks, AURG and the smaller user traps."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import make_checkpoint, make_data_root

SCALE = 0.25


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_data_root(tmp_path_factory.mktemp("data"), "NK", n_train=5, n_test=2, n_replay=5,
                          frame_scale=SCALE)


# ---- item 1: test.py --full-frame at --scale != 1 ----------------------------------------------
def test_full_frame_kitti_keeps_the_native_pixel_scale(root):
    """A K head learned windows cropped at the files' own pixel scale: a whole test frame is read
    at that scale whatever --scale (before: shrunk by --scale, the head saw half its focal length)."""
    from evaluation.evaluate import test_dataset
    with Image.open(next((root / "kitti" / "test").rglob("data/*.png"))) as im:
        w, h = im.size
    item = test_dataset("K", root, 0.125, full_frame="kitti")[0]
    image, depth = (item["image"], item["depth"]) if isinstance(item, dict) else item[:2]
    assert tuple(image.shape[-2:]) == (h, w) and tuple(depth.shape[-2:]) == (h, w)
    from evaluation.evaluate import full_frame_scale
    # NYU keeps --scale (its recipe resizes), and the selection benchmark uses the same rule
    assert full_frame_scale("N", 0.5) == 0.5 and full_frame_scale("K", 0.5) == 1.0
    import evaluation.selection as S
    assert not hasattr(S, "full_frame_scale") or S.full_frame_scale is full_frame_scale


# ---- item 3: OpenVINO bf16 keeps the depth output float32 --------------------------------------
def test_openvino_bf16_depth_is_not_rounded_to_bfloat16():
    """At ~50 m a bfloat16 depth output has 0.25 m steps (one or two distinct values over a frame
    whose float32 depth varies by millimetres); the heads' output convolutions stay float32 on the
    runtime path as on PyTorch's (models/fast.py). In a subprocess: once OpenVINO has run, the first
    signal the process handles can crash it (tests/test_export.py), which took the whole suite down."""
    import subprocess
    import sys
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root / "tests"), str(root)]))
    done = subprocess.run([sys.executable, "-c", "import test_metres; test_metres.check_openvino_bf16_depth()"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def check_openvino_bf16_depth():
    from helpers import make_net
    from inference.predictor import DepthPredictor
    net = make_net(1, depth_bias=[50.0])
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    ref = DepthPredictor(net, backend="torch", fast=False, precision="fp32").predict(x, domain=0)["depth"]
    ov = DepthPredictor(net, backend="openvino", precision="bf16")
    out = ov.predict(x, domain=0, with_uncertainty=True)
    depth = out["depth"]
    assert depth.dtype == torch.float32 and out["uncertainty"] is not None
    assert ref.unique().numel() > 100
    assert depth.unique().numel() > ref.unique().numel() // 2  # bf16 output: 1-2 values
    assert float((depth - ref).abs().max()) < 0.005 * 50  # within the benchmark's 0.5 %


# ---- item 4: one camera hint of a file on every path ---------------------------------------------
@pytest.fixture(scope="module")
def nk_ckpt(root, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "NK.pth.tar"
    make_checkpoint(path, "NK", scale=SCALE, data_root=root, prototypes="replay")
    return path


def write_exif_frames(folder, n=2, focal=50, size=(304, 88)):
    """K-like JPEGs carrying a 35 mm equivalent focal length in their EXIF."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    for i in range(n):
        exif = Image.Exif()
        exif.get_ifd(0x8769)[0xA405] = focal
        a = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(a).save(folder / f"f{i}.jpg", exif=exif, quality=95)
    return sorted(folder.glob("*.jpg"))


def run_cli(main, argv):
    import io
    from contextlib import redirect_stderr, redirect_stdout
    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        status = main(argv)
    return status, out.getvalue() + err.getvalue()


def test_stream_and_demo_use_the_files_exif_focal_length(nk_ckpt, tmp_path):
    """--stream (a flag that only changes the output format) and the demo give predict.py's depth
    on the same files: all take the EXIF focal length through Predictor.camera_of."""
    from cli import predict as CP
    from cli.demo import Models, infer
    import argparse
    files = write_exif_frames(tmp_path / "frames")
    common = ["--checkpoint", str(nk_ckpt), "--domain", "K", "--precision", "fp32", "--backend", "torch",
              "--quiet", "--no-plots"]
    status, text = run_cli(CP.main, [str(tmp_path / "frames"), "--out", str(tmp_path / "a"), *common])
    assert status == 0, text
    status, text = run_cli(CP.main, [str(tmp_path / "frames"), "--out", str(tmp_path / "b"), "--stream",
                                     "--save-depth", *common])
    assert status == 0, text
    args = argparse.Namespace(checkpoint=str(nk_ckpt), order=None, replay_root=None, device="cpu",
                              max_models=1, max_pixels=None)
    models = Models(args)
    for f in files:
        ref = np.load(tmp_path / "a" / f"{f.stem}_depth.npy")
        streamed = np.load(tmp_path / "b" / "frames_depth" / f"{f.stem}_depth.npy")
        np.testing.assert_allclose(streamed, ref, rtol=1e-4, atol=1e-4)
        page = infer(models, str(f), str(nk_ckpt), "kitti (K)", tmp_path / "demo")
        assert "EXIF" in page["domain"] and f"depth {ref.min():.2f}-{ref.max():.2f} m" in page["domain"]


# ---- item 5: the smoother's thresholds on the scale of the distances it compares ---------------
@pytest.fixture(scope="module")
def frames_ckpt(root, nk_ckpt, tmp_path_factory):
    from inference.replay import add_frame_statistics
    out = tmp_path_factory.mktemp("frames") / "NK_frames.pth.tar"
    add_frame_statistics(nk_ckpt, out, root, max_images=5, quiet=True)
    return out


def test_size_stream_gets_no_thresholds_of_another_scale(frames_ckpt, tmp_path):
    """Under --size the distances are the stored selector's on the squeezed input: the frames
    statistics' thresholds (calibrated on whole-frame distances) must not be applied to them."""
    from inference.images import ImageOptions, Predictor
    from inference.stream import frame_thresholds
    whole = Predictor(frames_ckpt, ImageOptions(quiet=True))
    sized = Predictor(frames_ckpt, ImageOptions(quiet=True, size=(64, 96)))
    assert frame_thresholds(whole) is not None and len(frame_thresholds(whole)) == 2
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (88, 304, 3), dtype=np.uint8))
    r_whole, r_sized = whole.run(img, want_distances=True), sized.run(img, want_distances=True)
    assert r_whole["distances"] is not None and r_sized["distances"] is not None
    assert frame_thresholds(sized) is None


# ---- item 12: the frame statistics' message counts the rows it uses and names the caller's options
def test_frame_statistics_message_counts_the_rows_used(root, nk_ckpt):
    from base.errors import InputError
    from inference.replay import frame_statistics
    from models import load_checkpoint
    net = load_checkpoint(nk_ckpt)
    with pytest.raises(InputError) as e:
        frame_statistics(net, "NK", root, max_images=3, options=("--data-root", "--proto-images"))
    text = str(e.value)
    assert text.startswith("--data-root: domain N") and "3 used (the first 3 of its 5, --proto-images 3)" in text


# ---- item 2: KITTI's stored camera is a crop of the raw frame, not a resize ---------------------
RAW_K = (721.5377, 721.5377, 609.5593, 172.854)  # 2011_09_26 P_rect_02 (formats.md)


def write_real_kitti(root, calib=True):
    """Files in the real KITTI layout at the raw 1242x375 size (depth benchmark + raw images +
    val_selection_cropped), with the date's calib_cam_to_cam.txt and the crops' intrinsics."""
    from helpers import write_kitti
    out = write_kitti(str(root), frames=("0000000005",), cams=("02",), n_val=1, hw=(375, 1242))
    if calib:
        fx, fy, cx, cy = RAW_K
        p = f"{fx:e} 0.000000e+00 {cx:e} 4.485728e+01 0.000000e+00 {fy:e} {cy:e} 2.163791e-01 " \
            "0.000000e+00 0.000000e+00 1.000000e+00 2.745884e-03"
        (root / "raw" / "2011_09_26" / "calib_cam_to_cam.txt").write_text(
            "calib_time: 09-Jan-2012 13:57:47\nS_rect_02: 1.242000e+03 3.750000e+02\n"
            f"P_rect_02: {p}\n")
        (root / "val_selection_cropped" / "intrinsics").mkdir(parents=True, exist_ok=True)
        name = Path(out["test"][0][0]).stem
        (root / "val_selection_cropped" / "intrinsics" / f"{name}.txt").write_text(
            f"{fx} 0.0 {cx - 13} 0.0 {fy} {cy - 23} 0.0 0.0 1.0\n")
    return out


@pytest.mark.parametrize("calib", [True, False])
def test_kitti_stored_camera_is_a_crop_of_the_raw_frame(tmp_path, calib):
    """The K head's camera on real KITTI files keeps fx = fy = 721.5 (the calibration's, or the
    registry crop's widened to 1242x375); a resize gave fx 736.9, fy 768.6."""
    from inference import frames as FR
    write_real_kitti(tmp_path, calib)
    for cam in (FR.source_camera("K", tmp_path), FR.trained_camera("K", 0.5, tmp_path)):
        assert (cam.width, cam.height) == (1242, 375)
        assert cam.fx == pytest.approx(721.5, abs=0.05) and cam.fy == pytest.approx(721.5, abs=0.05)
        assert cam.cx == pytest.approx(609.56, abs=0.1) and cam.cy == pytest.approx(172.85, abs=0.1)
    if calib:  # each crop's intrinsics file of val_selection_cropped
        image = next((tmp_path / "val_selection_cropped" / "image").glob("*.png"))
        cam = FR.calibration_camera(image)
        assert (cam.fx, cam.cx, cam.width) == (pytest.approx(RAW_K[0]), pytest.approx(RAW_K[2] - 13), 1242)


def test_true_intrinsics_and_fov_of_a_raw_kitti_frame_need_no_rescaling(tmp_path):
    """A raw KITTI frame with its true intrinsics, or with its field of view, runs at its own
    pixel scale through the K head learned on real KITTI files (depth scale 1; before: 2.1 % off)."""
    import math
    from inference import frames as FR
    write_real_kitti(tmp_path)
    head = FR.trained_camera("K", 1.0, tmp_path)
    hfov = math.degrees(2 * math.atan(1242 / 2 / RAW_K[0]))
    for hint in (FR.CameraHint(intrinsics=RAW_K), FR.CameraHint(fov_deg=hfov)):
        cam, _ = FR.resolve_camera(hint, 1242, 375, head)
        plan = FR.plan_frame(1242, 375, cam, head)
        assert (plan.width, plan.height) == (1242, 375)
        assert plan.depth_scale == pytest.approx(1.0, abs=1e-3)


# ---- item 7: --intrinsics checked against the image, rescaled explicitly, turned with EXIF ------
@pytest.mark.parametrize("text", ["inf,500,100,50", "nan,500,100,50", "500,500,nan,50", "1e-9,1e-9,100,50"])
def test_absurd_intrinsics_are_refused_naming_the_option(text):
    from base.errors import InputError
    from inference import frames as FR
    from inference.images import ImageOptions, camera_hint
    with pytest.raises(InputError, match="^--intrinsics"):
        hint = camera_hint(ImageOptions(intrinsics=text))
        FR.resolve_camera(hint, 200, 100, None)


def test_intrinsics_for_another_resolution_are_refused_or_rescaled_explicitly():
    """KITTI's raw intrinsics given to a half-size frame put the principal point outside it:
    refused; given with their size (@WxH) they are rescaled to the frame."""
    from base.errors import InputError
    from inference import frames as FR
    from inference.images import ImageOptions, camera_hint
    with pytest.raises(InputError, match="outside"):
        FR.resolve_camera(camera_hint(ImageOptions(intrinsics="721.5,721.5,609.6,172.9")), 311, 94, None)
    hint = camera_hint(ImageOptions(intrinsics="721.5,721.5,609.6,172.9@1242x375"))
    cam, how = FR.resolve_camera(hint, 621, 188, None)
    assert cam.fx == pytest.approx(721.5 / 2, rel=1e-3) and cam.fy == pytest.approx(721.5 * 188 / 375, rel=1e-3)
    assert cam.cx == pytest.approx(304.55, abs=0.01) and "rescaled" in how
    with pytest.raises(InputError, match="--intrinsics"):
        camera_hint(ImageOptions(intrinsics="721.5,721.5,609.6,172.9@1242"))


@pytest.mark.parametrize("orientation", [2, 3, 4, 5, 6, 7, 8])
def test_intrinsics_turn_with_the_exif_orientation(tmp_path, orientation):
    """The principal point given on the stored pixel grid lands on the same scene pixel after
    the EXIF rotation predict.py applies to the pixels; fx and fy swap with a quarter turn."""
    from PIL import ImageOps
    from inference import frames as FR
    from inference.images import ImageOptions, camera_hint, read_rgb
    w, h, cx, cy = 60, 40, 17, 9
    a = np.zeros((h, w, 3), np.uint8)
    a[cy, cx] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(a).save(tmp_path / "p.png", exif=exif.tobytes())
    upright = np.asarray(read_rgb(tmp_path / "p.png"))
    v, u = np.argwhere(upright[..., 0] == 255)[0]
    hint = camera_hint(ImageOptions(intrinsics=f"50,70,{cx},{cy}"), tmp_path / "p.png")
    cam, _ = FR.resolve_camera(hint, upright.shape[1], upright.shape[0], None)
    assert (cam.cx, cam.cy) == (pytest.approx(u), pytest.approx(v))
    assert (cam.fx, cam.fy) == ((70, 50) if orientation >= 5 else (50, 70))


# ---- item 12: the --size point cloud's camera is not stretched -----------------------------------
def test_size_point_cloud_camera_is_isotropic(nk_ckpt, tmp_path):
    """Under --size the PLY used the K sensor scaled to the image per axis (a 4:3 image: fy 2.6x
    fx); now the frame's camera as without --size (the head's field of view, square pixels)."""
    from cli import predict as CP
    from inference.outputs import read_ply
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    status, text = run_cli(CP.main, [str(tmp_path / "a.png"), "--checkpoint", str(nk_ckpt), "--domain", "K",
                                     "--size", "32x48", "--ply", "--no-plots", "--quiet", "--out", str(tmp_path / "o")])
    assert status == 0, text
    pts = read_ply(tmp_path / "o" / "a.ply")
    x, y, z = (pts[k].reshape(60, 80).astype(np.float64) for k in ("x", "y", "z"))
    fx = 1.0 / np.median(np.diff(x / z, axis=1))
    fy = 1.0 / np.median(np.diff(y / z, axis=0))
    assert fx == pytest.approx(fy, rel=1e-3)


# ---- item 10: AURG's definition, and Poggi et al.'s --------------------------------------------
def test_aurg_trapezoid_rule_is_poggi_et_al():
    """rule="trapezoid" integrates as Poggi et al.'s compute_aucs (a final 0 at fraction 1, the
    trapezoid rule over [0, 1], random area = its first entry); AUSE agrees with the mean rule and
    AURG exceeds it by c0 / (2K)."""
    from base import uncertainty as U
    rng = np.random.default_rng(0)
    gt = rng.uniform(1, 10, 500)
    pred = gt + rng.normal(0, 0.5, 500)
    sigma = np.abs(pred - gt) + rng.uniform(0, 0.3, 500)
    for metric in ("rmse", "abs_rel"):
        c = U.sparsification(pred, gt, sigma, metric, steps=50)
        x = np.linspace(0, 1, 51)
        trap = lambda y: float(np.sum((np.append(y, 0)[1:] + np.append(y, 0)[:-1]) / 2 * np.diff(x)))  # noqa: E731
        theirs = {"ause": trap(c["uncertainty"]) - trap(c["oracle"]), "aurg": c["random"][0] - trap(c["uncertainty"])}
        got = U.ause_aurg(c, rule="trapezoid")
        assert got["ause"] == pytest.approx(theirs["ause"]) and got["aurg"] == pytest.approx(theirs["aurg"])
        mean = U.ause_aurg(c)
        assert mean["ause"] == pytest.approx(got["ause"])
        assert got["aurg"] - mean["aurg"] == pytest.approx(c["random"][0] / 100)


# ---- item 12: fit_scale on 2-D input -------------------------------------------------------------
def test_fit_scale_takes_maps():
    from base import uncertainty as U
    rng = np.random.default_rng(1)
    err, sigma = rng.normal(0, 2, (30, 40)), rng.uniform(0.5, 1.5, (30, 40))
    assert U.fit_scale(err, sigma) == pytest.approx(U.fit_scale(err.ravel(), sigma.ravel()))


# ---- item 12: --selector on whole frames is said, interval PNGs warn, exports carry the cameras --
def test_selector_on_whole_frames_is_said(frames_ckpt, tmp_path):
    from cli import predict as CP
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (88, 304, 3), dtype=np.uint8)).save(tmp_path / "k.png")
    base = [str(tmp_path / "k.png"), "--checkpoint", str(frames_ckpt), "--no-plots", "--quiet"]
    status, text = run_cli(CP.main, [*base, "--out", str(tmp_path / "a"), "--selector", "pooled"])
    assert status == 0, text
    assert "--selector pooled applies to --size only" in text
    status, text = run_cli(CP.main, [*base, "--out", str(tmp_path / "b"), "--selector", "pooled", "--size", "32x96"])
    assert status == 0 and "applies to --size only" not in text


def test_interval_pngs_warn_when_they_saturate(tmp_path):
    """A far K depth's upper interval end beyond 65.535 m saturates its 16-bit PNG: warned like the depth PNG."""
    from cli import predict as CP
    from helpers import make_net
    net = make_net(2, depth_bias=[3.0, 60.0])
    make_checkpoint(tmp_path / "NK.pth.tar", "NK", scale=SCALE, net=net)
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (88, 304, 3), dtype=np.uint8)).save(tmp_path / "k.png")
    status, text = run_cli(CP.main, [str(tmp_path / "k.png"), "--checkpoint", str(tmp_path / "NK.pth.tar"), "--domain", "K",
                                     "--no-plots", "--quiet", "--intervals", "99", "--out", str(tmp_path / "o")])
    assert status == 0, text
    upper = np.load(tmp_path / "o" / "k_depth_upper99.npy")
    assert (upper > 65.535).any()
    assert "k_depth_upper99.npy keeps their values" in text


def test_exported_models_carry_the_cameras_and_the_calibration(nk_ckpt, tmp_path):
    from inference.export import export_net
    from inference.frames import head_cameras
    from models import load_checkpoint
    net = load_checkpoint(nk_ckpt)
    for fmt, name in (("torchscript", "m.ts"), ("onnx", "m.onnx")):
        meta = export_net(net, tmp_path / name, format=fmt, domain="K")
        assert meta["cameras"] == [c.as_dict() for c in head_cameras(net.meta, "NK")]
        assert meta["calibration_scales"] == [1.0, 1.0] and "network only" in meta["scope"]


# ---- the consistency benchmark (bench/bench_paths.py): a smoke run on a tiny model ---------------
def test_bench_paths_smoke(frames_ckpt, root, tmp_path):
    import json
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import bench_paths
    (status, text) = run_cli(bench_paths.main, ["--checkpoint", str(frames_ckpt), "--data-root", str(root), "--quick",
                                                "--out", str(tmp_path / "b.json"), "--work", str(tmp_path / "w")])
    assert status == 0, text
    rows = {r["path"]: r for r in json.loads((tmp_path / "b.json").read_text())["rows"]}
    ref = rows["reference: predict_image torch fp32"]
    assert ref["max_m"] == 0 and not ref["misses"] and set(ref["metrics"]) == {"N", "K"}
    assert rows["predict_image onnxruntime f32"]["worst_median_rel"] < 1e-3
    assert "| predict_image torch bf16 |" in text
