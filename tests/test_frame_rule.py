"""The frame rule (inference/frames.py ``FRAME_RULES``): one pass at the head's training geometry
(``fitted``, the default: a side a little longer cropped or resized to the training side, a long
width whole with windowed attention), one pass over a whole frame with the fusion's channel attention
pooled over windows of the head's training extent (models.modules.Windows), or the old tiles; a
bottom-anchored head's rows from where its training crops lay."""
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
    t = p.predict_image(img, domain=1, camera=cam, rule="tiled-anchored")
    f = p.predict_image(img, domain=1, camera=cam, rule="fitted")
    assert w["tiles"] == t["tiles"] == f["tiles"] == 1
    for other in (t, f):
        np.testing.assert_array_equal(w["depth"], other["depth"])
        np.testing.assert_array_equal(w["uncertainty"], other["uncertainty"])
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
    t = p.predict_image(img, domain=1, camera=cam, rule="tiled")
    assert seen == [((8, 3, 80, 120), None)] and t["tiles"] == 8
    # the two rules give close, not equal, depth (tile borders and blending differ)
    assert np.median(np.abs(w["depth"] - t["depth"]) / t["depth"]) < 0.2
    with pytest.raises(ValueError, match="frame rule"):
        FR.FramePipeline(p, [None, None], rule="one")


@pytest.mark.parametrize("size, rule, tiles, inner", [
    # away from the frame's borders every window pools the same features: one windowed pass and
    # the tiles agree there
    ((303, 88), "windowed", "tiled-anchored", (slice(20, 68), slice(40, 263))),
    # a crop changes no scale: the fitted pass and the tiles agree inside
    ((124, 84), "fitted", "tiled", (slice(20, 64), slice(30, 94))),
])
def test_a_constant_scene_gives_the_same_depth_in_one_pass_and_in_tiles(ckpt, size, rule, tiles, inner):
    p = DepthPredictor.from_checkpoint(ckpt, fast=False)
    img, cam = Image.new("RGB", size, (90, 120, 150)), k_camera(p)
    one = p.predict_image(img, domain=1, camera=cam, rule=rule)["depth"]
    tiled = p.predict_image(img, domain=1, camera=cam, rule=tiles)["depth"]
    np.testing.assert_allclose(one[inner], tiled[inner], rtol=0.02)


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
    whole = p.predict_image(img, domain=1, camera=cam, rule="tiled-anchored")["depth"]
    bottom = p.predict_image(img.crop((0, 20, 120, 100)), domain=1, camera=cam, rule="tiled-anchored")["depth"]
    np.testing.assert_allclose(whole[20:], bottom, rtol=1e-5)
    top = p.predict_image(img.crop((0, 0, 120, 80)), domain=1, camera=cam, rule="tiled-anchored")["depth"]
    np.testing.assert_allclose(whole[:20], top[:20], rtol=1e-5)
    assert np.abs(whole[20:80] - top[20:80]).max() > 0  # the overlap is not the top tile's
    # the default rule (tiled) blends the overlap, as before
    before = p.predict_image(img, domain=1, camera=cam, rule="tiled")["depth"]
    (_, c0), (_, c1) = FR.tile_weights(100, 80)
    c0, c1 = c0.numpy()[20:, None], c1.numpy()[:60, None]
    np.testing.assert_allclose(before[20:80], (c0 * top[20:80] + c1 * bottom[:60]) / (c0 + c1), rtol=1e-5)
    np.testing.assert_allclose(before[80:], bottom[60:], rtol=1e-5)  # rows only the bottom tile covers
    # the weights: centred tiles blend; bottom-anchored ones hand the overlap to the bottom tile
    (s0, w0), (s1, w1) = FR.tile_weights(100, 80, "bottom")
    assert (s0, s1) == (0, 20) and w0[20:].sum() == 0 and bool((w1 == 1).all())
    (_, c0), (_, c1) = FR.tile_weights(100, 80)
    assert c0[30] > 0 and c1[10] > 0


def test_fit_plan_brings_each_side_to_the_training_geometry():
    # N-like: 120x160 through a head trained on 114x152 crops: the centred crop, nothing resized
    plan = FR.fit_plan(120, 160, (114, 152))
    assert (plan.top, plan.left, plan.height, plan.width, plan.pass_h, plan.pass_w) == (3, 4, 114, 152, 114, 152)
    assert plan.depth_factor == 1.0 and not (plan.row_tiles or plan.identity)
    assert FR.fit_plan(117, 152, (114, 152)).top == 1  # an odd excess: the extra row below
    # K-like: 176 rows (10 % more than 160) resized to 160, the long width whole
    plan = FR.fit_plan(176, 608, (160, 240), "bottom", frame_h=176)
    assert (plan.top, plan.height, plan.pass_h, plan.width, plan.pass_w) == (0, 176, 160, 608, 608)
    assert not plan.row_tiles
    assert plan.depth_factor == pytest.approx((160 / 176) ** FR.FIT_DEPTH_POWER)
    # KITTI's raw height: the rows above the head's training frame dropped, then the same
    raw = FR.fit_plan(184, 608, (160, 240), "bottom", frame_h=176)
    assert (raw.top, raw.height, raw.pass_h, raw.depth_factor) == (8, 176, 160, plan.depth_factor)
    # a bottom-anchored head crops from the bottom, a centred one from both ends
    assert FR.fit_plan(168, 240, (160, 240), "bottom").top == 8
    assert FR.fit_plan(168, 240, (160, 240)).top == 4
    # much taller than its frame: nothing dropped, full-width passes of the training height
    tall = FR.fit_plan(400, 608, (160, 240), "bottom", frame_h=176)
    assert (tall.top, tall.height, tall.pass_h) == (0, 400, 400) and tall.row_tiles
    # no larger than the training input: as it is
    assert FR.fit_plan(100, 120, (114, 152)).identity and FR.fit_plan(114, 152, (114, 152)).identity


def fitted_pipeline(p):
    """The fitted rule with the K head's training frame at the network's scale (88x304: this
    fixture stores no cameras, so the registry's full-size one stands in), and a camera hint of its
    focal length (no resampling)."""
    cams = p.frame_pipeline().cameras
    k = cams[1].resized(304, 88)
    pipe = FR.FramePipeline(p, [cams[0], k], tiles=p.meta["input_sizes"], rule="fitted", anchors=["center", "bottom"])
    return pipe, FR.CameraHint(intrinsics=(k.fx, k.fx, 40.0, 30.0))


def test_the_fitted_pass_is_the_networks_forward_on_the_crop_or_the_resized_region(ckpt):
    p = DepthPredictor.from_checkpoint(ckpt, fast=False)
    pipe, cam = fitted_pipeline(p)
    head = torch.tensor([1])

    def forward(x):
        with torch.no_grad():
            return p.run_heads(p.trunk_features(x), head, True)

    # 84x124 (5 % and 3 % over 80x120): the bottom-anchored crop, rows 4-84, columns 2-122
    img = frame(84, 124, seed=3)
    r = pipe.run(img, head=1, camera=cam)
    x = FR.to_tensor(img)
    d, u = forward(x[..., 4:84, 2:122])
    want = FR.upsample_to(d, (80, 120))[0, 0].numpy()
    assert r["tiles"] == 1 and r["input_size"] == [84, 124]
    np.testing.assert_allclose(r["depth"][4:84, 2:122], want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(r["depth"][:4, 2:122], np.broadcast_to(want[0], (4, 120)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(r["depth"][4:84, 0], want[:, 0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(r["uncertainty"][4:84, 2:122], FR.upsample_to(u, (80, 120))[0, 0].numpy(),
                               rtol=1e-4, atol=1e-5)
    # 96x303: 8 rows above the 88-row training frame dropped, 88 rows resized to 80, the width
    # whole (the trained global pooling); the depth times the area ratio's power
    img = frame(96, 303, seed=4)
    r = pipe.run(img, head=1, camera=cam)
    region = FR.resized(FR.to_tensor(img)[..., 8:, :], 80, 303)
    d, _ = forward(region)
    want = FR.upsample_to(d, (88, 303))[0, 0].numpy() * (80 / 88) ** FR.FIT_DEPTH_POWER
    assert r["tiles"] == 1 and r["input_size"] == [96, 303]
    np.testing.assert_allclose(r["depth"][8:], want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(r["depth"][:8], np.broadcast_to(want[0], (8, 303)), rtol=1e-4, atol=1e-5)


def test_a_backend_without_windows_runs_the_same_fitted_pass(ckpt, monkeypatch):
    """The fitted pass needs no windowed attention, so ONNX Runtime and OpenVINO run it as it is."""
    p = DepthPredictor.from_checkpoint(ckpt, fast=False)
    pipe, cam = fitted_pipeline(p)
    img = frame(96, 303, seed=4)
    want = pipe.run(img, head=1, camera=cam)["depth"]
    monkeypatch.setattr(type(p), "supports_windows", property(lambda self: False))
    seen = []
    real = p.trunk_features
    monkeypatch.setattr(p, "trunk_features",
                        lambda x, windows=None: seen.append((tuple(x.shape), windows)) or real(x, windows=windows))
    r = pipe.run(img, head=1, camera=cam)
    assert seen == [((1, 3, 80, 303), None)] and r["tiles"] == 1
    np.testing.assert_array_equal(r["depth"], want)
    # rows much taller than the head's frame: full-width passes of the training height, blended
    tall = pipe.run(frame(200, 303, seed=5), head=1, camera=cam)
    assert tall["tiles"] == len(FR.tile_starts(200, 80)) == 3
    assert seen[-1] == ((3, 3, 80, 303), None)
