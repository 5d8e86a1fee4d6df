"""predict.py: outputs and their round trip, odd image modes, bad files, domain choice, errors;
output names that never collide, file names printed escaped."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli import predict
from base.errors import InputError
from inference import images
from inference import outputs
from helpers import (assert_one_error_line, error_of, make_checkpoint, make_data_root, make_net,
                     predict_args, save_authors_checkpoint, write_image)

SCALE = 0.25


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = make_data_root(tmp_path_factory.mktemp("data"), n_train=3, n_test=1, n_replay=3)
    path = tmp_path_factory.mktemp("ckpt") / "NKS.pth.tar"
    make_checkpoint(path, "NKS", scale=SCALE, prototypes="replay", data_root=root)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    write_image(d / "photo.jpg", (100, 70), "RGB", seed=1)
    write_image(d / "gray.png", (64, 48), "L", seed=2)
    write_image(d / "rgba.png", (64, 48), "RGBA", seed=3)
    write_image(d / "palette.png", (50, 40), "P", seed=4)
    (d / "broken.png").write_text("this is not a PNG\n")
    (d / "notes.txt").write_text("not an image either\n")
    return d


GOOD = {"photo": (70, 100), "gray": (48, 64), "rgba": (48, 64), "palette": (40, 50)}


@pytest.fixture(scope="module")
def folder_run(ckpt, folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    import io
    from contextlib import redirect_stderr, redirect_stdout
    err, std = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(std):
        status = predict.main([str(folder), "--checkpoint", str(ckpt), "--out", str(out), "--ply", "--quiet"])
    return status, out, err.getvalue(), std.getvalue()


def test_folder_with_odd_modes_and_a_broken_file(folder_run):
    status, out, err, std = folder_run
    assert status == 1  # one file failed
    assert "broken.png" in err and "not a readable image" in err
    assert "notes.txt" in err  # skipped by name, with a note
    assert "4 of 5 image(s) written" in std
    for name, (h, w) in GOOD.items():
        for suffix in ("_depth.png", "_depth.npy", "_depth_color.png", "_uncertainty.png", ".ply"):
            assert (out / f"{name}{suffix}").is_file(), f"{name}{suffix}"
        depth = np.load(out / f"{name}_depth.npy")
        assert depth.dtype == np.float32 and depth.shape == (h, w)  # original image size
        assert np.isfinite(depth).all() and depth.min() > 0
        assert f"{name}." in std and " m," in std  # domain and depth range printed per image
    summary = json.loads((out / "predictions.json").read_text())
    assert {i["file"].split("/")[-1] for i in summary["images"]} == {"photo.jpg", "gray.png", "rgba.png", "palette.png"}
    assert [f["file"].split("/")[-1] for f in summary["failed"]] == ["broken.png"]
    assert all(i["letter"] in "NKS" and i["chosen"] == "auto" for i in summary["images"])


def test_png16_round_trip_to_the_millimetre(folder_run):
    _, out, _, _ = folder_run
    for name in GOOD:
        img = Image.open(out / f"{name}_depth.png")
        mm = np.asarray(img)
        assert mm.dtype == np.uint16 or img.mode.startswith("I;16")
        depth = np.load(out / f"{name}_depth.npy")
        assert np.abs(mm.astype(np.float64) / 1000.0 - depth).max() <= 0.0005 + 1e-7


def test_ply_matches_depth_and_intrinsics(folder_run, ckpt):
    _, out, _, _ = folder_run
    summary = json.loads((out / "predictions.json").read_text())
    item = next(i for i in summary["images"] if i["file"].endswith("photo.jpg"))
    depth = np.load(out / "photo_depth.npy")
    pts = outputs.read_ply(out / "photo.ply")
    h, w = depth.shape
    assert len(pts) == h * w
    np.testing.assert_allclose(pts["z"], depth.ravel(), rtol=1e-6)
    cam = item["camera"]  # the camera the prediction assumed (frames.resolve_camera), as written
    fx, fy, cx, cy = cam["fx"], cam["fy"], cam["cx"], cam["cy"]
    assert "assumed the head's camera" in cam["assumed"]
    v, u = 5, 7
    k = v * w + u
    assert pts["x"][k] == pytest.approx((u - cx) * depth[v, u] / fx, rel=1e-5)
    assert pts["y"][k] == pytest.approx((v - cy) * depth[v, u] / fy, rel=1e-5)


def test_forced_domain_size_and_given_intrinsics(ckpt, folder, tmp_path, capsys):
    status = predict.main([str(folder / "gray.png"), "--checkpoint", str(ckpt), "--out", str(tmp_path), "--domain",
                           "kitti", "--size", "40x64", "--ply", "--intrinsics", "50,50,32,24", "--no-plots", "--quiet"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "kitti (K, given)" in printed
    assert np.load(tmp_path / "gray_depth.npy").shape == (48, 64)
    assert not (tmp_path / "gray_depth_color.png").exists()
    pts = outputs.read_ply(tmp_path / "gray.ply")
    assert pts["x"][0] == pytest.approx((0 - 32) * pts["z"][0] / 50, rel=1e-5)


def test_png16_and_intrinsics_helpers():
    d = np.array([[0.0, 0.0004, 0.0006, 1.23456], [-1.0, 65.535, 70.0, np.nan]], dtype=np.float32)
    np.testing.assert_array_equal(outputs.depth_to_png16(d), [[0, 0, 1, 1235], [0, 65535, 65535, 0]])
    k, src = outputs.intrinsics_for("N", 320, 240)
    assert k == pytest.approx((518.86 / 2, 519.47 / 2, 325.58 / 2, 253.74 / 2)) and "nyu" in src
    k, _ = outputs.intrinsics_for("K", 1216, 352)
    assert k == pytest.approx((721.5, 721.5, 596.5, 149.9))
    assert outputs.intrinsics_for("S", 640, 480, given=(1, 2, 3, 4)) == ((1, 2, 3, 4), "given")
    with pytest.raises(InputError, match="--intrinsics"):
        images.parse_intrinsics("1,2,3")


def test_errors(ckpt, folder, tmp_path):
    def err(argv):
        with pytest.raises(SystemExit) as e:
            predict.main(argv)
        return str(e.value.code)

    img = str(folder / "photo.jpg")
    assert "not found" in err([img, "--checkpoint", str(tmp_path / "none.pth.tar"), "--out", str(tmp_path)])
    assert "unknown domain 'X'" in err([img, "--checkpoint", str(ckpt), "--domain", "X", "--out", str(tmp_path)])
    assert "does not exist" in err([str(tmp_path / "nothing"), "--checkpoint", str(ckpt)])
    authors = save_authors_checkpoint(tmp_path / "NK.pth.tar", make_net(2))
    assert "--order" in err([img, "--checkpoint", str(authors), "--out", str(tmp_path)])
    msg = err([img, "--checkpoint", str(authors), "--order", "NK", "--out", str(tmp_path)])
    assert "--domain" in msg and "--replay-root" in msg  # no prototypes for automatic selection
    assert "not learned" in err([img, "--checkpoint", str(authors), "--order", "NK", "--domain", "S"])
    # an authors' file with the head given works
    assert predict.main([img, "--checkpoint", str(authors), "--order", "NK", "--domain", "N", "--size", "32x48",
                         "--out", str(tmp_path / "a"), "--no-plots", "--quiet"]) == 0
    # a single unreadable file: reported, exit status 1
    assert predict.main([str(folder / "broken.png"), "--checkpoint", str(ckpt), "--out", str(tmp_path / "b"),
                         "--quiet"]) == 1


def test_out_folder_equal_to_or_inside_the_input_folder(ckpt, tmp_path):
    """--out may be the input folder itself (outputs beside the inputs) or a folder inside it; a
    second run must not take the first run's outputs as inputs."""
    d = tmp_path / "photos"
    write_image(d / "a.png", (64, 48), "RGB", seed=5)
    write_image(d / "b.jpg", (64, 48), "RGB", seed=6)
    for out in (d, d / "depth"):
        for _ in range(2):
            assert predict.main([str(d), "--checkpoint", str(ckpt), "--out", str(out), "--domain", "N",
                                 "--no-plots", "--quiet"]) == 0
            done = json.loads((out / "predictions.json").read_text())["images"]
            assert sorted(Path(i["file"]).name for i in done) == ["a.png", "b.jpg"]


def test_a_second_run_on_the_output_folder_skips_every_output_interval_maps_included(tmp_path):
    """predict.py's own outputs (the --intervals maps too) are never taken for photos."""
    for name in ("room.png", "room_depth.png", "room_depth_color.png", "room_uncertainty.png",
                 "room_depth_lower90.png", "room_depth_upper97.5.png", "room_depth_lower90.npy"):
        Image.new("RGB", (8, 6)).save(tmp_path / name, format="PNG")
    found, notes = images.collect_inputs(tmp_path, tmp_path / "elsewhere", recursive=False)
    assert [p.name for p in found] == ["room.png"]
    assert sum("named like a depth output" in n for n in notes) == 5
    assert any("room_depth_lower90.npy" in n and "not an image file name" in n for n in notes)


def test_predict_max_depth_must_be_positive():
    with pytest.raises(SystemExit) as stop:
        predict.main(["missing.png", "--max-depth", "-1"])
    assert_one_error_line(str(stop.value.code), "--max-depth")


# ---- output names never collide -----------------------------------------------------------
def test_output_names_never_collide(ckpt, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    names = ["x.png", "x.PNG", "x.jpg", "x_jpg.png", "x_png.bmp"]
    for i, n in enumerate(names):
        Image.new("RGB", (16, 12), (i * 40, 0, 0)).save(inputs / n, format="BMP" if n.endswith("bmp") else
                                                        ("JPEG" if n.endswith("jpg") else "PNG"))
    stems = images.output_stems(sorted(inputs.iterdir()), inputs, tmp_path / "out")
    lowered = [str(s).lower() for s in stems.values()]
    assert len(set(lowered)) == len(names), stems
    assert stems[inputs / "x_jpg.png"].name == "x_jpg"  # a stem of its own keeps its name
    out = tmp_path / "out"
    assert predict.main(predict_args(ckpt, inputs, out)) == 0
    assert len(list(out.glob("*_depth.npy"))) == len(names)


# ---- predict.py's --out and input errors --------------------------------------------------
def test_predict_out_and_input_errors_are_one_line(ckpt, tmp_path):
    img = tmp_path / "a.png"
    Image.new("RGB", (16, 12)).save(img)
    (tmp_path / "afile").write_text("x")
    assert "is a file" in error_of(predict.main, predict_args(ckpt, img, tmp_path / "afile"))
    assert "cannot create" in error_of(predict.main, predict_args(ckpt, img, tmp_path / "afile" / "sub"))
    stream = [str(tmp_path), "--stream", "--checkpoint", str(ckpt), "--out", str(tmp_path / "afile"), "--quiet"]
    assert "is a file" in error_of(predict.main, stream)  # the stream path too
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    assert "not a regular file" in error_of(predict.main, predict_args(ckpt, fifo, tmp_path / "o"))


# ---- file names are printed escaped -------------------------------------------------------
def test_predict_prints_file_names_escaped(ckpt, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.new("RGB", (16, 12)).save(inputs / "a\x1b[31mred\nline.png")
    (inputs / "b\x1b[2J.png").write_bytes(b"not an image")
    assert predict.main(predict_args(ckpt, inputs, tmp_path / "o")) == 1
    printed = capsys.readouterr()
    text = printed.out + printed.err
    assert "\x1b" not in text and "\\x1b[31mred\\nline" in text and "\\x1b[2J" in text
