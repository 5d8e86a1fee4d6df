"""The network's pieces as ONNX graphs, and the other runtimes that run them (ONNX Runtime,
OpenVINO): shared by ``export.py --format onnx``, ``DepthPredictor(backend=...)`` and the benchmark.

The graphs are float32, exported from a BN-folded NCHW inference copy (``models.fast``) with the
TorchScript-based exporter of ``torch.onnx`` (``dynamo=False``: it needs no extra package), with
dynamic batch and image sizes. Two graph kinds:

* a *piece*: the trunk (image -> fused features) or one head (features -> depth[, uncertainty]),
  so that a runtime runs the trunk, selection happens in PyTorch on its features, and only the
  chosen head runs (what :class:`inference.predictor.DepthPredictor` does with ``backend=``);
* a *whole model* (export.py): image -> depth, domain[, uncertainty], with the head fixed, or with
  pooled-prototype selection inside the graph and every head computed (ONNX has no cheap per-image
  dispatch), the chosen one gathered per image.

:func:`choose_backend` is ``DepthPredictor``'s default (``backend="auto"``): the runtime that
measured fastest on this CPU kind, PyTorch where none did or where it is not installed. Asked for
explicitly, a missing runtime raises :class:`RuntimeUnavailable` with the pip command (onnx and onnxruntime are in
``requirements.txt``, OpenVINO too: the tests and the benchmarks use all three).
"""
from __future__ import annotations

import io
import os
import tempfile
import warnings

import torch
from torch import nn

from base.errors import RuntimeUnavailable  # noqa: F401 (raised here, imported from here by callers)

__all__ = ["BACKENDS", "AUTO", "BACKEND_ENV", "RuntimeUnavailable", "available", "require", "onnx_bytes",
           "TrunkPiece", "HeadPiece", "session", "choose_backend", "OPSET"]

BACKENDS = ("torch", "onnxruntime", "openvino")
AUTO = "auto"  # DepthPredictor's default: choose_backend decides
# pins the automatic choice for a process (e.g. =torch to switch the runtimes off)
BACKEND_ENV = "LIFELONG_MONODEPTH_BACKEND"
OPSET = 17
_PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "onnx": "onnx"}
# where each is pinned (all in the default install: the tests use every one)
_REQUIREMENTS = {"onnxruntime": "requirements.txt", "onnx": "requirements.txt", "openvino": "requirements.txt"}


def available(name: str) -> bool:
    """Whether ``onnxruntime`` / ``openvino`` / ``onnx`` can be imported here."""
    try:
        require(name)
        return True
    except RuntimeUnavailable:
        return False


def require(name: str):
    """Import and return the package ``name``; :class:`RuntimeUnavailable` if it is missing."""
    import importlib
    try:
        return importlib.import_module(_PACKAGES[name])
    except ImportError as e:
        raise RuntimeUnavailable(f"{name} is not installed: pip install -r {_REQUIREMENTS[name]} "
                                 f"({e})") from None


class TrunkPiece(nn.Module):
    """image -> fused features (B, C, H/2, W/2)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.features(x)


class HeadPiece(nn.Module):
    """features -> depth, or (depth, uncertainty), of one head. ``hidden=True``: each branch's
    last hidden map instead (64 channels, before its output convolution), for a runtime that
    computes in bfloat16 while the output convolutions stay float32 (models/fast.py's rule: a
    bf16 depth output is terraced, 0.25 m steps between 32 and 64 m; the caller applies them)."""

    def __init__(self, head, with_uncertainty: bool, hidden: bool = False):
        super().__init__()
        self.head, self.with_uncertainty, self.hidden = head, bool(with_uncertainty), bool(hidden)

    def forward(self, feats):
        if self.hidden:
            branches = [self.head.depth] + ([self.head.uncertainty] if self.with_uncertainty else [])
            maps = [b.relu(b.bn0(b.conv0(feats))) for b in branches]
            return tuple(maps) if self.with_uncertainty else maps[0]
        depth, unc = self.head(feats, self.with_uncertainty)
        return (depth, unc) if self.with_uncertainty else depth


def onnx_bytes(module: nn.Module, example: torch.Tensor, input_name: str, output_names: list,
               opset: int = OPSET) -> bytes:
    """The ONNX serialisation of an eval-mode float32 ``module`` (one 4-D input; batch and image
    sizes dynamic), exported by tracing on ``example``."""
    dims = {0: "batch", 2: "height", 3: "width"}
    axes = {input_name: dims} | {name: {0: "batch", 2: f"{name}_height", 3: f"{name}_width"}
                                 for name in output_names}
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # the TorchScript-based exporter announces its deprecation and tracer warnings on every
        # call; the graph is checked against eager by the callers (tests/test_export.py)
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (example,), buf, dynamo=False, opset_version=opset,
                          input_names=[input_name], output_names=list(output_names),
                          dynamic_axes=axes, do_constant_folding=True)
    return buf.getvalue()


class _OrtSession:
    """ONNX Runtime on the CPU: torch tensors in, float32 torch tensors out."""

    def __init__(self, model: bytes, threads: int):
        ort = require("onnxruntime")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # no busy-waiting between calls: idle spinning threads would take the cores from the
        # next (PyTorch) computation of the same process
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> list:
        out = self.session.run(None, {self.input: x.detach().float().contiguous().cpu().numpy()})
        return [torch.from_numpy(o) for o in out]


class _OpenVinoSession:
    """OpenVINO on the CPU (float32 inference precision unless asked), one compiled model per
    input shape (static shapes compile to faster code than dynamic ones)."""

    max_shapes = 4

    def __init__(self, model: bytes, threads: int, precision: str = "f32"):
        ov = require("openvino")
        self.core = ov.Core()
        with tempfile.TemporaryDirectory() as tmp:  # read_model wants a file for ONNX
            path = os.path.join(tmp, "model.onnx")
            with open(path, "wb") as f:
                f.write(model)
            self.model = self.core.read_model(path)
        self.config = {"INFERENCE_NUM_THREADS": int(threads), "INFERENCE_PRECISION_HINT": precision,
                       "PERFORMANCE_HINT": "LATENCY"}
        self.compiled = {}

    def __call__(self, x: torch.Tensor) -> list:
        key = tuple(x.shape)
        if key not in self.compiled:
            if len(self.compiled) >= self.max_shapes:
                self.compiled.pop(next(iter(self.compiled)))
            model = self.model.clone()
            model.reshape({model.inputs[0].any_name: list(key)})
            self.compiled[key] = self.core.compile_model(model, "CPU", self.config)
        compiled = self.compiled[key]
        out = compiled(x.detach().float().contiguous().cpu().numpy())
        return [torch.from_numpy(out[o].copy()) for o in compiled.outputs]


def session(backend: str, model: bytes, threads: int | None = None, precision: str = "f32"):
    """A callable running the ONNX ``model`` with ``backend`` (``onnxruntime`` or ``openvino``)
    on ``threads`` CPU threads (default: torch's); returns a list of torch tensors."""
    threads = int(threads or torch.get_num_threads())
    if backend == "onnxruntime":
        return _OrtSession(model, threads)
    if backend == "openvino":
        return _OpenVinoSession(model, threads, precision)
    raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")


# The fastest backend per CPU kind (models.hardware.cpu_kind) and compute dtype, from interleaved
# runs of the same function on each kind (bench/README.md; the ratios:
# docs/BENCHMARKS.md#figures-that-were-in-the-codes-comments):
# AMX: OpenVINO bf16; AVX512-BF16 without AMX (Zen 4): PyTorch's fused bf16 kernels; AVX2 only
# (Zen 3): ONNX Runtime's float32. AVX-512 without bf16 was not measured: PyTorch's fused float32
# stays (it was faster than ONNX Runtime's float32 on Zen 4).
_FASTEST = {("amx", "bfloat16"): "openvino", ("avx2", "float32"): "onnxruntime"}


def choose_backend(dtype: torch.dtype, device="cpu", kind: str | None = None) -> tuple[str, str]:
    """(backend, why): the fastest backend computing ``dtype`` on ``device`` here, decided from the
    CPU's kind (``kind``: that of this machine unless given) and which runtimes are installed;
    PyTorch wherever no runtime measured faster or the runtime is absent. ``LIFELONG_MONODEPTH_BACKEND``
    (``torch``, ``onnxruntime``, ``openvino``) overrides the choice."""
    from . import hardware
    forced = os.environ.get(BACKEND_ENV, "").strip().lower()
    if forced and forced != AUTO:
        if forced not in BACKENDS:
            raise ValueError(f"{BACKEND_ENV}={forced!r}: expected one of {(AUTO,) + BACKENDS}")
        return forced, f"{BACKEND_ENV}={forced}"
    if torch.device(device).type != "cpu":
        return "torch", f"{torch.device(device).type}: the runtimes run on a CPU only"
    kind = kind or hardware.cpu_kind()
    name = str(dtype).replace("torch.", "")
    best = _FASTEST.get((kind, name))
    if best is None:
        return "torch", f"{kind} CPU, {name}: no runtime measured faster than PyTorch"
    if not available(best):
        return "torch", f"{kind} CPU, {name}: {best} measured faster but is not installed"
    return best, f"{kind} CPU, {name}: {best} measured fastest"
