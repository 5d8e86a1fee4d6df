"""What a training stage shows and spends outside its steps: the progress bar of a step-limited
stage, the budget of the whole-frame selector statistics at the stage's end (counted trunk calls
and pixels, never timings), and the training precision ``--amp auto`` picks per CPU kind."""
import json

import pytest
import torch

from cli import train as train_cli
from engine import processes
from engine.stage import Stage
from base.domains import Intrinsics
from inference.replay import FRAME_AREA, FRAME_IMAGES, frame_statistics
from models import hardware
from helpers import make_data_root, make_net


def test_step_limited_stage_shows_its_steps_and_its_end(synthetic_root, tmp_path, capfd):
    """--max-steps 2 of an epochs-1000 stage: the bar counts the stage's steps ("N: 2/2 steps"), not
    "epoch 1/1000", and the work at the stage's end has bars of its own."""
    train_cli.main("N", "", ["--data-root", str(synthetic_root), "--runs-dir", str(tmp_path), "--scale", "0.25",
                             "--batch-size", "4", "--workers", "0", "--val-images", "2", "--proto-images", "5",
                             "--encoder", "resnet18", "--epochs", "1000", "--max-steps", "2"])
    err = capfd.readouterr().err
    assert "N: 2/2 steps" in err and "N: 1/2 steps" in err
    assert "epoch 1/1000" not in err
    for piece in ("prototypes", "lda statistics", "frame statistics", "calibration"):
        assert f"N: {piece}" in err, piece


def test_epoch_limited_stage_keeps_its_epoch_bar(synthetic_root, tmp_path, capfd):
    train_cli.main("N", "", ["--data-root", str(synthetic_root), "--runs-dir", str(tmp_path), "--scale", "0.25",
                             "--batch-size", "4", "--workers", "0", "--val-images", "2", "--proto-images", "5",
                             "--encoder", "resnet18", "--epochs", "1"])
    err = capfd.readouterr().err
    assert "N ours epoch 1/1" in err and " steps" not in err.split("N: prototypes")[0]


def counting_net():
    """A small network whose encoder's first convolution records the pixels of every input it
    sees (every trunk pass, and the out-of-domain descriptor's encoder pass, go through it)."""
    net = make_net(heads=2)
    net.pixels = []
    net.E.conv1.register_forward_pre_hook(lambda m, a: net.pixels.append(a[0].shape[0] * a[0].shape[-2] * a[0].shape[-1]))
    return net


def test_frame_statistics_work_does_not_grow_with_the_frames_resolution(tmp_path):
    """A model that learned KITTI first at its own pixel scale has the whole frame as its trained
    camera; at quarter and at full size the statistics run the same number of trunk passes of at
    most the budget's pixels each (before the budget: the whole frame, 16x the pixels at full size).
    A small budget keeps the test fast; the default's rule is the same (test below)."""
    cap, counts = 8192, {}
    for frame_scale in (0.25, 1.0):
        root = make_data_root(tmp_path / str(frame_scale), letters="KN", n_train=6, n_test=1, n_replay=6,
                              frame_scale=frame_scale)
        w, h = round(1216 * frame_scale), round(352 * frame_scale)
        camera = Intrinsics(721.5 * frame_scale, 721.5 * frame_scale, w / 2, h / 2, w, h)  # KITTI's, whole frame
        net = counting_net()
        stats = frame_statistics(net, "KN", root, [camera, None], max_images=5, max_area=cap)
        assert stats["area"] == min(cap, w * h)
        counts[frame_scale] = net.pixels
    assert len(counts[0.25]) == len(counts[1.0]) and len(counts[1.0]) % (2 * 5 * 5) == 0
    for pixels in counts.values():  # domains x images x (as is, mirrored, half, crop, jitter) passes
        assert max(pixels) <= 1.1 * cap  # the selection size rounds each side to whole pixels
    assert sum(counts[1.0]) <= 1.2 * sum(counts[0.25])


def test_frame_statistics_area_rule(tmp_path):
    """The default budget caps the selection area at FRAME_AREA; max_area=0 keeps the rule before
    the budget (the first head's whole trained frame)."""
    from inference.replay import selection_area
    big, small = Intrinsics(721.5, 721.5, 608, 176, 1216, 352), Intrinsics(64.9, 64.9, 40, 30, 80, 60)
    assert selection_area([big]) == FRAME_AREA < 1216 * 352
    assert selection_area([small]) == 80 * 60
    assert selection_area([big], max_area=0) == 1216 * 352
    root = make_data_root(tmp_path, letters="KN", n_train=6, n_test=1, n_replay=6, frame_scale=0.1)
    camera = Intrinsics(72.2, 72.2, 61, 18, 122, 35)
    assert frame_statistics(counting_net(), "KN", root, [camera, None], max_images=5, max_area=0)["area"] == 122 * 35


def test_stage_frame_images_budget():
    """The stage's frame statistics use --frame-images, else --proto-images up to the budget."""
    from types import SimpleNamespace
    stage = lambda **o: SimpleNamespace(opts=SimpleNamespace(**o))  # noqa: E731
    assert Stage.frame_images(stage(proto_images=200, frame_images=None)) == FRAME_IMAGES
    assert Stage.frame_images(stage(proto_images=20, frame_images=None)) == 20
    assert Stage.frame_images(stage(proto_images=200, frame_images=150)) == 150


# /proc/cpuinfo flags of the CPU kinds this project runs on
FLAGS = {"avx2": {"avx", "avx2", "fma"},                                                   # AMD Zen 3
         "avx512": {"avx", "avx2", "fma", "avx512f", "avx512bw"},                         # Skylake-SP
         "avx512_bf16": {"avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_bf16"},     # AMD Zen 4
         "amx": {"avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "amx_tile", "amx_bf16"}}


@pytest.fixture
def force_cpu(monkeypatch):
    def force(kind):
        monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(FLAGS[kind]))
        monkeypatch.setattr(hardware, "bf16_kernels", lambda: kind != "avx2")
        assert hardware.cpu_kind() == kind
    return force


@pytest.mark.parametrize("kind", ["avx2", "avx512", "avx512_bf16", "amx"])
def test_default_training_precision_per_cpu_kind(force_cpu, kind):
    """--amp auto trains in float32 on every CPU kind (no seed table justifies bf16 yet); --amp
    bf16 stays available everywhere."""
    force_cpu(kind)
    assert hardware.training_precision() == "fp32"
    assert processes.amp_settings("auto", torch.device("cpu")) == (None, False)
    assert processes.amp_settings("bf16", torch.device("cpu")) == (torch.bfloat16, False)


@pytest.mark.parametrize("kind,expected", [("avx2", None), ("avx512", None), ("avx512_bf16", torch.bfloat16),
                                           ("amx", torch.bfloat16)])
def test_a_bf16_default_only_lands_where_bf16_is_native(force_cpu, monkeypatch, kind, expected):
    """Were the table to switch every kind to bf16, only the kinds with native bf16 would train in
    it; the others (emulated bf16 runs slower than float32) keep float32."""
    monkeypatch.setattr(hardware, "TRAINING_PRECISION", {k: "bf16" for k in hardware.TRAINING_PRECISION})
    force_cpu(kind)
    assert processes.amp_settings("auto", torch.device("cpu"))[0] == expected


@pytest.mark.parametrize("kind", ["avx2", "avx512", "avx512_bf16", "amx"])
def test_default_training_layout_per_cpu_kind(force_cpu, kind):
    """--channels-last auto trains NCHW on every CPU kind so far (the table in models/hardware.py)."""
    force_cpu(kind)
    assert hardware.training_channels_last() is False
    assert processes.channels_last_setting("auto", torch.device("cpu")) is False
    assert processes.channels_last_setting("on", torch.device("cpu")) is True


def test_channels_last_training_is_the_same_arithmetic(synthetic_root, tmp_path):
    """One step in NHWC layout gives the NCHW step's weights up to rounding, and trains in NHWC."""
    from models import read_checkpoint
    states = {}
    for layout in ("off", "on"):
        out = train_cli.main("N", "", ["--data-root", str(synthetic_root), "--runs-dir", str(tmp_path / layout),
                                       "--scale", "0.25", "--batch-size", "4", "--workers", "0", "--val-images", "2",
                                       "--proto-images", "5", "--encoder", "resnet18", "--max-steps", "1",
                                       "--channels-last", layout, "--quiet"])
        states[layout] = read_checkpoint(out)[0]
    assert states["on"]["E.conv1.weight"].is_contiguous(memory_format=torch.channels_last)
    assert not states["off"]["E.conv1.weight"].is_contiguous(memory_format=torch.channels_last)
    # Adam moves every weight by up to ~lr (1e-4) whatever its gradient's size, so where a gradient is
    # ~0 its rounding may flip the step's sign: at most 2 lr apart, and almost every weight far closer
    diffs = torch.cat([(a - states["on"][k]).abs().flatten() for k, a in states["off"].items()
                       if a.is_floating_point() and k.endswith("weight")])
    assert diffs.max() <= 2.5e-4 and diffs.median() <= 1e-6, (diffs.max(), diffs.median())
    logs = [json.loads((tmp_path / layout / "N" / "log.jsonl").read_text().splitlines()[0]) for layout in ("off", "on")]
    assert logs[0]["loss"]["total"] == pytest.approx(logs[1]["loss"]["total"], rel=1e-4)
    assert logs[0]["val"]["N"]["rmse"] == pytest.approx(logs[1]["val"]["N"]["rmse"], rel=1e-3)
