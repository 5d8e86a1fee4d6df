"""The frame rule (inference/frames.py ``FRAME_RULES``): one pass over a whole frame with the fusion's
channel attention pooled over windows of the head's training extent (models.modules.Windows), or
the old tiles; a bottom-anchored head's rows from where its training crops lay."""
import numpy as np
import pytest
import torch
from PIL import Image

from inference import frames as FR
from inference.predictor import DepthPredictor
from models.modules import Windows
from helpers import make_checkpoint

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("rule")
    make_checkpoint(d / "NK.pth.tar", "NK", scale=0.25)
    return d / "NK.pth.tar"


def k_camera(p):
    fx = p.frame_pipeline().cameras[1].fx  # the K head's focal length: the frame is not resampled
    return FR.CameraHint(intrinsics=(fx, fx, 40.0, 30.0))  # a principal point inside every frame below


def frame(h, w, seed=0):
    return Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8))


def test_a_frame_of_the_training_size_is_the_same_one_pass_under_both_rules(ckpt):
    p = DepthPredictor.from_checkpoint(ckpt, fast=False)
    assert tuple(p.meta["input_sizes"][1]) == (80, 120)
    img, cam = frame(80, 120), k_camera(p)
    w = p.predict_image(img, domain=1, camera=cam, rule="windowed")
    t = p.predict_image(img, domain=1, camera=cam, rule="tiled")
    assert w["tiles"] == t["tiles"] == 1
    np.testing.assert_array_equal(w["depth"], t["depth"])
    np.testing.assert_array_equal(w["uncertainty"], t["uncertainty"])
    # and that pass is the network's own forward (global pooling)
    x = FR.to_tensor(img)
    with torch.no_grad():
        ref, _ = p.net(x, domain=1)
    np.testing.assert_allclose(w["depth"], FR.upsample_to(ref, (80, 120))[0, 0].numpy(), rtol=1e-5, atol=1e-6)


def test_one_window_is_global_pooling_and_windows_pool_where_they_lie():
    torch.manual_seed(0)
    from models.modules import channel_attention
    att = channel_attention(32).eval()
    block = torch.randn(2, 32, 10, 30)
    with torch.no_grad():
        # a window as large as the input: the trained network's gate
        g = Windows((40, 120)).gate(att, block, (40, 120))
        torch.testing.assert_close(g, att(block).expand_as(g))
        # three windows along the width: every column that only one window covers takes that
        # window's own gate (the mean over its cells)
        g = Windows((40, 40)).gate(att, block, (40, 120))
        assert FR.tile_starts(120, 40) == [0, 27, 53, 80]
        torch.testing.assert_close(g[..., 0], att(block[..., :, 0:10])[..., 0].expand_as(g[..., 0]))
        torch.testing.assert_close(g[..., -1], att(block[..., :, 20:30])[..., 0].expand_as(g[..., 0]))
        # bottom-anchored: every row takes the gate of the bottom window (its last 5 of 10 rows)
        g = Windows((20, 120), anchor="bottom").gate(att, block, (40, 120))
        want = att(block[:, :, 5:, :])
        torch.testing.assert_close(g[..., 0, :], want[:, :, 0, 0, None].expand_as(g[..., 0, :]))
        torch.testing.assert_close(g[..., 9, :], g[..., 0, :])


def test_the_rule_switches_one_pass_against_tiles(ckpt, monkeypatch):
    p = DepthPredictor.from_checkpoint(ckpt, fast=False)
    seen = []
    real = p.trunk_features
    monkeypatch.setattr(p, "trunk_features",
                        lambda x, windows=None: seen.append((tuple(x.shape), windows)) or real(x, windows=windows))
    img, cam = frame(88, 303), k_camera(p)
    w = p.predict_image(img, domain=1, camera=cam, rule="windowed")
    assert w["tiles"] == 1
    (shape, windows), = seen
    assert shape == (1, 3, 88, 303) and windows.size == (80, 120) and windows.anchor == "bottom"
    seen.clear()
    t = p.predict_image(img, domain=1, camera=cam)  # the default rule
    assert FR.DEFAULT_FRAME_RULE == "tiled"
    assert seen == [((8, 3, 80, 120), None)] and t["tiles"] == 8
    # the two rules give close, not equal, depth (tile borders and blending differ)
    assert np.median(np.abs(w["depth"] - t["depth"]) / t["depth"]) < 0.2
    with pytest.raises(ValueError, match="frame rule"):
        FR.FramePipeline(p, [None, None], rule="one")


def test_a_constant_scene_gives_the_same_depth_under_both_rules(ckpt):
    """Away from the frame's borders every window pools the same features, so one windowed pass and
    the tiles agree there."""
    p = DepthPredictor.from_checkpoint(ckpt, fast=False)
    img, cam = Image.new("RGB", (303, 88), (90, 120, 150)), k_camera(p)
    w = p.predict_image(img, domain=1, camera=cam, rule="windowed")["depth"]
    t = p.predict_image(img, domain=1, camera=cam, rule="tiled")["depth"]
    inner = (slice(20, 68), slice(40, 263))
    np.testing.assert_allclose(w[inner], t[inner], rtol=0.02)


def test_the_windowed_rule_runs_on_the_fast_path(ckpt):
    fast = DepthPredictor.from_checkpoint(ckpt)
    plain = DepthPredictor.from_checkpoint(ckpt, fast=False)
    img, cam = frame(88, 303, seed=1), k_camera(plain)
    a = fast.predict_image(img, domain=1, camera=cam, rule="windowed")["depth"]
    b = plain.predict_image(img, domain=1, camera=cam, rule="windowed")["depth"]
    assert np.median(np.abs(a - b) / b) < 0.02  # bf16 or float32 fast path against float32


def test_bottom_anchored_tiles_take_the_rows_their_crops_covered_from_the_bottom_tile(ckpt):
    """Issue 36 item 9: the K head's crops kept the bottom of the frame, so the rows the bottom
    tile covers come from it alone; a centred head keeps the tent blend."""
    p = DepthPredictor.from_checkpoint(ckpt, fast=False)
    assert FR.head_anchors("NK") == ["center", "bottom"]
    img, cam = frame(100, 120, seed=2), k_camera(p)   # 100 rows: tiles at rows 0 and 20
    whole = p.predict_image(img, domain=1, camera=cam, rule="tiled")["depth"]
    bottom = p.predict_image(img.crop((0, 20, 120, 100)), domain=1, camera=cam, rule="tiled")["depth"]
    np.testing.assert_allclose(whole[20:], bottom, rtol=1e-5)
    top = p.predict_image(img.crop((0, 0, 120, 80)), domain=1, camera=cam, rule="tiled")["depth"]
    np.testing.assert_allclose(whole[:20], top[:20], rtol=1e-5)
    assert np.abs(whole[20:80] - top[20:80]).max() > 0  # the overlap is not the top tile's
    # the rule before (tiled-centred) blends the overlap
    before = p.predict_image(img, domain=1, camera=cam, rule="tiled-centred")["depth"]
    (_, c0), (_, c1) = FR.tile_weights(100, 80)
    c0, c1 = c0.numpy()[20:, None], c1.numpy()[:60, None]
    np.testing.assert_allclose(before[20:80], (c0 * top[20:80] + c1 * bottom[:60]) / (c0 + c1), rtol=1e-5)
    np.testing.assert_allclose(before[80:], bottom[60:], rtol=1e-5)  # rows only the bottom tile covers
    # the weights: centred tiles blend; bottom-anchored ones hand the overlap to the bottom tile
    (s0, w0), (s1, w1) = FR.tile_weights(100, 80, "bottom")
    assert (s0, s1) == (0, 20) and w0[20:].sum() == 0 and bool((w1 == 1).all())
    (_, c0), (_, c1) = FR.tile_weights(100, 80)
    assert c0[30] > 0 and c1[10] > 0
