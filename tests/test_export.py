"""Tests of export.py: the TorchScript file matches the eager model (DepthPredictor, fp32)."""
import pytest
import torch

import export
from inference import DepthPredictor
from models import LifelongDepthNet, load_checkpoint, save_checkpoint
from prototypes import pooled_descriptor

HEADS = 3


def base_images(h=48, w=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randn(3, h, w, generator=g) * (0.5 + 0.5 * i) + 0.3 * i
                        for i in range(HEADS)])


def batch_for(order, h=48, w=64, seed=2):
    """Image k is a noisy copy of domain order[k]'s base image (so its nearest prototype)."""
    base = base_images(h, w)
    g = torch.Generator().manual_seed(seed)
    return torch.stack([base[d] + 0.05 * torch.randn(base.shape[1:], generator=g) for d in order])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    net = LifelongDepthNet("resnet18", num_domains=HEADS).eval()
    with torch.no_grad():
        for i, head in enumerate(net.heads):
            head.depth.conv2.weight.mul_(0.05)
            head.depth.conv2.bias.fill_(2.0 + i)
        feats = net.features(base_images())
    protos = {"pooled": pooled_descriptor(feats), "map": [f for f in feats]}
    path = tmp_path_factory.mktemp("export") / "NKS.pth.tar"
    save_checkpoint(path, net, prototypes=protos, domains=["nyu", "kitti", "scannet"], letters="NKS",
                    input_sizes=[[64, 96]] * HEADS)
    return path


def test_automatic_selection_matches_eager(checkpoint, tmp_path):
    out = tmp_path / "NKS.ts"
    assert export.main(["--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    module = torch.jit.load(str(out))  # plain torch: no project code needed to run it
    net = load_checkpoint(checkpoint)
    eager = DepthPredictor(net, net.meta["prototypes"], fast=False)
    order = [2, 0, 1, 0]
    x = batch_for(order)  # 48x64: not the traced 64x96, sizes are dynamic
    with torch.no_grad():
        result = module(x)
    ref = eager.predict(x)
    assert len(result) == 2
    depth, domain = result
    assert domain.dtype == torch.int64 and domain.tolist() == ref["domain"].tolist() == order
    assert depth.dtype == torch.float32 and depth.shape == ref["depth"].shape == (4, 1, 24, 32)
    torch.testing.assert_close(depth, ref["depth"], rtol=1e-4, atol=1e-5)
    # a batch that all goes to one head, and the traced size itself
    x = batch_for([1, 1], 64, 96)
    depth, domain = module(x)
    ref = eager.predict(x)
    assert domain.tolist() == ref["domain"].tolist()
    torch.testing.assert_close(depth, ref["depth"], rtol=1e-4, atol=1e-5)
    _, meta = export.load_exported(out)
    assert meta["domains"] == ["nyu", "kitti", "scannet"] and meta["selection"] == "pooled"
    assert meta["outputs"] == ["depth", "domain"] and meta["precision"] == "float32"


def test_fixed_domain_with_uncertainty(checkpoint, tmp_path):
    out = tmp_path / "NKS_K.ts"
    assert export.main(["--checkpoint", str(checkpoint), "--out", str(out), "--domain", "K",
                        "--uncertainty", "--no-check"]) == 0
    module, meta = export.load_exported(out)
    assert meta["domain"] == 1 and meta["outputs"] == ["depth", "domain", "uncertainty"]
    net = load_checkpoint(checkpoint)
    x = batch_for([0, 2, 1])
    with torch.no_grad():
        depth, domain, unc = module(x)
        ref_d, ref_u = net(x, domain=1)
    assert domain.tolist() == [1, 1, 1]
    torch.testing.assert_close(depth, ref_d, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(unc, ref_u, rtol=1e-4, atol=1e-5)


def test_map_selector_and_errors(checkpoint, tmp_path, capsys):
    net = load_checkpoint(checkpoint)
    out = tmp_path / "map.ts"
    export.export_model(net, out, net.meta["prototypes"], selector="map", example_size=(48, 64))
    module = torch.jit.load(str(out))
    x = batch_for([2, 1, 0])
    ref = DepthPredictor(net, net.meta["prototypes"], selector="map", fast=False).predict(x)
    depth, domain = module(x)
    assert domain.tolist() == ref["domain"].tolist() == [2, 1, 0]
    torch.testing.assert_close(depth, ref["depth"], rtol=1e-4, atol=1e-5)
    # no prototypes and no --domain: a clear error, nothing written
    with pytest.raises(ValueError, match="no domain prototypes"):
        export.export_model(net, tmp_path / "none.ts", None)
    assert not (tmp_path / "none.ts").exists()
    assert export.main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "x.ts"),
                        "--domain", "7"]) == 2
    assert "out of range" in capsys.readouterr().err
