"""Tests of the network, encoders and checkpoint formats (models/): crafted metadata refused on load,
no unrestricted unpickling anywhere in the project."""
import argparse
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from models import (CheckpointError, LifelongDepthNet, build_encoder, load_checkpoint,
                    load_imagenet_weights, read_checkpoint, save_checkpoint)
from models.checkpoint import order_names
from helpers import ROOT, make_checkpoint

KEY_FILE = Path(__file__).with_name("data") / "upstream_checkpoint_keys.txt"
ONE_HEAD_PARAMS = 22_023_106  # authors' figure, resnet34 with one head
HEAD_PARAMS = 208_258         # authors' figure, each extra head


def randomize(net, seed=0):
    """Random weights *and* BN statistics, so a load that skips buffers is noticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if t.is_floating_point():
                r = torch.rand(t.shape, generator=g)
                t.copy_(0.5 + r if name.endswith("running_var") else 0.1 * (r - 0.5))
    return net.eval()


def make_net(encoder="resnet18", heads=1, seed=0):
    torch.manual_seed(seed)
    return randomize(LifelongDepthNet(encoder, num_domains=heads), seed)


def outputs(net, x):
    with torch.no_grad():
        return net(x)


def assert_same_outputs(a, b):
    assert len(a) == len(b)
    for (da, ua), (db, ub) in zip(a, b):
        torch.testing.assert_close(da, db, rtol=0, atol=0)
        torch.testing.assert_close(ua, ub, rtol=0, atol=0)


def expected_out(h, w):
    """Half resolution as the network computes it: 2 x block-1 size (stride-2 conv, stride-2 pool)."""
    return 2 * math.ceil(math.ceil(h / 2) / 2), 2 * math.ceil(math.ceil(w / 2) / 2)


@pytest.fixture(scope="module")
def net34():
    return make_net("resnet34", heads=3)


@pytest.fixture(scope="module")
def x():
    return torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))


# ----- shapes, sizes, keys -----------------------------------------------------------------
@pytest.mark.parametrize("size", [(64, 96), (114, 152), (70, 90), (97, 131)])
def test_output_shapes(size):
    net = make_net("resnet18", heads=2)
    h, w = size
    xx = torch.randn(2, 3, h, w)
    with torch.no_grad():
        b1 = net.E(xx)[0]
        feats = net.features(xx)
        outs = net(xx)
    oh, ow = expected_out(h, w)
    assert (2 * b1.shape[-2], 2 * b1.shape[-1]) == (oh, ow)
    assert feats.shape == (2, 64, oh, ow)
    assert len(outs) == 2
    for depth, unc in outs:
        assert depth.shape == unc.shape == (2, 1, oh, ow)


def test_full_size_resnet34(net34):
    outs = outputs(net34, torch.randn(1, 3, 228, 304))
    assert [tuple(t.shape) for t in outs[0]] == [(1, 1, 114, 152)] * 2
    blocks = net34.E(torch.randn(1, 3, 228, 304))
    assert [b.shape[1] for b in blocks] == [64, 128, 256, 512]
    assert [b.shape[-1] for b in blocks] == [76, 38, 19, 10]


def test_encoder_block_channels():
    assert build_encoder("resnet18").block_channels == (64, 128, 256, 512)
    assert build_encoder("resnet50").block_channels == (256, 512, 1024, 2048)
    with pytest.raises(ValueError, match="resnet101"):
        build_encoder("resnet101")


def test_parameter_counts():
    net = LifelongDepthNet("resnet34", num_domains=1)
    count = lambda: sum(p.numel() for p in net.parameters())  # noqa: E731
    assert count() == ONE_HEAD_PARAMS
    assert net.add_domain() == 1
    assert count() == ONE_HEAD_PARAMS + HEAD_PARAMS
    assert net.add_domain() == 2
    assert count() == ONE_HEAD_PARAMS + 2 * HEAD_PARAMS


def read_key_file():
    rows = []
    for line in KEY_FILE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, shape = line.split(" ", 1)
            rows.append((name, tuple(int(s) for s in shape.strip("() ").split(",") if s.strip())))
    return rows


def test_state_dict_matches_upstream_keys(net34):
    mine = [(k, tuple(v.shape)) for k, v in net34.state_dict().items()]
    assert mine == read_key_file()


def test_meta_is_not_in_state_dict():
    net = LifelongDepthNet("resnet18")
    assert net.meta == {} and net.encoder_name == "resnet18"
    net.meta["domains"] = ["nyu"]
    assert not any("meta" in k for k in net.state_dict())


# ----- forward semantics ---------------------------------------------------------------------
def test_single_domain_equals_all(net34, x):
    all_outs = outputs(net34, x)
    for i in range(3):
        depth, unc = forward_one(net34, x, i)
        assert torch.equal(depth, all_outs[i][0]) and torch.equal(unc, all_outs[i][1])


def forward_one(net, x, i, **kw):
    with torch.no_grad():
        return net(x, domain=i, **kw)


def test_without_uncertainty(net34, x):
    depth, _ = forward_one(net34, x, 1)
    depth2, unc2 = forward_one(net34, x, 1, with_uncertainty=False)
    assert unc2 is None and torch.equal(depth, depth2)
    with torch.no_grad():
        assert all(u is None for _, u in net34(x, with_uncertainty=False))


def test_single_domain_computes_only_that_head(x):
    net = make_net("resnet18", heads=3)
    called = []
    for i, head in enumerate(net.heads):
        head.register_forward_hook(lambda *a, i=i: called.append(i))
    outputs(net, x)
    assert called == [0, 1, 2]
    called.clear()
    forward_one(net, x, 2)
    assert called == [2]


def test_head_forward_on_features(x):
    net = make_net("resnet18", heads=2)
    with torch.no_grad():
        feats = net.features(x)
        depth, unc = net.head_forward(feats, 1, with_uncertainty=False)
    assert unc is None and torch.equal(depth, forward_one(net, x, 1)[0])


def test_domain_index_out_of_range(x):
    net = make_net("resnet18", heads=2)
    for bad in (2, 5, -1):
        with pytest.raises(IndexError, match="2 head"):
            net(x, domain=bad)
    with pytest.raises(IndexError):
        net.head_forward(net.features(x), 2)
    with pytest.raises(TypeError):
        net(x, domain="nyu")


def test_add_domain():
    net = make_net("resnet18", heads=2)
    before = set(net.state_dict())
    assert net.add_domain() == 2 and net.num_domains == 3 and len(net.heads) == 3
    new = set(net.state_dict()) - before
    assert new and all(k.startswith("task2.") for k in new)
    assert {k[len("task2."):] for k in new} == {k[len("task0."):] for k in before if k.startswith("task0.")}
    assert not net.task2.training  # follows the net's eval mode
    net.double()
    net.add_domain()
    assert net.task3.depth.conv0.weight.dtype == torch.float64


def test_freeze_trunk():
    net = LifelongDepthNet("resnet18", num_domains=2).freeze_trunk()
    assert not any(p.requires_grad for p in net.E.parameters())
    assert not any(p.requires_grad for p in net.MFF.parameters())
    assert all(p.requires_grad for h in net.heads for p in h.parameters())
    net.unfreeze_trunk()
    assert all(p.requires_grad for p in net.parameters())


# ----- checkpoints -------------------------------------------------------------------------
@pytest.mark.parametrize("encoder,heads,prefix", [
    ("resnet18", 2, True), ("resnet34", 1, False), ("resnet34", 2, False), ("resnet34", 3, False),
    ("resnet34", 3, True), ("resnet50", 1, True)])  # the released files: resnet34 with 1, 2, 3 heads
def test_authors_file_loads(tmp_path, x, encoder, heads, prefix):
    net = make_net(encoder, heads)
    sd = {("module." if prefix else "") + k: v for k, v in net.state_dict().items()}
    path = tmp_path / "NKS.pth.tar"
    torch.save({"state_dict": sd}, path)
    loaded = load_checkpoint(path)
    assert loaded.encoder_name == encoder and loaded.num_domains == heads and not loaded.training
    assert loaded.meta["format"] == "authors"
    assert loaded.meta["domains"] == [f"domain{i}" for i in range(heads)]
    assert_same_outputs(outputs(net, x), outputs(loaded, x))
    order = "NKS"[:heads]
    named = load_checkpoint(path, order=order)
    assert named.meta["domains"] == ["nyu", "kitti", "scannet"][:heads]
    assert named.meta["letters"] == order


def test_bare_state_dict_loads(tmp_path, x):
    net = make_net("resnet18", 2)
    torch.save(net.state_dict(), tmp_path / "bare.pth")
    assert_same_outputs(outputs(net, x), outputs(load_checkpoint(tmp_path / "bare.pth"), x))


def test_project_round_trip(tmp_path, x):
    net = make_net("resnet18", 2)
    protos = {"pooled": torch.randn(2, 512), "map": torch.randn(2, 64, 4, 6)}
    path = tmp_path / "new" / "dir" / "NK.pth"
    save_checkpoint(path, net, domains=["nyu", "kitti"], letters="NK",
                    depth_ranges=[[1e-3, 10.0], [1e-3, 80.0]], input_sizes=[[228, 304], [320, 480]],
                    strategy="ours", options={"lr": 1e-4}, prototypes=protos)
    assert os.listdir(path.parent) == ["NK.pth"]  # no temp file left behind
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "lifelong-monodepth" and raw["version"] == 1
    assert raw["encoder"] == "resnet18"
    loaded = load_checkpoint(path)
    assert_same_outputs(outputs(net, x), outputs(loaded, x))
    meta = loaded.meta
    assert meta["format"] == "lifelong-monodepth" and meta["domains"] == ["nyu", "kitti"]
    assert meta["letters"] == "NK" and meta["strategy"] == "ours" and meta["options"] == {"lr": 1e-4}
    assert meta["depth_ranges"] == [[1e-3, 10.0], [1e-3, 80.0]]
    assert torch.equal(meta["prototypes"]["map"], protos["map"])
    sd, meta2 = read_checkpoint(path)
    assert set(sd) == set(net.state_dict()) and meta2["encoder"] == "resnet18"


def test_save_uses_net_meta_and_checks_domain_count(tmp_path):
    net = make_net("resnet18", 1)
    net.meta = {"domains": ["nyu"], "letters": "N"}
    save_checkpoint(tmp_path / "N.pth", net)
    assert load_checkpoint(tmp_path / "N.pth").meta["domains"] == ["nyu"]
    net.add_domain()
    with pytest.raises(ValueError, match="2 heads"):
        save_checkpoint(tmp_path / "NK.pth", net)
    save_checkpoint(tmp_path / "NK.pth", net, domains=["nyu", "kitti"])  # stale letters replaced
    assert read_checkpoint(tmp_path / "NK.pth")[1]["letters"] == "NK"


def test_save_makes_options_loadable(tmp_path):
    net = make_net("resnet18", 1)
    opts = argparse.Namespace(data_root=Path("datasets/x"), lr=np.float64(1e-4), size=(228, 304))
    save_checkpoint(tmp_path / "c.pth", net, options=opts, depth_ranges=np.array([[0.001, 10.0]]))
    _, meta = read_checkpoint(tmp_path / "c.pth")
    assert meta["options"] == {"data_root": "datasets/x", "lr": 1e-4, "size": (228, 304)}
    assert meta["depth_ranges"] == [[0.001, 10.0]]
    # a settings dataclass and a types.SimpleNamespace store the same plain dict
    import dataclasses
    from types import SimpleNamespace
    Opts = dataclasses.make_dataclass("Opts", ["data_root", "lr", "size"])
    for k, other in enumerate((Opts(Path("datasets/x"), np.float64(1e-4), (228, 304)), SimpleNamespace(**vars(opts)))):
        save_checkpoint(tmp_path / f"d{k}.pth", net, options=other)
        assert read_checkpoint(tmp_path / f"d{k}.pth")[1]["options"] == meta["options"]


def test_interrupted_save_keeps_old_file(tmp_path, monkeypatch):
    net = make_net("resnet18", 1)
    path = tmp_path / "ckpt.pth"
    save_checkpoint(path, net, domains=["nyu"])
    before = path.read_bytes()

    def broken_save(obj, f, *a, **k):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, net, domains=["nyu"])
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["ckpt.pth"]


def test_imagenet_weights(tmp_path):
    torch.manual_seed(3)
    src = build_encoder("resnet18")
    randomize(src, 3)
    sd = dict(src.state_dict(), **{"fc.weight": torch.randn(1000, 512), "fc.bias": torch.zeros(1000)})
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(sd, path)
    enc = build_encoder("resnet18", pretrained=path)
    for k, v in src.state_dict().items():
        assert torch.equal(enc.state_dict()[k], v), k
    # Old torchvision files lack num_batches_tracked.
    old = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    torch.save(old, tmp_path / "old.pth")
    load_imagenet_weights(build_encoder("resnet18"), tmp_path / "old.pth")
    # Same weights into the wrong depth: clear error naming the file.
    with pytest.raises(ValueError, match="resnet18-f37072fd.pth") as err:
        load_imagenet_weights(build_encoder("resnet34"), path)
    assert "missing" in str(err.value)
    net = LifelongDepthNet("resnet18", pretrained=path)
    assert torch.equal(net.E.conv1.weight, src.conv1.weight)
    with pytest.raises(FileNotFoundError, match="no_such_weights.pth"):
        LifelongDepthNet("resnet18", pretrained=tmp_path / "no_such_weights.pth")


def test_error_unknown_stored_encoder(tmp_path, sd18):
    path = tmp_path / "odd_encoder.pth.tar"
    torch.save({"state_dict": sd18, "format": "lifelong-monodepth", "encoder": "vgg16"}, path)
    check_error(path, "unknown encoder 'vgg16'")


# ----- checkpoint errors (each message names the file) ---------------------------------------
@pytest.fixture(scope="module")
def sd18():
    return make_net("resnet18", 2).state_dict()


def check_error(path, match, **kw):
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, **kw)
    msg = str(err.value)
    assert os.path.basename(path) in msg, msg
    assert match in msg, msg
    return msg


def test_error_missing_file(tmp_path):
    check_error(tmp_path / "nowhere.pth", "no such file")


def test_error_not_a_torch_file(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"<html>this is a download error page, not a checkpoint</html>" * 4)
    check_error(path, "not a readable PyTorch file")


def test_error_no_state_dict(tmp_path):
    path = tmp_path / "nosd.pth"
    torch.save({"model": 1, "epoch": 3}, path)
    check_error(path, "no 'state_dict'")
    with pytest.raises(CheckpointError, match="nosd.pth"):
        read_checkpoint(path)


def test_error_missing_keys(tmp_path, sd18):
    path = tmp_path / "missing.pth"
    torch.save({"state_dict": {k: v for k, v in sd18.items() if not k.startswith("MFF.up2.")}}, path)
    msg = check_error(path, "6 missing key(s)")
    assert "MFF.up2.bn1.weight" in msg


def test_error_unexpected_keys(tmp_path, sd18):
    path = tmp_path / "unexpected.pth"
    torch.save({"state_dict": dict(sd18, **{"decoder.extra.weight": torch.zeros(3)})}, path)
    check_error(path, "decoder.extra.weight")


def test_error_shape_mismatch(tmp_path, sd18):
    path = tmp_path / "shape.pth"
    torch.save({"state_dict": dict(sd18, **{"MFF.conv.weight": torch.zeros(32, 64, 5, 5)})}, path)
    msg = check_error(path, "1 shape mismatch")
    assert "MFF.conv.weight (32, 64, 5, 5) vs (64, 64, 5, 5)" in msg


def test_error_non_contiguous_heads(tmp_path, sd18):
    path = tmp_path / "gap.pth"
    sd = {k.replace("task1.", "task2.", 1): v for k, v in sd18.items()}
    torch.save({"state_dict": sd}, path)
    check_error(path, "contiguous")


def test_error_order_length(tmp_path, sd18):
    path = tmp_path / "NKS.pth.tar"
    torch.save({"state_dict": sd18}, path)
    check_error(path, "2 head(s)", order="NKS")


def test_parse_order():
    assert order_names("NKS") == (["nyu", "kitti", "scannet"], "NKS")
    assert order_names("nk") == (["nyu", "kitti"], "NK")
    assert order_names(["nyu", "X"]) == (["nyu", "x"], "NX")
    assert order_names("nyu,mydata") == (["nyu", "mydata"], None)
    assert order_names("kitti") == (["kitti"], "K")


# ---- no code from a file -------------------------------------------------------------------------
def test_no_unrestricted_unpickling_in_the_project():
    offenders = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in ("tests", "shared", "runs", "datasets", ".git"):
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if re.search(r"weights_only\s*=\s*False|allow_pickle\s*=\s*True|\bpickle\.loads?\(", line):
                offenders.append(f"{rel}:{n}")
    assert not offenders, offenders


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """One NYU head (its pooled prototype random: one head is always the nearest)."""
    path = tmp_path_factory.mktemp("ckpt") / "N.pth.tar"
    make_checkpoint(path, "N", scale=0.25, prototypes={"pooled": torch.randn(1, 128)})
    return path


# ---- checkpoint metadata is checked -------------------------------------------------------
def crafted(tmp_path, ckpt, name, edit):
    obj = torch.load(ckpt, weights_only=True)
    edit(obj)
    path = tmp_path / name
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("edit,word", [
    (lambda o: o["state_dict"].update({"module.E.conv1.weight": o["state_dict"]["E.conv1.weight"] * 0}),
     "module."),
    (lambda o: o.update(input_sizes=[[16, 24]]), "input_sizes"),
    (lambda o: o.update(depth_ranges=[[10.0, 1.0]]), "depth_ranges"),
    (lambda o: o.update(depth_ranges=[[0.001, 10.0], [0.001, 80.0]]), "depth_ranges"),
    (lambda o: o.update(prototypes={"pooled": torch.zeros(2, 64)}), "prototypes"),
])
def test_checkpoint_metadata_is_checked(ckpt, tmp_path, edit, word):
    path = crafted(tmp_path, ckpt, "bad.pth.tar", edit)
    with pytest.raises(CheckpointError, match=re.escape(word)):
        load_checkpoint(path)
