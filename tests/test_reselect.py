"""Streams reselect the head only when the frame changed (inference.frames.SelectionGate,
predict.py's --reselect): the same heads as selection on every frame, on fewer selections."""
import numpy as np
import pytest
import torch

from inference import frames as FR
from inference import images
from inference import stream as S
from helpers import CONSTANT_COLORS, make_checkpoint, make_data_root

pytestmark = pytest.mark.usefixtures("single_thread")


def test_the_gate_reselects_when_the_frame_moves_and_at_the_latest_after_max_age():
    calls = []
    select = lambda x: calls.append(float(x.mean())) or {"raw_head": len(calls), "features": x}  # noqa: E731
    gate = FR.SelectionGate(threshold=0.05, max_age=3)
    still = torch.zeros(1, 3, 24, 32)
    ran = [gate(still + 0.01 * k, select)[1] for k in range(5)]  # drifts 0.01 per frame
    # frame 0 selects; the drift reaches 0.05 over the reference only at frame 5, but max_age=3
    # forces a selection on the 4th frame after it
    assert ran == [True, False, False, False, True]
    sel, again = gate(still + 1.0, select)  # a cut: the descriptor moves by ~1
    assert again and sel["raw_head"] == 3
    sel, again = gate(still + 1.0, select)
    assert not again and sel["raw_head"] == 3 and "features" not in sel  # features belong to the frame
    assert not ({"blocks", "input"} & set(sel))  # so do the encoder blocks and the resized input
    every = FR.SelectionGate(threshold=0.0)
    assert all(every(still, select)[1] for _ in range(3))
    with pytest.raises(ValueError):
        FR.SelectionGate(threshold=-1)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = make_data_root(tmp_path_factory.mktemp("data"), n_train=3, n_test=1, n_replay=3, style="constant")
    path = tmp_path_factory.mktemp("ckpt") / "NKS.pth.tar"
    make_checkpoint(path, "NKS", scale=0.25, prototypes="replay", data_root=root)
    return images.Predictor(path, device="cpu")


def frames(segments="NSN", length=5):
    rng = np.random.default_rng(0)
    return [(f"{i:03d}", np.clip(np.array(CONSTANT_COLORS[c]) + rng.integers(-3, 4, (96, 128, 3)), 0, 255)
             .astype(np.uint8)) for i, c in enumerate(c for c in segments for _ in range(length))]


def test_a_stream_with_reselection_chooses_the_heads_of_selection_on_every_frame(model):
    stream = frames()
    every = S.run_stream(model, iter(stream), smoother=S.HeadSmoother(), threaded=False, reselect=0.0)
    gated = S.run_stream(model, iter(stream), smoother=S.HeadSmoother(), threaded=False, reselect=0.05)
    heads, ref = [r["head"] for r in gated], [r["head"] for r in every]
    # the same switches; the reused distances weigh a change's first frame once more in the
    # smoother's window, so a switch may come one frame apart (a tie of 2 against 2 frames here)
    assert S.count_switches(heads) == S.count_switches(ref) == 2
    assert [t for t in range(len(heads)) if heads[t] != ref[t]] in ([], [6], [11], [6, 11])
    assert [model.letters[h] for h in heads][4::5] == list("NSN")
    assert all(r["selected"] for r in every)
    # the selection ran on the first frame of each segment (a cut) and not on the still frames
    assert [i for i, r in enumerate(gated) if r["selected"]] == [0, 5, 10]
    # the depth does not depend on whether the selection ran (only on the head)
    for a, b in zip(gated, every):
        if a["head"] == b["head"]:
            assert a["depth_max"] == pytest.approx(b["depth_max"], rel=1e-5)
    with pytest.raises(S.InputError, match="--reselect"):
        S.StreamOptions(reselect=-0.1)


def test_a_reused_selection_never_hands_its_frame_to_the_next_depth_pass(model):
    """The gate reuses the head, not the pixels: the second, different frame's depth is its own."""
    p = model.predictor
    pipe = p.frame_pipeline("resample", "fitted")
    gate = FR.SelectionGate(threshold=1e9)  # never reselect after the first frame
    rng = np.random.default_rng(1)
    a, b = (rng.integers(0, 256, (96, 128, 3)).astype(np.uint8) for _ in range(2))
    first = pipe.run(a, gate=gate)
    second = pipe.run(b, gate=gate)
    assert first["selected"] and not second["selected"] and second["head"] == first["head"]
    alone = pipe.run(b, head=first["head"])
    np.testing.assert_allclose(second["depth"], alone["depth"], rtol=1e-5, atol=1e-6)
