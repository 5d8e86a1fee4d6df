"""The checkpoint metadata has one typed owner (issue 41): models.checkpoint.CheckpointMeta reads,
validates and defaults the dict beside the state_dict once; every other module reads its fields."""
from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from base.domains import get_domain
from base.uncertainty import CALIBRATION_KEY
from helpers import make_checkpoint, make_net, save_authors_checkpoint, torch_threads
from inference.frames import head_cameras
from models import load_checkpoint, read_checkpoint, save_checkpoint
from models.checkpoint import (DEFAULT_INPUT_SIZE, STATE_HASH, CheckpointError, CheckpointMeta, checkpoint_letters,
                               checkpoint_meta, default_scale)

pytestmark = pytest.mark.usefixtures("single_thread")

ROOT = Path(__file__).resolve().parents[1]
TYPED = [k for k in CheckpointMeta.__dataclass_fields__ if k not in ("extra", "stored")]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cm")
    with torch_threads(1):
        net = make_checkpoint(root / "NK.pth.tar", letters="NK", prototypes={"pooled": torch.randn(2, 8)})
        save_authors_checkpoint(root / "NK_authors.pth.tar", net, module_prefix=True)
    return root


def stored_dict(path) -> dict:
    """The file's dict beside the state_dict, exactly as torch.load returns it."""
    obj = torch.load(path, weights_only=True)
    return {k: v for k, v in obj.items() if k != "state_dict"}


def same(a, b) -> bool:
    """Equality that compares tensors by value (nested dicts and lists)."""
    if torch.is_tensor(a) or torch.is_tensor(b):
        return torch.is_tensor(a) and torch.is_tensor(b) and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def test_the_fields_are_the_keys_the_code_writes():
    assert CALIBRATION_KEY in TYPED and STATE_HASH in TYPED


def test_an_authors_file_gets_the_documented_defaults(files):
    path = files / "NK_authors.pth.tar"
    _, meta = read_checkpoint(path)
    info = CheckpointMeta.from_dict(meta, path, heads=2)
    assert info.format == "authors" and info.authors
    assert info.version is None and info.encoder is None and info.strategy is None
    assert info.domains is None and info.letters is None and info.letter_list == []
    assert info.options == {} and info.scale == 1.0 and info.data_root is None
    assert info.prototypes is None and info.prototype_sets == {} and info.frame_statistics == {}
    assert info.uncertainty_calibration is None and info.calibration == {}
    assert info.shared_head is False and info.cameras is None and info.extra == {}
    assert info.example_size == DEFAULT_INPUT_SIZE
    assert info.depth_range(1, 2) == (0.0, math.inf)
    assert info.domain_names(2) == ["domain0", "domain1"]
    specs = [get_domain(c) for c in "NK"]  # nothing stored: the registry's, as predict.py used
    assert info.head_sizes("NK") == [tuple(s.input_size) for s in specs]
    assert info.head_ranges("NK") == [(s.min_depth, s.max_depth) for s in specs]
    assert info.to_dict() == {"format": "authors"}  # nothing invented on the way back


def test_a_loaded_authors_file_is_named_by_the_order_only(files):
    path = files / "NK_authors.pth.tar"
    with torch_threads(1):
        unnamed = load_checkpoint(path)
        named = load_checkpoint(path, order="NK")
    meta = checkpoint_meta(unnamed)
    assert meta.domains == ["domain0", "domain1"] and meta.letters is None and meta.path == str(path)
    with pytest.raises(CheckpointError, match="--order NK"):
        checkpoint_letters(meta, path)
    meta = checkpoint_meta(named)
    assert meta.domains == ["nyu", "kitti"] and meta.letters == "NK" and meta.encoder == "resnet18"
    assert checkpoint_letters(meta, path) == "NK" and meta.format == "authors"


def test_round_trip_equals_the_saved_dict(files):
    path = files / "NK.pth.tar"
    raw = stored_dict(path)
    info = CheckpointMeta.from_dict(raw, path, heads=2)
    assert same(info.to_dict(), raw)
    assert CheckpointMeta.from_dict(info.to_dict()).to_dict().keys() == raw.keys()
    assert info.letters == "NK" and info.format == "lifelong-monodepth" and info.scale == 0.25
    assert info.example_size == tuple(raw["input_sizes"][0])


def test_a_loaded_and_resaved_file_keeps_every_key(files, tmp_path):
    """Unknown keys pass through: the metadata of a newer file survives a load and a save."""
    src = files / "NK.pth.tar"
    obj = torch.load(src, weights_only=True)
    obj["from_a_newer_version"] = {"kept": [1, 2]}
    edited = tmp_path / "newer.pth.tar"
    torch.save(obj, edited)
    with torch_threads(1):
        net = load_checkpoint(edited)
    info = checkpoint_meta(net)
    assert info.extra == {"from_a_newer_version": {"kept": [1, 2]}}
    assert same(info.to_dict(), net.meta)  # the view gives back the loaded dict
    out = tmp_path / "resaved.pth.tar"
    save_checkpoint(out, net)
    assert same(stored_dict(out), stored_dict(edited))  # the same keys and values as the file it came from


@pytest.mark.parametrize("edit, message", [
    (lambda o: o["uncertainty_calibration"].update(scales=[1.0, math.nan]),
     r"the uncertainty calibration scales \[1\.0, nan\] are not positive numbers"),
    (lambda o: o.update(input_sizes=[[16, 64], [64, 64]]),
     r"'input_sizes'\[0\] is \[16, 64\]; expected \[H, W\] integers of at least 32 pixels"),
    (lambda o: o.update(depth_ranges=[[0.1, 10.0]]), r"'depth_ranges' holds 1 entries for 2 head\(s\)"),
])
def test_a_bad_value_raises_the_loaders_error(files, tmp_path, edit, message):
    obj = torch.load(files / "NK.pth.tar", weights_only=True)
    obj["uncertainty_calibration"] = {"scales": [1.0, 1.0]}
    edit(obj)
    path = tmp_path / "bad.pth.tar"
    torch.save(obj, path)
    meta = {k: v for k, v in obj.items() if k != "state_dict"}
    with pytest.raises(CheckpointError, match=message) as typed:
        CheckpointMeta.from_dict(meta, path, heads=2)
    with torch_threads(1), pytest.raises(CheckpointError, match=message) as loaded:
        load_checkpoint(path)
    assert str(typed.value) == str(loaded.value)  # one validator, one message


def test_the_training_scale_has_one_rule():
    """default_scale (evaluation, predict.py) and head_cameras (the frame pipeline) read one rule:
    before, a stored scale of 0 was 0.0 for the first and 1.0 for the second."""
    for options, scale in (({"scale": 0.5}, 0.5), ({"scale": 0}, 1.0), ({"scale": None}, 1.0),
                           ({"scale": "half"}, 1.0), ({}, 1.0), ("not a dict", 1.0)):
        meta = {"format": "lifelong-monodepth", "options": options}
        assert default_scale(meta) == scale == checkpoint_meta(meta).scale
    net = make_net(1, "resnet18", 0)
    half = head_cameras({"options": {"scale": 0.5}}, "N")[0]
    assert head_cameras({"options": {"scale": 0}}, "N")[0] == head_cameras({}, "N")[0] != half
    assert net.meta == {}  # a fresh network has no metadata: every field its default
    assert checkpoint_meta(net) == CheckpointMeta()


# ---- one owner: no module outside models/checkpoint.py reads a typed key by hand --------------
def _sources():
    skip = {"tests", "datasets", "runs", "docs", ".git"}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in skip or rel.as_posix() == "models/checkpoint.py":
            continue
        yield rel, path.read_text()


def _hand_reads(text: str) -> list[str]:
    keys = "|".join(re.escape(k) for k in TYPED)
    key = rf"""(?:(["'])(?:{keys})\1|CALIBRATION_KEY)"""
    found = []
    for pattern in (rf"\bmeta\s*\.\s*get\(\s*{key}", rf"\bmeta\s+or\s+\{{\}}\)\s*\.\s*get\(\s*{key}",
                    rf"\)\[1\]\s*\.\s*get\(\s*{key}", rf"\)\[1\]\[\s*{key}\s*\]"):
        found += [m.group(0) for m in re.finditer(pattern, text)]
    for m in re.finditer(rf"\bmeta\[\s*{key}\s*\]", text):
        rest = text[m.end():text.find("\n", m.end())]
        if not re.match(r"(\s*,\s*[\w.]*meta\[[^\]]+\])*\s*=(?!=)", rest):  # an assignment target writes
            found.append(m.group(0))
    return found


def test_the_grep_finds_hand_reads():
    assert _hand_reads('x = net.meta.get("letters") or order') == ['meta.get("letters"']
    assert _hand_reads("s = read_checkpoint(p)[1].get(CALIBRATION_KEY)") == [")[1].get(CALIBRATION_KEY"]
    assert _hand_reads("lo = meta['depth_ranges'][h]") == ["meta['depth_ranges']"]
    assert _hand_reads('meta["domains"], meta["letters"] = names, order') == []
    assert _hand_reads('data_meta.get("domains")') == []


# base/uncertainty.py owns the calibration record's format and sits below models/ (the layers):
# its helpers take the metadata dict and read that one key themselves.
ALLOWED = {"base/uncertainty.py": {"meta or {}).get(CALIBRATION_KEY"}}


def test_no_module_reads_checkpoint_metadata_by_hand():
    bad = {}
    for rel, text in _sources():
        reads = [r for r in _hand_reads(text) if r not in ALLOWED.get(rel.as_posix(), set())]
        if reads:
            bad[rel.as_posix()] = sorted(set(reads))
    assert not bad, ("read the checkpoint metadata through models.checkpoint.checkpoint_meta / "
                     f"CheckpointMeta (one default per key), not by hand: {bad}")


def test_an_authors_file_is_clamped_alike_on_every_path(files):
    """A file that stores no depth ranges (the authors'): predict.py's Predictor and the API's
    DepthPredictor (predict_image's intervals, write_outputs) clamp each head to its domain's
    registered range; before, the API's rule was 0..inf, so its depths went unclamped."""
    from inference.images import ImageOptions, Predictor
    from inference.predictor import RuntimeOptions
    path = files / "NK_authors.pth.tar"
    model = Predictor(path, ImageOptions(domain="N", quiet=True), runtime=RuntimeOptions(fast=False), order="NK")
    specs = [get_domain(c) for c in "NK"]
    assert [tuple(model.ranges[i]) for i in range(2)] == [(s.min_depth, s.max_depth) for s in specs]
    assert [model.predictor.depth_range(i) for i in range(2)] == [tuple(model.ranges[i]) for i in range(2)]
