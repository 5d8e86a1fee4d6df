"""The network's pieces as ONNX graphs, and the other runtimes that run them (ONNX Runtime,
OpenVINO): shared by ``export.py --format onnx``, ``DepthPredictor(backend=...)`` and the benchmark.

The graphs are float32, exported from a BN-folded NCHW inference copy (``models.fast``) with the
TorchScript-based exporter of ``torch.onnx`` (``dynamo=False``: it needs no extra package), with
dynamic batch and image sizes. Two graph kinds:

* a *piece*: the trunk (image -> fused features) or one head (features -> depth[, uncertainty]),
  so that a runtime runs the trunk, selection happens in PyTorch on its features, and only the
  chosen head runs (what :class:`inference.DepthPredictor` does with ``backend=``);
* a *whole model* (export.py): image -> depth, domain[, uncertainty], with the head fixed, or with
  pooled-prototype selection inside the graph and every head computed (ONNX has no cheap per-image
  dispatch), the chosen one gathered per image.

Neither runtime is needed by the default (PyTorch) path; a missing one raises
:class:`RuntimeUnavailable` with the pip command (onnx and onnxruntime are in
``requirements.txt`` because the tests use them; OpenVINO in ``requirements-openvino.txt``).
"""
from __future__ import annotations

import io
import os
import tempfile
import warnings

import torch
from torch import nn

__all__ = ["BACKENDS", "RuntimeUnavailable", "available", "require", "onnx_bytes", "TrunkPiece",
           "HeadPiece", "session", "OPSET"]

BACKENDS = ("torch", "onnxruntime", "openvino")
OPSET = 17
_PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "onnx": "onnx"}
# where each is pinned: the tests need onnx and onnxruntime; OpenVINO is an extra
_REQUIREMENTS = {"onnxruntime": "requirements.txt", "onnx": "requirements.txt",
                 "openvino": "requirements-openvino.txt"}


class RuntimeUnavailable(ImportError):
    """A runtime (or the onnx package) is not installed."""


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
    """features -> depth, or (depth, uncertainty), of one head."""

    def __init__(self, head, with_uncertainty: bool):
        super().__init__()
        self.head, self.with_uncertainty = head, bool(with_uncertainty)

    def forward(self, feats):
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
