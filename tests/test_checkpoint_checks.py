"""One validator of a checkpoint's metadata values, run on every load (models.checkpoint.check_values),
and a checksum of the weights stored at save and verified on load (issue 40 items 7-8); letters that
disagree with the domains."""
from __future__ import annotations

import math

import pytest
import torch

from helpers import make_checkpoint, make_net, torch_threads
from models import load_checkpoint
from models.checkpoint import STATE_HASH, CheckpointError, read_checkpoint, state_digest

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("cc") / "NK.pth.tar"
    with torch_threads(1):
        make_checkpoint(path, letters="NK", prototypes={"pooled": torch.randn(2, 8)})
    return path


def edited(ckpt, tmp_path, edit, name="edited.pth.tar"):
    obj = torch.load(ckpt, weights_only=True)
    edit(obj)
    out = tmp_path / name
    torch.save(obj, out)
    return out


def nan_prototypes(o):
    o["prototypes"]["pooled"][0, 0] = math.nan


def nan_scale(o):
    o["uncertainty_calibration"] = {"scales": [1.0, math.nan]}


def negative_scale(o):
    o["uncertainty_calibration"] = {"scales": [1.0, -2.0]}


def nan_threshold(o):
    o["prototypes"]["frames"] = {"thresholds": [1.0, math.nan], "area": 100.0}


def negative_threshold(o):
    o["prototypes"]["frames"] = {"thresholds": [1.0, -3.0], "area": 100.0}


def camera(**change):
    def edit(o):
        cam = {"fx": 100.0, "fy": 100.0, "cx": 10.0, "cy": 8.0, "width": 20, "height": 16}
        cam.update(change)
        o["cameras"] = [cam, dict(cam, fx=100.0, width=20)]
        for k in [k for k, v in change.items() if v is None]:
            del o["cameras"][0][k]
    return edit


def unknown_letter(o):
    o["letters"], o["domains"], o["domain_specs"] = "NQ", ["nyu", "qdomain"], [None, None]


@pytest.mark.parametrize("edit,expected", [
    (nan_prototypes, "NaN or infinite"), (nan_scale, "calibration scales"), (negative_scale, "calibration scales"),
    (nan_threshold, "thresholds"), (negative_threshold, "out-of-domain thresholds"), (camera(fx=0.0), "'cameras'[0]"), (camera(fx=math.nan), "'cameras'[0]"),
    (camera(width=None), "'cameras'[0]"), (unknown_letter, "'Q' names no domain")])
def test_bad_metadata_values_are_refused_on_load(ckpt, tmp_path, edit, expected):
    path = edited(ckpt, tmp_path, edit)
    with pytest.raises(CheckpointError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        load_checkpoint(path)


def test_the_weights_checksum_is_stored_and_a_flipped_bit_is_caught(ckpt, tmp_path):
    state, meta = read_checkpoint(ckpt)
    assert meta[STATE_HASH] == state_digest(state)

    def flip(o):
        w = o["state_dict"]["task1.depth.conv.weight"] if "task1.depth.conv.weight" in o["state_dict"] else \
            next(v for k, v in o["state_dict"].items() if v.is_floating_point() and v.numel() > 4)
        w.view(-1).view(torch.int32)[3] ^= 1 << 4  # one bit of one weight
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(edited(ckpt, tmp_path, flip))


def test_an_old_file_without_the_checksum_loads_as_before(ckpt, tmp_path):
    path = edited(ckpt, tmp_path, lambda o: o.pop(STATE_HASH))
    assert load_checkpoint(path).num_domains == 2


def test_checkpoint_letters_must_match_its_domains(tmp_path):
    net = make_net(2)
    torch.save({"state_dict": net.state_dict(), "format": "lifelong-monodepth", "version": 1,
                "domains": ["nyu", "kitti"], "letters": "KN", "encoder": "resnet18"}, tmp_path / "x.pth.tar")
    with pytest.raises(CheckpointError, match="disagree"):
        load_checkpoint(tmp_path / "x.pth.tar")
