"""Tests of the inference speed-ups (models/fast.py) and of DepthPredictor's fast path (inference/predictor.py)."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from inference.predictor import DepthPredictor
from models import LifelongDepthNet, save_checkpoint
from models.fast import (CastInputConv2d, FusedConv2d, TapSumConv2d, channels_last_batch,
                         count_batchnorms, count_fused, fuse_conv_bn, inference_copy, lowp_supported,
                         prepare_input, resolve_precision, to_channels_last)
from inference.prototypes import pooled_descriptor, pooled_descriptor_nhwc

HEADS = 3


def randomize_bn(net, seed=0):
    """Non-trivial BN statistics and affine parameters, so folding is really exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))
        for i, head in enumerate(net.heads):  # positive, distinct depths (a few metres)
            head.depth.conv2.weight.mul_(0.05)
            head.depth.conv2.bias.fill_(2.0 + i)
    return net.eval()


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return randomize_bn(LifelongDepthNet("resnet18", num_domains=HEADS))


def distinct_images(n, h=48, w=64, seed=1):
    """Images with clearly different statistics (so each has its own pooled descriptor)."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randn(3, h, w, generator=g) * (0.5 + 0.5 * i) + 0.3 * i for i in range(n)])


def domain_batch(net, order, seed=2):
    """(images, prototypes): image k is a noisy copy of domain order[k]'s base image, and each
    domain's prototype is its base image's descriptor, so image k's nearest prototype is order[k]."""
    base = distinct_images(HEADS)
    g = torch.Generator().manual_seed(seed)
    x = torch.stack([base[d] + 0.05 * torch.randn(base.shape[1:], generator=g) for d in order])
    with torch.no_grad():
        protos = {"pooled": pooled_descriptor(net.features(base))}
    return x, protos


def assert_rel_close(a, b, rel):
    err = (a.float() - b.float()).abs().max().item()
    scale = b.float().abs().max().item()
    assert err <= rel * scale, f"max error {err:.3g} > {rel} x {scale:.3g}"


# ------------------------------------------------------------------------------------------ fast.py
def test_fused_copy_equals_unfused_fp32(net):
    x = distinct_images(2)
    fused = fuse_conv_bn(net)
    assert count_batchnorms(fused) == 0 and count_batchnorms(net) > 0
    # same attribute structure: the methods of LifelongDepthNet work on the copy
    assert isinstance(fused.E.layer1[0].bn1, nn.Identity) and fused.E.layer1[0].conv1.bias is not None
    assert isinstance(fused.E.layer2[0].downsample[1], nn.Identity)
    assert isinstance(fused.task1.depth.bn0, nn.Identity) and isinstance(fused.MFF.up3.bn1, nn.Identity)
    with torch.no_grad():
        ref, out = net(x), fused(x)
        torch.testing.assert_close(fused.features(x), net.features(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(fused.head_forward(net.features(x), 2)[0], ref[2][0], rtol=1e-4, atol=1e-5)
    for (d0, u0), (d1, u1) in zip(ref, out):
        torch.testing.assert_close(d1, d0, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(u1, u0, rtol=1e-4, atol=1e-5)


def test_inference_copy_leaves_the_network_alone(net):
    trained = copy.deepcopy(net).train()
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    fast = inference_copy(trained, dtype=torch.bfloat16)
    assert trained.training and count_batchnorms(trained) == count_batchnorms(net)
    assert all(p.requires_grad for p in trained.parameters())
    assert all(p.dtype == torch.float32 and p.is_contiguous() for p in trained.parameters())
    for k, v in trained.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not fast.training and not any(p.requires_grad for p in fast.parameters())
    # bf16 everywhere except the heads' float32 output convolutions
    assert fast.E.conv1.weight.dtype == torch.bfloat16
    assert isinstance(fast.task0.depth.conv2, CastInputConv2d)
    assert fast.task0.depth.conv2.weight.dtype == torch.float32


def test_a_bf16_copy_keeps_float32_values_in_the_output_convolutions(net):
    # the heads' output convolutions of a bf16 copy hold the source's float32 weights and bias, not
    # their bf16 roundings (a rounded depth bias moved S-like depth by 0.27 % median, the rest of the
    # bf16 path 0.04 %): set values bf16 cannot represent, then compare exactly
    source = copy.deepcopy(net)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name in ("task0.depth", "task0.uncertainty"):
            conv = source.get_submodule(name).conv2
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.1)
            conv.bias.copy_(torch.tensor([2.3711400032]))
            assert not torch.equal(conv.bias.to(torch.bfloat16).float(), conv.bias)
    fast = inference_copy(source, dtype=torch.bfloat16)
    for name in ("task0.depth", "task0.uncertainty"):
        src, out = source.get_submodule(name).conv2, fast.get_submodule(name).conv2
        assert torch.equal(out.weight, src.weight) and torch.equal(out.bias, src.bias), name
    x = distinct_images(1)
    feats = fast.features(prepare_input(x, channels_last=True, dtype=torch.bfloat16))
    hidden = fast.task0.depth.relu(fast.task0.depth.conv0(feats))
    expected = F.conv2d(hidden.float(), source.task0.depth.conv2.weight, source.task0.depth.conv2.bias, padding=2)
    assert torch.allclose(fast.task0.depth.conv2(hidden), expected, rtol=0, atol=1e-5)


def test_channels_last_copy_equal(net):
    x = distinct_images(2)
    cl = inference_copy(net, fuse_bn=False, channels_last=True)
    assert cl.E.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = net(x)
        out = cl(prepare_input(x, channels_last=True))
    for (d0, u0), (d1, u1) in zip(ref, out):
        torch.testing.assert_close(d1, d0, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(u1, u0, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("encoder", ["resnet18", "resnet50"])  # BasicBlock and Bottleneck
def test_fused_kernels_equal_the_folded_copy_fp32(net, encoder):
    if encoder != "resnet18":
        torch.manual_seed(1)
        net = randomize_bn(LifelongDepthNet(encoder, num_domains=2))
    folded = inference_copy(net, channels_last=True)
    fused = inference_copy(net, channels_last=True, fused_kernels=True)
    assert count_fused(folded) == 0 and count_fused(fused) > 0
    assert isinstance(fused.task0.depth.conv2, TapSumConv2d) and isinstance(fused.MFF.relu, nn.Identity)
    for size in ((48, 64), (40, 72), (48, 64)):  # a second shape packs again, the first is reused
        for channels_last in (True, False):  # NCHW input takes the plain-ops path
            x = prepare_input(distinct_images(2, *size), channels_last=channels_last)
            with torch.no_grad():
                feats, ref_feats = fused.features(x), folded.features(x)
                torch.testing.assert_close(feats, ref_feats, rtol=1e-4, atol=1e-4)
                for d in range(net.num_domains):
                    for a, b in zip(fused.head_forward(feats, d), folded.head_forward(ref_feats, d)):
                        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    packed = fused.MFF.conv._packed
    assert len(packed) == 2 and all(k[0] == 2 for k in packed)  # one packing per input shape
    fused.to(memory_format=torch.channels_last)
    assert fused.MFF.conv._packed == {}  # moving or converting the weights drops the packings


def test_fused_conv_packs_at_most_max_shapes():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1).eval()
    fused = FusedConv2d(conv, relu=True)
    with torch.no_grad():
        for w in range(10, 10 + FusedConv2d.max_shapes + 2):
            x = torch.randn(1, 8, 6, w).contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(fused(x), torch.relu(conv(x)), rtol=1e-5, atol=1e-5)
            res = torch.randn_like(x)
            torch.testing.assert_close(fused(x, res), torch.relu(conv(x) + res), rtol=1e-5, atol=1e-5)
    assert len(fused._packed) == FusedConv2d.max_shapes
    assert (1, 8, 6, 10 + FusedConv2d.max_shapes + 1) in fused._packed  # the newest is kept
    with pytest.raises(ValueError, match="fuse_bn"):
        inference_copy(nn.Sequential(), fuse_bn=False, fused_kernels=True)


@pytest.mark.parametrize("out_ch,k,dtype", [(1, 5, torch.bfloat16), (1, 5, torch.float32),
                                            (3, 3, torch.float32)])
def test_tap_sum_conv_equals_conv2d(out_ch, k, dtype):
    torch.manual_seed(0)
    conv = nn.Conv2d(16, out_ch, k, padding=k // 2)
    x = torch.randn(2, 16, 13, 17).to(dtype).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = TapSumConv2d(conv)(x)
        ref = conv(x.float())  # float32 sums of the (possibly bf16) input
    assert out.dtype == torch.float32 and out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="stride 1"):
        TapSumConv2d(nn.Conv2d(16, 1, 3, stride=2, padding=1))


def test_fast_pooled_descriptor_equals_prototypes_rule():
    g = torch.Generator().manual_seed(3)
    feats = torch.relu(torch.randn(3, 16, 20, 28, generator=g)) * 2 + 5  # mean >> std in places
    ref = pooled_descriptor(feats)
    torch.testing.assert_close(pooled_descriptor_nhwc(feats), ref, rtol=1e-5, atol=1e-6)
    cl = feats.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(pooled_descriptor_nhwc(cl), ref, rtol=1e-5, atol=1e-6)
    low = cl.bfloat16()
    torch.testing.assert_close(pooled_descriptor_nhwc(low), pooled_descriptor(low), rtol=1e-5, atol=1e-6)


def test_resolve_precision():
    assert resolve_precision("fp32", "cpu") == torch.float32
    assert resolve_precision("bfloat16", "cpu") == torch.bfloat16
    assert resolve_precision(torch.float16, "cpu") == torch.float16
    auto = resolve_precision("auto", "cpu")
    assert auto == (torch.bfloat16 if lowp_supported(torch.bfloat16, "cpu") else torch.float32)
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("int8", "cpu")


def test_training_helpers_keep_training_working(net):
    student = copy.deepcopy(net).train()
    to_channels_last(student)
    batch = channels_last_batch({"image": distinct_images(2), "depth": torch.rand(2, 1, 48, 64), "x": 1})
    assert batch["image"].is_contiguous(memory_format=torch.channels_last) and batch["x"] == 1
    d, u = student(batch["image"], domain=0)
    (d.mean() + u.mean()).backward()
    assert student.E.conv1.weight.grad is not None


# ------------------------------------------------------------------------------------- predictor
def test_default_is_fast_and_fast_false_is_plain(net):
    p = DepthPredictor(net)
    assert p.options["fast"] and p.options["channels_last"] and p.options["fuse_bn"]
    assert p.options["fused_kernels"] and count_fused(p.runner) > 0  # on a CPU
    assert p.dtype == resolve_precision("auto", "cpu")
    plain = DepthPredictor(net, fast=False)
    assert plain.runner is net and plain.dtype == torch.float32
    assert not plain.channels_last and not plain.fuse_bn and not plain.fused_kernels
    with pytest.raises(ValueError, match="fuse_bn"):  # fused kernels need the BN folded away
        DepthPredictor(net, fast=False, fused_kernels=True)
    assert DepthPredictor(net, precision="fp32").dtype == torch.float32


@pytest.mark.parametrize("opts,rel", [({}, 2e-2), ({"precision": "fp32"}, 1e-4),
                                      ({"precision": "fp32", "fused_kernels": False}, 1e-4),
                                      ({"precision": "bf16", "cast_weights": False}, 3e-2),
                                      ({"jit": True}, 2e-2)])
def test_fast_paths_match_fp32(net, opts, rel):
    x, protos = domain_batch(net, range(HEADS))
    ref = DepthPredictor(net, protos, fast=False).predict(x, with_uncertainty=True)
    out = DepthPredictor(net, protos, **opts).predict(x, with_uncertainty=True)
    assert out["domain"].tolist() == ref["domain"].tolist() == list(range(HEADS))
    for key in ("depth", "uncertainty", "distances"):
        assert out[key].dtype == torch.float32 and out[key].shape == ref[key].shape
    assert out["depth"].is_contiguous()
    assert_rel_close(out["depth"], ref["depth"], rel)
    assert_rel_close(out["uncertainty"], ref["uncertainty"], max(rel, 5e-2 if rel > 1e-3 else rel))


def test_only_the_chosen_head_runs(net):
    x, protos = domain_batch(net, [1, 1])
    for opts in ({}, {"fast": False}, {"jit": False, "precision": "fp32"}):
        p = DepthPredictor(net, protos, **opts)
        fired = []
        hooks = [getattr(p.runner.head(i), branch).register_forward_hook(
            lambda m, a, o, name=(i, branch): fired.append(name))
            for i in range(HEADS) for branch in ("depth", "uncertainty")]
        try:
            out = p.predict(x)
            assert out["domain"].tolist() == [1, 1]
            assert fired == [(1, "depth")], (opts, fired)
            fired.clear()
            p.predict(x, with_uncertainty=True)
            assert sorted(fired) == [(1, "depth"), (1, "uncertainty")]
            fired.clear()
            p.predict(x, domain=2)
            assert fired == [(2, "depth")]
        finally:
            for h in hooks:
                h.remove()


def test_mixed_batch_goes_to_each_images_head(net):
    order = [2, 0, 2, 1, 0]
    x, protos = domain_batch(net, order)
    for opts, rel in (({"fast": False}, 0.0), ({}, 2e-2)):
        p = DepthPredictor(net, protos, **opts)
        out = p.predict(x, with_uncertainty=True)
        assert out["domain"].tolist() == order
        assert out["distances"].shape == (len(order), HEADS)
        with torch.no_grad():
            for k, d in enumerate(order):
                dk, uk = net(x[k:k + 1], domain=d)
                if rel == 0.0:
                    torch.testing.assert_close(out["depth"][k:k + 1], dk, rtol=1e-5, atol=1e-6)
                    torch.testing.assert_close(out["uncertainty"][k:k + 1], uk, rtol=1e-5, atol=1e-6)
                else:
                    assert_rel_close(out["depth"][k:k + 1], dk, rel)
        # the domain prior: an int for the batch, or one index per image
        prior = p.predict(x, domain=torch.tensor(order))
        assert prior["distances"] is None and prior["domain"].tolist() == order
        torch.testing.assert_close(prior["depth"], out["depth"])
        assert p.predict(x, domain=1)["domain"].tolist() == [1] * len(order)


def test_bad_domain_fails_before_the_trunk(net):
    p = DepthPredictor(net)
    calls = []
    h = p.runner.E.register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(IndexError, match="out of range"):
            p.predict(distinct_images(1), domain=HEADS)
        with pytest.raises(ValueError, match="prototypes"):
            p.predict(distinct_images(1))  # no prototypes: automatic selection is impossible
    finally:
        h.remove()
    assert len(calls) == 1  # only the second call ran the trunk


def test_refresh_and_from_checkpoint(net, tmp_path):
    local = copy.deepcopy(net)
    x, protos = domain_batch(local, [0, 2])
    path = tmp_path / "m.pth.tar"
    save_checkpoint(path, local, prototypes=protos, domains=["nyu", "kitti", "scannet"], letters="NKS")
    fast = DepthPredictor.from_checkpoint(path)
    plain = DepthPredictor.from_checkpoint(path, fast=False)
    assert fast.options["fast"] and not plain.options["fast"]
    a, b = fast.predict(x), plain.predict(x)
    assert a["domain"].tolist() == b["domain"].tolist() == [0, 2]
    assert_rel_close(a["depth"], b["depth"], 2e-2)
    # the copy follows the network's weights only after refresh()
    p = DepthPredictor(local, protos, precision="fp32")
    before = p.predict(x, domain=0)["depth"]
    with torch.no_grad():
        local.task0.depth.conv2.bias.add_(1.0)
    torch.testing.assert_close(p.predict(x, domain=0)["depth"], before)
    p.refresh()
    torch.testing.assert_close(p.predict(x, domain=0)["depth"], before + 1.0, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------ capabilities
# The AVX2-only CPU's failure (issue 13): oneDNN refuses to pre-pack bf16 weights there.
AVX2_ERROR = ("mkldnn_reorder_conv2d_weight: bf16 path needs the cpu support avx_ne_convert or "
              "avx512bw, avx512vl and avx512dq")


@pytest.fixture
def avx2_cpu(monkeypatch):
    """This process behaves like an AVX2-only CPU: the capability queries say so, and oneDNN's
    weight pre-pack raises that CPU's error on bf16 weights (so any bf16 pre-pack fails the test)."""
    from models import hardware
    reorder = torch.ops.mkldnn._reorder_convolution_weight

    def avx2_reorder(weight, *args):
        if weight.dtype == torch.bfloat16:
            raise RuntimeError(AVX2_ERROR)
        return reorder(weight, *args)

    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_convolution_weight", avx2_reorder)
    monkeypatch.setattr(hardware, "bf16_kernels", lambda: False)
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx", "avx2", "fma"}))
    return hardware


def test_the_avx2_fixture_reproduces_the_crash(avx2_cpu):
    w = torch.zeros(8, 8, 3, 3, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    with pytest.raises(RuntimeError, match="avx512bw"):
        torch.ops.mkldnn._reorder_convolution_weight(w, [1, 1], [1, 1], [1, 1], 1, [1, 8, 8, 8])


def test_no_native_bf16_decides_fp32_and_never_prepacks_bf16(net, avx2_cpu):
    from engine import model as engine_model
    assert not avx2_cpu.bf16_native() and not lowp_supported(torch.bfloat16, "cpu")
    assert resolve_precision("auto", "cpu") == torch.float32
    x, protos = domain_batch(net, range(HEADS))
    ref = DepthPredictor(net, protos, fast=False).predict(x)
    default = DepthPredictor(net, protos)  # the product's default: fp32 fused kernels here
    assert default.dtype == torch.float32 and count_fused(default.runner) > 0
    out = default.predict(x)
    assert out["domain"].tolist() == list(range(HEADS))
    assert_rel_close(out["depth"], ref["depth"], 1e-4)
    # bf16 asked for explicitly: honoured with a warning; its fused convolutions (what the old
    # teacher was made of too) run without the pre-pack
    with pytest.warns(RuntimeWarning, match="no native kernels"):
        forced = DepthPredictor(net, protos, precision="bf16")
    assert forced.dtype == torch.bfloat16
    assert_rel_close(forced.predict(x)["depth"], ref["depth"], 2e-2)
    # the training engine's teacher under --precision bf16 stays float32 (fused) where bf16 is emulated
    teacher = engine_model.make_teacher(net, "cpu", torch.bfloat16)
    assert teacher.E.conv1.weight.dtype == torch.float32
    got = engine_model.teacher_targets(teacher, x, HEADS)
    with torch.no_grad():
        want = net(x)
    for (d, _), (t_d, _) in zip(want, got):
        assert_rel_close(t_d, d, 1e-4)


def test_native_bf16_needs_both_the_instructions_and_onednn(monkeypatch):
    from models import hardware
    monkeypatch.setattr(hardware, "bf16_kernels", lambda: True)
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512bw"}))
    assert not hardware.bf16_native()  # AVX-512 without BF16: oneDNN emulates bf16, slower than fp32
    assert resolve_precision("auto", "cpu") == torch.float32
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512_bf16"}))
    assert hardware.bf16_native() and resolve_precision("auto", "cpu") == torch.bfloat16
    monkeypatch.setattr(hardware, "bf16_kernels", lambda: False)
    assert not hardware.bf16_native()
    line = hardware.capability_line()
    assert hardware.cpu_model() in line and "AVX512-BF16 yes" in line and "bf16 no oneDNN kernels" in line


AVX2_SCRIPT = r"""
import json, torch
from engine import model as engine_model
from inference.predictor import DepthPredictor
from models import LifelongDepthNet, hardware
w = torch.zeros(8, 8, 3, 3, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
try:
    torch.ops.mkldnn._reorder_convolution_weight(w, [1, 1], [1, 1], [1, 1], 1, [1, 8, 8, 8])
    limited = False
except RuntimeError as e:
    limited = "bf16 path needs" in str(e)
torch.manual_seed(0)
net = LifelongDepthNet("resnet18", num_domains=2).eval()
x = torch.randn(1, 3, 48, 64)
pred = DepthPredictor(net)
depth = pred.predict(x, domain=1)["depth"]
teacher = engine_model.make_teacher(net, "cpu", torch.bfloat16)
targets = engine_model.teacher_targets(teacher, x, 2)
print(json.dumps({"limited": limited, "bf16_kernels": hardware.bf16_kernels(),
                  "precision": pred.options["precision"], "finite": bool(torch.isfinite(depth).all()),
                  "teacher_dtype": str(teacher.E.conv1.weight.dtype), "line": hardware.capability_line()}))
"""


def test_real_avx2_onednn_path_in_a_subprocess():
    """oneDNN limited to its AVX2 code (ONEDNN_MAX_CPU_ISA=AVX2, what an AVX2-only CPU runs): the
    capability probe sees it, and the default predictor and the bf16 teacher run in float32."""
    import json
    import os
    import platform
    import subprocess
    import sys
    from pathlib import Path
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("ONEDNN_MAX_CPU_ISA=AVX2 is an x86 setting (the monkeypatched test covers this)")
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", AVX2_SCRIPT], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    res = json.loads(done.stdout.strip().splitlines()[-1])
    if not res["limited"]:
        pytest.skip("this torch's oneDNN ignores ONEDNN_MAX_CPU_ISA (the monkeypatched test covers it)")
    assert not res["bf16_kernels"] and "ONEDNN_MAX_CPU_ISA=AVX2" in res["line"]
    assert res["precision"] == "float32" and res["teacher_dtype"] == "torch.float32" and res["finite"]
