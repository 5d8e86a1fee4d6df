"""DepthPredictor's automatic backend (models/runtimes.choose_backend, models/hardware.cpu_kind):
each CPU kind's branch with forced capabilities, a runtime present and absent, the override."""
import sys

import pytest
import torch

from inference.predictor import DepthPredictor, auto_backend
from models import LifelongDepthNet, hardware, runtimes
from models.runtimes import BACKEND_ENV, choose_backend
from inference.prototypes import pooled_descriptor

# /proc/cpuinfo flags of the three CPU kinds this project runs on (plus Skylake-SP's AVX-512)
FLAGS = {"avx2": {"avx", "avx2", "fma"},                                        # AMD Zen 3
         "avx512": {"avx", "avx2", "fma", "avx512f", "avx512bw"},              # Skylake-SP
         "avx512_bf16": {"avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_bf16"},  # AMD Zen 4
         "amx": {"avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "amx_tile", "amx_bf16",
                 "amx_int8"}}                                                   # Sapphire Rapids


@pytest.fixture
def cpu(monkeypatch):
    """force(kind): this process reports that CPU kind's flags (and oneDNN bf16 kernels where it
    has AVX-512); the suite's backend pin (tests/conftest.py) is lifted."""
    monkeypatch.delenv(BACKEND_ENV, raising=False)

    def force(kind):
        monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(FLAGS[kind]))
        monkeypatch.setattr(hardware, "bf16_kernels", lambda: kind != "avx2")
        return kind
    return force


@pytest.fixture
def absent(monkeypatch):
    """absent(name): importing that runtime fails here, as where it is not installed."""
    return lambda name: monkeypatch.setitem(sys.modules, name, None)


@pytest.mark.parametrize("kind,default", [("amx", "openvino"), ("avx512_bf16", "torch"),
                                          ("avx512", "torch"), ("avx2", "onnxruntime")])
def test_each_cpu_kind_gets_its_fastest_backend(cpu, kind, default):
    cpu(kind)
    assert hardware.cpu_kind() == kind
    dtype = torch.bfloat16 if kind in ("amx", "avx512_bf16") else torch.float32
    assert DepthPredictor.__init__.__kwdefaults__["backend"] == "auto"
    backend, why = choose_backend(dtype, "cpu")
    assert backend == default and kind in why
    # float32 asked for on a bf16 CPU: no runtime measured faster than PyTorch's fused fp32
    if dtype == torch.bfloat16:
        assert choose_backend(torch.float32, "cpu")[0] == "torch"
    assert choose_backend(dtype, "cuda")[0] == "torch"


@pytest.mark.parametrize("kind,runtime", [("amx", "openvino"), ("avx2", "onnxruntime")])
def test_an_absent_runtime_falls_back_to_pytorch(cpu, absent, kind, runtime):
    cpu(kind)
    absent(runtime)
    assert not runtimes.available(runtime)
    dtype = torch.bfloat16 if kind == "amx" else torch.float32
    backend, why = choose_backend(dtype, "cpu")
    assert backend == "torch" and "not installed" in why
    pred = DepthPredictor(small_net())
    assert pred.options["backend"] == "torch" and pred.dtype == dtype
    assert "not installed" in pred.options["backend_choice"]


def test_the_environment_variable_overrides_the_choice(cpu, monkeypatch):
    cpu("amx")
    monkeypatch.setenv(BACKEND_ENV, "torch")
    assert choose_backend(torch.bfloat16, "cpu") == ("torch", f"{BACKEND_ENV}=torch")
    monkeypatch.setenv(BACKEND_ENV, "onnxruntime")
    assert choose_backend(torch.bfloat16, "cpu")[0] == "onnxruntime"
    monkeypatch.setenv(BACKEND_ENV, "auto")
    assert choose_backend(torch.bfloat16, "cpu")[0] == "openvino"
    monkeypatch.setenv(BACKEND_ENV, "tensorrt")
    with pytest.raises(ValueError, match=BACKEND_ENV):
        choose_backend(torch.bfloat16, "cpu")


def test_pytorch_options_keep_the_pytorch_path(cpu):
    cpu("amx")
    unset = {"channels_last": None, "fuse_bn": None, "jit": None, "fused_kernels": None, "cast_weights": None}
    assert auto_backend("cpu", True, None, unset)[0] == "openvino"
    assert auto_backend("cpu", False, None, unset) == ("torch", "PyTorch options asked for (fast=False)")
    for key, value in (("jit", True), ("channels_last", False), ("fused_kernels", False),
                       ("cast_weights", False)):
        backend, why = auto_backend("cpu", True, None, dict(unset, **{key: value}))
        assert backend == "torch" and key in why
    assert auto_backend("cpu", True, "fp32", unset)[0] == "torch"
    net = small_net()  # the keywords reach the choice
    assert DepthPredictor(net, jit=True).options["backend"] == "torch"
    assert DepthPredictor(net, backend="torch").options["backend_choice"] == "asked for"


def small_net(heads=3, seed=0):
    torch.manual_seed(seed)
    net = LifelongDepthNet("resnet18", num_domains=heads).eval()
    with torch.no_grad():
        for i, head in enumerate(net.heads):  # positive, distinct depths
            head.depth.conv2.weight.mul_(0.05)
            head.depth.conv2.bias.fill_(2.0 + i)
    return net


def separable_batch(net, order, heads=3):
    """(images, prototypes): image k is a noisy copy of domain order[k]'s base image."""
    g = torch.Generator().manual_seed(1)
    base = torch.stack([torch.randn(3, 48, 64, generator=g) * (0.5 + 0.5 * i) + 0.3 * i
                        for i in range(heads)])
    x = torch.stack([base[d] + 0.05 * torch.randn(base.shape[1:], generator=g) for d in order])
    with torch.no_grad():
        protos = {"pooled": pooled_descriptor(net.features(base))}
    return x, protos


def check_default_runtime(kind, backend, dtype, rel):
    """The product's default on CPU kind ``kind`` (forced here, the suite's backend pin lifted):
    the runtime's graphs, the same heads chosen as the float32 PyTorch path, depth within ``rel``."""
    import os
    os.environ.pop(BACKEND_ENV, None)
    hardware.cpu_flags = lambda: frozenset(FLAGS[kind])
    hardware.bf16_kernels = lambda: kind != "avx2"
    net = small_net()
    order = [2, 0, 1, 2]
    x, protos = separable_batch(net, order)
    pred = DepthPredictor(net, protos)
    assert pred.options["backend"] == backend and pred.dtype == dtype
    out = pred.predict(x)
    ref = DepthPredictor(net, protos, fast=False).predict(x)
    assert out["domain"].tolist() == ref["domain"].tolist() == order
    assert out["depth"].dtype == torch.float32 and out["depth"].shape == ref["depth"].shape
    err = (out["depth"] - ref["depth"]).pow(2).mean().sqrt() / ref["depth"].pow(2).mean().sqrt()
    assert err.item() <= rel


@pytest.mark.parametrize("kind,backend,dtype,rel", [("amx", "openvino", "bfloat16", 3e-2),
                                                    ("avx2", "onnxruntime", "float32", 1e-4)])
def test_the_default_predictor_runs_the_chosen_runtime(kind, backend, dtype, rel):
    """In a subprocess (the forced flags stay there, and a process that ran OpenVINO can crash in
    the first signal it handles: tests/test_export.py); both runtimes are pinned in requirements.txt."""
    import os
    import subprocess
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    code = (f"import torch, test_backend; test_backend.check_default_runtime({kind!r}, {backend!r}, "
            f"torch.{dtype}, {rel!r})")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root / "tests"), str(root)]))
    done = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_the_command_line_default_is_auto():
    import argparse
    from cli.options import add_runtime_arguments, runtime_options
    p = argparse.ArgumentParser()
    add_runtime_arguments(p)
    args = p.parse_args([])
    assert args.backend == "auto" and "backend" not in runtime_options(args).keywords()
    assert runtime_options(p.parse_args(["--backend", "torch"])).keywords()["backend"] == "torch"
