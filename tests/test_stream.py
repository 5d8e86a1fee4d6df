"""Streams: online head smoothing on known switch points, predict.py on a generated video and on a
folder of frames (decode, select, write, log), the reader/writer threads, errors; a stream stopped
half way (a bad frame, Ctrl-C) keeps the log of the frames done."""
import csv
import io
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest
from PIL import Image

from cli import predict
from inference import images
from inference import outputs
from inference import stream as S
from helpers import CONSTANT_COLORS, error_of, make_checkpoint, make_data_root

SEGMENTS = "NSN"   # constant-colour N and S frames: the tiny model's prototypes tell them apart
SEG_LEN = 5
FRAME_WH = (128, 96)


pytestmark = pytest.mark.usefixtures("single_thread")


# ------------------------------------------------------------------------------ the smoothing
def distance_sequence(labels, flips, seed=0):
    """(T,3) distances: the true head nearest by a clear margin, except at ``flips`` where another
    head is slightly nearer (what makes the per-frame rule flicker)."""
    rng = np.random.default_rng(seed)
    d = 1.0 + 0.05 * rng.random((len(labels), 3))
    for t, y in enumerate(labels):
        d[t, y] = 0.6 + 0.05 * rng.random()
        if t in flips:
            d[t, (y + 1) % 3] = d[t, y] - 0.05
    return d


LABELS = [0] * 20 + [1] * 20 + [2] * 20 + [0] * 20
CHANGES = [20, 40, 60]
FLIPS = {3, 11, 12, 27, 45, 52, 53, 70, 77}  # single and double outliers inside segments


def run_rule(smoother, dists):
    return [smoother(None, d) for d in dists]


@pytest.mark.parametrize("mode,window", [("mean", S.DEFAULT_WINDOW), ("mean", 3), ("vote", 5)])
def test_smoothing_removes_flicker_with_short_delay(mode, window):
    dists = distance_sequence(LABELS, FLIPS)
    raw = run_rule(S.HeadSmoother(mode="raw"), dists)
    smooth = run_rule(S.HeadSmoother(window=window, mode=mode), dists)
    assert raw == list(np.argmin(dists, axis=1))
    assert S.count_switches(raw) > len(CHANGES)  # the raw rule flickers on this sequence
    assert S.count_switches(smooth) == len(CHANGES)  # smoothed: exactly the true switches
    for c in CHANGES:
        delay = next(t - c for t in range(c, len(LABELS)) if smooth[t] == LABELS[c])
        assert delay <= 3, (c, delay)
    acc = lambda heads: np.mean(np.array(heads) == np.array(LABELS))  # noqa: E731
    assert acc(smooth) >= acc(raw)


def test_hysteresis_margin_keeps_the_current_head_on_near_ties():
    # two heads alternately nearest by 1 %: without a margin the mean rule follows the noise
    d = np.array([[1.0, 1.01, 2.0] if t % 2 else [1.01, 1.0, 2.0] for t in range(12)])
    assert S.count_switches(run_rule(S.HeadSmoother(window=1, mode="mean", margin=0.0), d)) == 11
    held = run_rule(S.HeadSmoother(window=1, mode="mean", margin=0.05), d)
    assert S.count_switches(held) == 0 and held[0] == 1  # first frame's choice is kept


def test_smoother_rejects_bad_settings():
    for kw in (dict(window=0), dict(mode="median"), dict(margin=-0.1)):
        with pytest.raises(ValueError):
            S.HeadSmoother(**kw)


# ------------------------------------------------------------------------------ the stream path
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = make_data_root(tmp_path_factory.mktemp("data"), n_train=3, n_test=1, n_replay=3, style="constant")
    path = tmp_path_factory.mktemp("ckpt") / "NKS.pth.tar"
    make_checkpoint(path, "NKS", scale=0.25, prototypes="replay", data_root=root)
    return path


def stream_frames():
    """(label, RGB array) of the SEGMENTS stream: flat domain colours with faint noise."""
    rng = np.random.default_rng(0)
    w, h = FRAME_WH
    return [(letter, np.clip(np.array(CONSTANT_COLORS[letter]) + rng.integers(-3, 4, (h, w, 3)), 0, 255)
             .astype(np.uint8)) for letter in SEGMENTS for _ in range(SEG_LEN)]


def run_predict(argv):
    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        status = predict.main(argv)
    return status, out.getvalue(), err.getvalue()


def read_log(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def check_log(rows, letters="NKS"):
    """The log is self-consistent: raw head = nearest logged distance, chosen head = the default
    smoother replayed over the logged distances, switches flagged where the head changes."""
    dists = np.array([[float(r[f"dist_{c}"]) for c in letters] for r in rows])
    assert [r["raw_head"] for r in rows] == [letters[i] for i in dists.argmin(axis=1)]
    replay = run_rule(S.HeadSmoother(), dists)
    assert [r["head"] for r in rows] == [letters[i] for i in replay]
    heads = [r["head"] for r in rows]
    assert [int(r["switched"]) for r in rows] == [0] + [int(a != b) for a, b in zip(heads, heads[1:])]
    assert all(float(r["latency_ms"]) > 0 for r in rows)


def check_segments(rows):
    """Each segment's domain is chosen by its last frame (delay <= 3 with the default window), and
    the chosen head switches only at the segment changes."""
    heads = [r["head"] for r in rows]
    for s, letter in enumerate(SEGMENTS):
        seg = heads[s * SEG_LEN:(s + 1) * SEG_LEN]
        assert seg[-1] == letter and seg[min(3, SEG_LEN - 1):] == [letter] * (SEG_LEN - min(3, SEG_LEN - 1))
    assert S.count_switches(heads) == len(SEGMENTS) - 1


def test_video_in_depth_video_and_log_out(ckpt, tmp_path):
    import imageio.v2 as iio
    video = tmp_path / "clip.mp4"
    with iio.get_writer(str(video), format="FFMPEG", fps=10, codec="libx264", pixelformat="yuv420p",
                        macro_block_size=1, ffmpeg_log_level="error") as w:
        for _, rgb in stream_frames():
            w.append_data(rgb)
    out = tmp_path / "out"
    status, std, err = run_predict([str(video), "--checkpoint", str(ckpt), "--out", str(out),
                                    "--save-depth", "--quiet"])
    assert status == 0, err
    n = len(SEGMENTS) * SEG_LEN
    rows = read_log(out / "clip_frames.csv")
    assert [int(r["frame"]) for r in rows] == list(range(n))
    check_log(rows)
    check_segments(rows)
    # the depth video: one frame per input frame, the frame beside its depth under a label band
    reader = iio.get_reader(str(out / "clip_depth.mp4"), format="FFMPEG")
    frames = [f for f in reader]
    reader.close()
    assert len(frames) == n
    w, h = FRAME_WH
    assert frames[0].shape == (h + S.LABEL_HEIGHT, 2 * w, 3)
    left = frames[0][S.LABEL_HEIGHT + 10:-10, 10:w - 10].reshape(-1, 3).mean(axis=0)
    assert np.abs(left - np.array(CONSTANT_COLORS["N"])).max() < 12  # the input is on the left
    assert frames[0][:S.LABEL_HEIGHT].max() > 200  # the label's white text
    # per-frame depth files: the 16-bit PNG is the .npy in millimetres, at the frame's size
    depth = np.load(out / "clip_depth" / "000007_depth.npy")
    assert depth.shape == (h, w)
    png = np.asarray(Image.open(out / "clip_depth" / "000007_depth.png"))
    assert np.array_equal(png, outputs.depth_to_png16(depth))
    assert abs(float(rows[7]["depth_max"]) - float(depth.max())) < 1e-3
    assert "15 frame(s)" in std
    assert not list(out.glob("*.part.*"))  # the video was written under a temporary name, then renamed


def test_frame_folder_in_natural_order_without_threads(ckpt, tmp_path):
    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    for i, (_, rgb) in enumerate(stream_frames()):
        Image.fromarray(rgb).save(frames_dir / f"f{i + 1}.png")  # f2 must come before f10
    out = tmp_path / "out"
    status, _, err = run_predict([str(frames_dir), "--stream", "--checkpoint", str(ckpt), "--out", str(out),
                                  "--no-threads", "--no-plots", "--quiet"])
    assert status == 0, err
    rows = read_log(out / "frames_frames.csv")
    assert [r["name"] for r in rows] == [f"f{i + 1}" for i in range(len(rows))]
    check_log(rows)
    check_segments(rows)
    assert not (out / "frames_depth.mp4").exists()  # --no-plots: no video


def test_threads_give_the_same_results(ckpt):
    model = images.Predictor(ckpt, device="cpu")
    frames = [(str(i), rgb) for i, (_, rgb) in enumerate(stream_frames())]
    a = S.run_stream(model, iter(frames), smoother=S.HeadSmoother(), threaded=True)
    b = S.run_stream(model, iter(frames), smoother=S.HeadSmoother(), threaded=False)
    key = lambda recs: [(r["name"], r["head"], r["raw_head"], round(r["depth_max"], 5)) for r in recs]  # noqa: E731
    assert key(a) == key(b) and len(a) == len(frames)


def test_no_smoothing_is_the_per_frame_rule_and_domain_forces_a_head(ckpt, tmp_path):
    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    for i, (_, rgb) in enumerate(stream_frames()[:4]):
        Image.fromarray(rgb).save(frames_dir / f"{i:03d}.png")
    out = tmp_path / "raw"
    assert run_predict([str(frames_dir), "--stream", "--checkpoint", str(ckpt), "--out", str(out),
                        "--no-smoothing", "--no-plots", "--quiet"])[0] == 0
    rows = read_log(out / "frames_frames.csv")
    assert all(r["head"] == r["raw_head"] for r in rows)
    out = tmp_path / "forced"
    assert run_predict([str(frames_dir), "--stream", "--checkpoint", str(ckpt), "--out", str(out),
                        "--domain", "K", "--no-plots", "--quiet"])[0] == 0
    rows = read_log(out / "frames_frames.csv")
    assert all(r["head"] == "K" and r["raw_head"] == "" for r in rows)


def test_errors_are_one_line(ckpt, tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all")
    for argv, needle in (([str(bad)], "cannot be read"),
                         ([str(bad), "--ply"], "--ply does not apply"),
                         ([str(tmp_path / "missing.mp4")], "does not exist"),
                         ([str(bad), "--window", "0"], "window must be at least 1")):
        with pytest.raises(SystemExit) as e:
            run_predict(argv + ["--checkpoint", str(ckpt), "--out", str(tmp_path / "o"), "--quiet"])
        assert str(e.value.code).startswith("error: ") and needle in str(e.value.code), e.value.code


def test_stream_benchmark_smoke(ckpt, tmp_path):
    """bench/bench_stream.py (the README's selection table) runs end to end on a tiny data root;
    the per-frame rule's switches are counted from its own head sequence."""
    import json
    root = make_data_root(tmp_path / "data", n_train=1, n_test=2, n_replay=1, style="constant")
    import bench_stream as bench
    out = tmp_path / "bench.json"
    with redirect_stdout(io.StringIO()) as std, redirect_stderr(io.StringIO()):
        assert bench.main(["--quick", "--checkpoint", str(ckpt), "--data-root", str(root), "--segments", "NSN",
                           "--out", str(out)]) == 0
    result = json.loads(out.read_text())["selection"]
    rows = {r["rule"]: r for r in result["rows"]}
    raw = rows["per-frame (raw)"]
    assert raw["true_switches"] == 2 * 2  # 2 streams x 2 changes
    assert all(ev["switches"] >= ev["wrong_switches"] for ev in raw["per_stream"])
    assert "**(default)**" in std.getvalue()


# ---- a stream stopped half way keeps the log of the frames done ----------------------
def frame_folder(tmp_path, n=4, bad=None):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(n):
        if i == bad:
            (folder / f"f{i}.png").write_bytes(b"broken frame")
        else:
            Image.new("RGB", (32, 24), (40 * i, 90, 60)).save(folder / f"f{i}.png")
    return folder


def frames_logged(out):
    import csv
    with open(out / "frames_frames.csv") as f:
        return [row["name"] for row in csv.DictReader(f)]


def test_stream_stopped_by_a_bad_frame_keeps_its_log(ckpt, tmp_path):
    folder = frame_folder(tmp_path, bad=3)
    out = tmp_path / "out"
    argv = [str(folder), "--stream", "--checkpoint", str(ckpt), "--out", str(out), "--quiet", "--device", "cpu"]
    msg = error_of(predict.main, argv)
    assert "f3.png" in msg and "3 frame(s) done" in msg
    assert frames_logged(out) == ["f0", "f1", "f2"]
    assert (out / "frames_depth.part.mp4").exists() and not (out / "frames_depth.mp4").exists()


def test_stream_interrupted_keeps_its_log_without_traceback(ckpt, tmp_path, monkeypatch, capsys):
    folder = frame_folder(tmp_path)
    out = tmp_path / "out"
    original, calls = images.Predictor.run, []

    def interrupted(self, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, *a, **k)

    monkeypatch.setattr(images.Predictor, "run", interrupted)
    try:
        predict.main([str(folder), "--stream", "--checkpoint", str(ckpt), "--out", str(out), "--quiet",
                      "--device", "cpu", "--no-plots"])
        code = 0
    except KeyboardInterrupt:  # what a traceback on the terminal is
        pytest.fail("Ctrl-C escaped predict.py as a KeyboardInterrupt (a traceback)")
    except SystemExit as stop:
        code = stop.code
    assert code == 130
    assert frames_logged(out) == ["f0", "f1"] and "interrupted: 2 frame(s) done" in capsys.readouterr().err


# ------------------------------------------------------------------------------ frames at once
def test_frames_at_once_give_the_records_of_one_frame_at_a_time(ckpt):
    """Two frames in flight (each with its share of the threads): the same heads, raw heads,
    distances and depth as one at a time, the smoother and the selection gate fed in frame order."""
    import torch
    model = images.Predictor(ckpt, device="cpu")
    frames = [(str(i), rgb) for i, (_, rgb) in enumerate(stream_frames())]
    key = lambda recs: [(r["frame"], r["name"], r["head"], r["raw_head"], r["selected"],  # noqa: E731
                         [round(d, 3) for d in r["distances"]], round(r["depth_max"], 4)) for r in recs]
    one = S.run_stream(model, iter(frames), smoother=S.HeadSmoother(), reselect=0.05, frames_at_once=1)
    before = torch.get_num_threads()
    two = S.run_stream(model, iter(frames), smoother=S.HeadSmoother(), reselect=0.05, frames_at_once=2)
    assert key(two) == key(one) and len(two) == len(frames)
    assert torch.get_num_threads() == before  # the threads' share is given back
    check_segments([{"head": "NKS"[r["head"]]} for r in two])


def test_frames_at_once_choose_heads_in_frame_order(ckpt):
    """Whatever order the frames' computations finish in, each frame's head is chosen after the
    previous frame's (the smoother sees the frames in order) and before its own depth pass."""
    import random
    import threading
    import time
    model = images.Predictor(ckpt, device="cpu")
    original, order, rng = model.run, [], random.Random(0)
    lock = threading.Lock()

    def jittery(img, choose=None, on_choice=None, **k):
        time.sleep(rng.random() * 0.02)  # frames of uneven cost: a later one could overtake

        def chooser(raw, dists):
            with lock:
                order.append(int(np.asarray(img)[0, 0, 0]))
            return choose(raw, dists) if choose is not None else raw
        return original(img, choose=chooser, on_choice=on_choice, **k)

    model.run = jittery
    frames = [(str(i), np.full((96, 128, 3), i, np.uint8)) for i in range(12)]
    recs = S.run_stream(model, iter(frames), smoother=S.HeadSmoother(), frames_at_once=3, threaded=False)
    assert order == list(range(12)) and [r["frame"] for r in recs] == list(range(12))


def test_frames_at_once_resolution_and_errors(ckpt, monkeypatch):
    import torch
    model = images.Predictor(ckpt, device="cpu")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert S.resolve_frames_at_once(model) == S.FRAMES_AT_ONCE == 2
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert S.resolve_frames_at_once(model) == 1 and S.resolve_frames_at_once(model, 3) == 3
    monkeypatch.setattr(model.predictor, "backend", "openvino")
    assert S.resolve_frames_at_once(model) == 1
    with pytest.raises(S.InputError, match="only with the PyTorch backend"):
        S.resolve_frames_at_once(model, 2)
    with pytest.raises(S.InputError, match="at least 1"):
        S.StreamOptions(frames_at_once=0)


def test_a_frame_that_fails_with_frames_at_once_keeps_the_frames_before(ckpt, tmp_path):
    """A frame whose computation raises stops the stream; the records are exactly the frames before it."""
    model = images.Predictor(ckpt, device="cpu")
    original = model.run

    def failing(img, **k):
        if int(np.asarray(img)[0, 0, 0]) == 5:
            raise ValueError("frame 5 is broken")
        return original(img, **k)

    model.run = failing
    frames = [(str(i), np.full((96, 128, 3), i, np.uint8)) for i in range(9)]
    records = []
    with pytest.raises(ValueError, match="frame 5"):
        S.run_stream(model, iter(frames), smoother=S.HeadSmoother(), frames_at_once=2, records=records)
    assert [r["frame"] for r in records] == [0, 1, 2, 3, 4]


def test_ctrl_c_with_frames_at_once_keeps_every_frame_computed(ckpt):
    """Ctrl-C in the caller's thread while a frame is in flight: the frames computed are recorded, in
    order and without a gap, and the interrupt goes on."""
    import torch
    model = images.Predictor(ckpt, device="cpu")
    frames = [(str(i), np.full((96, 128, 3), 10 * i, np.uint8)) for i in range(10)]
    records, seen = [], []

    def on_frame(rec):
        seen.append(rec["frame"])
        if len(seen) == 3:
            raise KeyboardInterrupt
    before = torch.get_num_threads()
    with pytest.raises(KeyboardInterrupt):
        S.run_stream(model, iter(frames), smoother=S.HeadSmoother(), frames_at_once=2, records=records,
                     on_frame=on_frame, threaded=False)
    done = [r["frame"] for r in records]
    assert done == list(range(len(done))) and 3 <= len(done) <= 4  # frame 3 was in flight
    assert torch.get_num_threads() == before
