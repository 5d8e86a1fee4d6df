"""Depth for new images: the product's inference path, shared by test_inference.py, predict.py,
export.py and the benchmarks.

Per batch: the shared trunk (encoder + fusion) once, the domain chosen by the nearest stored
prototype (or given as the domain prior), then only the chosen head's depth branch (and its
uncertainty branch when asked). No other head is computed.

Which library runs it is decided per machine (``backend="auto"``, the default): on CPUs with AMX
OpenVINO's bfloat16 graphs, on AVX2-only CPUs ONNX Runtime's float32 ones (the trunk and the chosen
head as ONNX graphs, ``models/runtimes.py``; selection stays here), elsewhere PyTorch as follows.
In PyTorch (``fast=True``) this runs on an inference copy of the network (``models/fast.py``):
BatchNorm folded into the convolutions, channels_last (NHWC) layout, on a CPU fused oneDNN kernels
(Conv+ReLU(+add) in one call, weights pre-packed per input shape) and, where the device has native
kernels for it, bfloat16 weights and activations (the heads' output convolutions stay float32).
Its speed against the authors' forward: docs/BENCHMARKS.md#speed; its accuracy against float32:
docs/BENCHMARKS.md#accuracy-of-the-fast-path. ``fast=False`` (or ``precision="fp32"``,
``channels_last=False``, ``fuse_bn=False`` one by one) gives the plain float32 path on the
network itself (and PyTorch: those options exist only there). ``backend="torch"`` /
``"onnxruntime"`` / ``"openvino"`` fixes the library; bench/README.md has the measurements per
CPU kind.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from base.domains import clamp_depth
from base.errors import InputError
from models import load_checkpoint
from models.checkpoint import check_checkpoint_path, checkpoint_meta
from models.fast import PRECISIONS
from models.fast import (TapSumConv2d, autocast_context, inference_copy, lowp_supported, prepare_input,
                         resolve_precision, trace_module)
from models.runtimes import AUTO, BACKENDS, HeadPiece, TrunkPiece, choose_backend  # the pieces traced or exported
from inference.prototypes import SELECTORS, choose_selector, pooled_descriptor_nhwc, pooled_distances, prototype_distances


class DepthPredictor:
    """Wraps a LifelongDepthNet for inference.

    ``prototypes`` is the checkpoint's ``{"pooled": ..., "map": [...]}`` (or None: then every call
    needs ``domain``). Outputs are float32 at the network's resolution (half the input); use
    ``losses.upsample_to`` to bring them to another size.

    Speed options (keyword only; defaults are the fast path):

    - ``fast``: False turns every speed-up off (float32, NCHW, no folding, no tracing) and runs
      ``net`` itself; the options below then default to off, but can still be set one by one.
    - ``precision``: ``"auto"`` (bfloat16 where the device has native bf16 kernels, float16 on a
      CUDA GPU without bf16, else float32: ``models.fast.resolve_precision``), ``"fp32"``,
      ``"bf16"`` or ``"fp16"``.
    - ``cast_weights``: True (default) converts the copy's weights once to the low precision;
      False uses autocast instead (float32 weights, converted on every call: slower on CPU).
    - ``channels_last``: NHWC weights and inputs (default on).
    - ``fuse_bn``: fold BatchNorm into the preceding convolution (default on).
    - ``fused_kernels``: on a CPU, each Conv+ReLU (+ residual add) as one oneDNN kernel with weights
      pre-packed per input shape, and the heads' 1-channel output convolutions as a float32 matmul
      plus shifted sums (``models.fast.fuse_kernels``; default on with ``fast`` on a CPU, needs
      ``fuse_bn``).
    - ``jit``: TorchScript trace + freeze of the trunk and of each used head, built lazily on the
      first batch (once per head; its cost: docs/BENCHMARKS.md#figures-that-were-in-the-codes-comments; default off).
    - ``backend``: ``"auto"`` (default): the fastest backend measured for this CPU kind at this
      precision (``models.runtimes.choose_backend``: OpenVINO bf16 on AMX CPUs, ONNX Runtime on
      AVX2-only ones, PyTorch elsewhere, on CUDA, when a runtime is absent, and whenever ``fast=False``
      or a PyTorch-only option above is set; ``options["backend_choice"]`` says why).
      ``"torch"``, or ``"onnxruntime"`` / ``"openvino"`` (CPU only; OpenVINO
      pinned in ``requirements.txt``): the trunk and each used head exported once to float32 ONNX
      (BN folded; the set-up time: bench/README.md) and run by that runtime; selection and the
      outputs are the same tensors as above. ``precision`` then is the runtime's: float32 for
      ONNX Runtime; OpenVINO's inference precision (``auto``: bf16 where the CPU has native bf16;
      at bf16 the heads' output convolutions run here in float32, as on PyTorch's path, so depth
      keeps float32's resolution).

    ``net`` stays the caller's (unmodified, float32) network; ``runner`` is the module that
    actually runs (``net`` itself when nothing needs a copy). If ``net``'s weights change after
    construction, call :meth:`refresh`.
    """

    def __init__(self, net, prototypes=None, selector: str | None = None, device="cpu", *,
                 fast: bool = True, precision=None, channels_last=None, fuse_bn=None,
                 cast_weights: bool = True, jit=None, fused_kernels=None, backend: str = AUTO):
        selector = choose_selector(prototypes, selector)  # None: lda where stored, else pooled
        if selector not in SELECTORS:
            raise ValueError(f"unknown selector {selector!r}; choose one of {SELECTORS}")
        if backend not in (AUTO,) + BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {(AUTO,) + BACKENDS}")
        self.device = torch.device(device)
        self.backend_choice = "asked for"
        if backend == AUTO:
            torch_options = {"channels_last": channels_last, "fuse_bn": fuse_bn, "jit": jit,
                             "fused_kernels": fused_kernels, "cast_weights": None if cast_weights else False}
            backend, self.backend_choice = auto_backend(self.device, fast, precision, torch_options)
        self.backend = backend
        if backend != "torch":
            self._init_runtime(net, prototypes, selector, precision)
            return
        self.net = net.to(self.device).eval()
        self.prototypes = prototypes
        self.selector = selector
        self.meta = dict(getattr(net, "meta", {}) or {})
        self.fast = bool(fast)
        self.dtype = resolve_precision(("auto" if fast else "fp32") if precision is None else precision,
                                       self.device)
        if self.dtype != torch.float32 and not lowp_supported(self.dtype, self.device):
            # honoured (it is what was asked for), but say why it may be slow
            import warnings
            warnings.warn(f"{self.dtype} has no native kernels on {self.device}; it may be slower "
                          f"than float32", RuntimeWarning, stacklevel=2)
        self.channels_last = self.fast if channels_last is None else bool(channels_last)
        self.fuse_bn = self.fast if fuse_bn is None else bool(fuse_bn)
        if fused_kernels is None:
            fused_kernels = self.fast and self.fuse_bn and self.device.type == "cpu"
        self.fused_kernels = bool(fused_kernels)  # without fuse_bn, inference_copy refuses it
        self.cast_weights = bool(cast_weights)
        self.jit = False if jit is None else bool(jit)
        if self.jit and self._autocast_dtype is not None:
            raise ValueError("jit=True needs cast_weights=True (or float32): autocast does not trace")
        self.refresh()

    def _init_runtime(self, net, prototypes, selector, precision):
        """Settings of an ONNX Runtime / OpenVINO predictor (the graphs are built by refresh)."""
        if self.device.type != "cpu":
            raise ValueError(f"backend={self.backend!r} runs on the CPU only (device {self.device})")
        from models.runtimes import require
        require(self.backend)  # RuntimeUnavailable (with the pip command) before any work
        self.net = net.to(self.device).eval()
        self.prototypes, self.selector = prototypes, selector
        self.meta = dict(getattr(net, "meta", {}) or {})
        self.fast, self.cast_weights, self.jit = True, True, False
        self.channels_last, self.fuse_bn, self.fused_kernels = False, True, False
        dtype = resolve_precision("auto" if precision is None else precision, self.device)
        if self.backend == "onnxruntime" or dtype == torch.float16:
            dtype = torch.float32  # the exported graphs are float32; ORT's CPU kernels are too
        self.dtype = dtype
        self.refresh()

    @classmethod
    def from_checkpoint(cls, path, order=None, device="cpu", selector=None, prototypes=None,
                        **options):
        """Load ``path`` (project or authors' file); ``options`` are the speed keywords above
        (:func:`build_predictor` with ``RuntimeOptions(extra=options)``)."""
        return build_predictor(path, RuntimeOptions(extra=options), device, order=order,
                               prototypes=prototypes, selector=selector)

    # ---- configuration -----------------------------------------------------------------------
    @property
    def options(self) -> dict:
        """The effective speed settings (for logs and benchmark tables)."""
        return {"backend": self.backend, "backend_choice": self.backend_choice, "fast": self.fast,
                "precision": str(self.dtype).replace("torch.", ""),
                "cast_weights": self.cast_weights, "channels_last": self.channels_last,
                "fuse_bn": self.fuse_bn, "fused_kernels": self.fused_kernels, "jit": self.jit}

    @property
    def _autocast_dtype(self):
        """Autocast dtype when low precision is reached by autocast rather than cast weights."""
        return None if self.dtype == torch.float32 or self.cast_weights else self.dtype

    def refresh(self) -> None:
        """(Re)build the inference copy from ``self.net``'s current weights."""
        self._sessions = {}
        if self.backend != "torch":  # float32 NCHW copy with BN folded: what the graphs are made of
            self.runner = inference_copy(self.net, fuse_bn=True, channels_last=False)
            self._input_dtype = None
            return
        cast = self.dtype if (self.dtype != torch.float32 and self.cast_weights) else None
        if self.fuse_bn or self.channels_last or self.fused_kernels or cast is not None:
            self.runner = inference_copy(self.net, fuse_bn=self.fuse_bn,
                                         channels_last=self.channels_last, dtype=cast,
                                         fused_kernels=self.fused_kernels)
        else:
            self.runner = self.net
        self._input_dtype = cast
        self._traced_features = None
        self._traced_heads = {}

    @property
    def num_domains(self) -> int:
        return self.net.num_domains

    @property
    def domain_names(self) -> list[str]:
        return checkpoint_meta(self).domain_names(self.num_domains)

    # ---- the pieces ----------------------------------------------------------------------------
    def _autocast(self):
        return autocast_context(self.device, self._autocast_dtype)

    def _session(self, key, piece, example, outputs):
        """The runtime session of one piece (``"trunk"`` or a head), exported on first use."""
        if key not in self._sessions:
            from models.runtimes import onnx_bytes, session
            model = onnx_bytes(piece, example, "input", outputs)
            precision = {torch.bfloat16: "bf16"}.get(self.dtype, "f32")
            self._sessions[key] = session(self.backend, model, precision=precision)
        return self._sessions[key]

    def _output_convs(self, d: int) -> list:
        """Head ``d``'s output convolutions (depth, uncertainty) in float32 (``TapSumConv2d``), for a
        runtime computing the rest of the head in bfloat16: depth keeps float32's resolution (as
        on PyTorch's path, models/fast.py)."""
        key = ("output", d)
        if key not in self._sessions:
            head = self.runner.head(d)
            self._sessions[key] = [TapSumConv2d(head.depth.conv2), TapSumConv2d(head.uncertainty.conv2)]
        return self._sessions[key]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Fused features of a prepared batch, as computed by the running module (any dtype)."""
        if self.backend != "torch":
            return self._session("trunk", TrunkPiece(self.runner), images, ["features"])(images)[0]
        if not self.jit:
            return self.runner.features(images)
        if self._traced_features is None:
            self._traced_features = trace_module(TrunkPiece(self.runner), images)
        return self._traced_features(images)

    def head(self, feats: torch.Tensor, d: int, with_uncertainty: bool):
        """(depth, uncertainty or None) of head ``d`` on features from :meth:`features`."""
        if self.backend != "torch":
            lowp = self.dtype != torch.float32  # OpenVINO bf16: the output convolutions run here, float32
            piece = HeadPiece(self.runner.head(d), with_uncertainty, hidden=lowp)
            outs = self._session((d, bool(with_uncertainty)), piece, feats,
                                 ["depth", "uncertainty"] if with_uncertainty else ["depth"])(feats)
            if lowp:
                convs = self._output_convs(d)
                outs = [conv(o) for conv, o in zip(convs, outs)]
            return outs[0], (outs[1] if with_uncertainty else None)
        if not self.jit:
            return self.runner.head_forward(feats, d, with_uncertainty=with_uncertainty)
        key = (d, bool(with_uncertainty))
        if key not in self._traced_heads:
            self._traced_heads[key] = trace_module(HeadPiece(self.runner.head(d), with_uncertainty), feats)
        out = self._traced_heads[key](feats)
        return (out[0], out[1]) if with_uncertainty else (out, None)

    def select(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen domain per image (B,), distances (B, D)); computed in float32."""
        if not self.prototypes:
            raise ValueError("no domain prototypes: give the domain, or compute prototypes from "
                             "replay data (test_inference.py --replay-root DIR)")
        if self.selector == "pooled":  # prototype_distances' pooled rule, with a faster descriptor
            dists = pooled_distances(pooled_descriptor_nhwc(feats), self.prototypes["pooled"])
        else:
            dists = prototype_distances(feats.float(), self.prototypes, self.selector)
        return dists.argmin(dim=1), dists

    # ---- the product's call --------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, images: torch.Tensor, domain=None, with_uncertainty: bool = False) -> dict:
        """Depth in metres for a normalized (B,3,H,W) batch.

        ``domain``: None (automatic selection), an int for the whole batch, or a (B,) tensor.
        Returns ``{"depth": (B,1,h,w), "uncertainty": (B,1,h,w) or None, "domain": (B,) long,
        "distances": (B,D) or None}``, all float32 (domain: int64).
        """
        batch = images.shape[0]
        chosen = None
        if domain is not None:  # check the prior before spending the trunk
            chosen = torch.as_tensor(domain, device=self.device).long().expand(batch)
            self._check_chosen(chosen)
        x = prepare_input(images, self.device, self.channels_last, self._input_dtype)
        with self._autocast():
            feats = self.features(x)
        distances = None
        if chosen is None:
            chosen, distances = self.select(feats)
            self._check_chosen(chosen)
        with self._autocast():
            depth, unc = self._heads(feats, chosen, with_uncertainty)
        return {"depth": depth, "uncertainty": unc, "domain": chosen, "distances": distances}

    # ---- whole frames (inference/frames.py: one rule for predict.py, streams, the demo) -------
    @property
    def supports_windows(self) -> bool:
        """True where the fusion's windowed attention (``models.modules.Windows``) can run: the
        PyTorch path without TorchScript (the runtimes' and traced graphs pool globally)."""
        return self.backend == "torch" and not self.jit

    @torch.no_grad()
    def trunk_features(self, images: torch.Tensor, windows=None) -> torch.Tensor:
        """Fused features of a normalised (B,3,H,W) batch, prepared as :meth:`predict` prepares it;
        ``windows`` (a ``models.modules.Windows``; :attr:`supports_windows`): the channel attention
        pooled over windows of that extent."""
        if windows is not None:
            return self.fuse(self.trunk_blocks(images), windows, tuple(images.shape[-2:]))
        x = prepare_input(images, self.device, self.channels_last, self._input_dtype)
        with self._autocast():
            return self.features(x)

    @torch.no_grad()
    def trunk_blocks(self, images: torch.Tensor):
        """The encoder's four blocks of a normalised batch (PyTorch path: :attr:`supports_windows`),
        for :meth:`fuse`."""
        if not self.supports_windows:
            raise ValueError(f"the encoder's blocks are not reachable on backend {self.backend!r}"
                             f"{' with jit' if self.jit else ''}")
        x = prepare_input(images, self.device, self.channels_last, self._input_dtype)
        with self._autocast():
            return self.runner.E(x)

    @torch.no_grad()
    def fuse(self, blocks, windows=None, input_hw=None) -> torch.Tensor:
        """Fused features of :meth:`trunk_blocks`' output; ``windows``: pooled over those windows
        of an input of ``input_hw`` (else globally, as :meth:`trunk_features`)."""
        with self._autocast():
            return self.runner.MFF(blocks, windows, input_hw)

    @torch.no_grad()
    def run_heads(self, feats: torch.Tensor, chosen: torch.Tensor, with_uncertainty: bool = False):
        """(depth, uncertainty or None), float32, of each image's head ``chosen`` (B,) on ``feats``."""
        chosen = torch.as_tensor(chosen, device=self.device).long().expand(feats.shape[0])
        self._check_chosen(chosen)
        with self._autocast():
            return self._heads(feats, chosen, with_uncertainty)

    def frame_pipeline(self, mode: str = "resample", rule: str | None = None):
        """The :class:`inference.frames.FramePipeline` of this predictor (cameras from its meta);
        ``rule``: ``inference.frames.FRAME_RULES`` (None: ``DEFAULT_FRAME_RULE``, the fitted pass)."""
        from inference.frames import DEFAULT_FRAME_RULE, FramePipeline, head_anchors, head_cameras
        key = ("frames", mode, rule or DEFAULT_FRAME_RULE)
        if getattr(self, "_frames", None) is None or self._frames[0] != key:
            meta = checkpoint_meta(self)
            letters = meta.letter_list or self.domain_names
            self._frames = (key, FramePipeline(self, head_cameras(meta, letters), mode,
                                               tiles=meta.input_sizes, rule=key[2],
                                               anchors=head_anchors(letters)))
        return self._frames[1]

    def predict_image(self, image, domain=None, camera=None, with_uncertainty: bool = True,
                      mode: str = "resample", rule: str | None = None, interval: float | None = None) -> dict:
        """Depth in metres for one whole frame at its own size: a PIL image (any mode) or an array
        ((H,W) grey, (H,W,3) RGB, (H,W,4) RGBA; uint8, uint16 over its full range, floats in [0, 1]
        or else [0, 255]: ``loaders.rgb_array``'s rules, an InputError otherwise). ``domain``: the
        head, as an index (0 = first learned), a letter ("N") or a name ("nyu"); None = chosen on
        the frame. ``camera`` an ``inference.frames.CameraHint`` (None: the chosen head's camera is
        assumed); ``rule`` how a frame larger than the head's training input runs
        (``inference.frames.FRAME_RULES``). Returns ``FramePipeline.run``'s dict (depth,
        uncertainty, head, ood, ood_score, camera, ...); ``interval`` (a central coverage, e.g. 0.9):
        also ``"interval"``: ``{"lower", "upper"}`` maps in metres (around the depth clamped to the
        head's range, as predict.py writes it) under the head's calibration, with
        ``base.uncertainty.interval_summary``'s fields (the coverage measured on whole frames,
        ``"meaning"``)."""
        from loaders import rgb_array
        head = self.head_index(domain)
        out = self.frame_pipeline(mode, rule).run(rgb_array(image, "predict_image"), head=head, camera=camera,
                                                  with_uncertainty=with_uncertainty or interval is not None)
        if interval is not None:
            from base.uncertainty import head_calibration, interval_maps, interval_summary
            heads, h = self.num_domains, out["head"]
            lower, upper = interval_maps(clamp_depth(out["depth"], self.depth_range(h)), out["uncertainty"],
                                         head_calibration(self.meta, h, heads), interval)
            out["interval"] = {"lower": lower, "upper": upper, **interval_summary(self.meta, h, heads, interval)}
        return out

    def depth_range(self, head: int):
        """(min, max) metres of head ``head``: the checkpoint's ``depth_ranges``, else the head's
        domain's registered range, as predict.py clamps (CheckpointMeta.depth_range)."""
        return checkpoint_meta(self).depth_range(head, self.num_domains)

    def write_outputs(self, stem, result: dict, image=None, *, clamp: bool = True, colour_maps: bool = True,
                      max_depth: float | None = None, ply_stride: int = 1, warn=None):
        """predict.py's files of one :meth:`predict_image` ``result`` (inference/outputs.py):
        ``<stem>_depth.png`` (16-bit millimetres), ``<stem>_depth.npy`` (float32 metres), the colour
        maps (``colour_maps``, the depth bar up to ``max_depth``), the interval bounds where the
        result has them (``predict_image(interval=...)``), ``<stem>.ply`` where the ``image`` it was
        predicted from is given (through the camera the prediction used; every ``ply_stride``-th
        pixel). The depth is clamped to the head's range first, as predict.py does (``clamp=False``:
        its --no-clamp). Returns ``inference.outputs.Written`` (the paths, the point count)."""
        from inference.outputs import ply_intrinsics, write_prediction
        from loaders import rgb_array
        depth = clamp_depth(result["depth"], self.depth_range(result["head"])) if clamp else result["depth"]
        rgb = rgb_array(image, "write_outputs") if image is not None else None
        k = ply_intrinsics(result["camera"])[0] if rgb is not None else None
        return write_prediction(stem, depth, uncertainty=result.get("uncertainty"), interval=result.get("interval"),
                                rgb=rgb, intrinsics=k, colour_maps=colour_maps, max_depth=max_depth,
                                ply_stride=ply_stride, warn=warn)

    def head_index(self, domain):
        """The head index of ``domain``: None, an index, a letter or a name of this model's domains;
        one InputError naming the heads it has otherwise."""
        if domain is None:
            return None
        letters = checkpoint_meta(self).letter_list
        names = self.domain_names
        heads = ", ".join(f"{i} = {letters[i]} ({n})" if i < len(letters) else f"{i} = {n}"
                          for i, n in enumerate(names))
        if isinstance(domain, str):
            key = domain.strip()
            for i, n in enumerate(names):
                if key.lower() == str(n).lower() or (i < len(letters) and key.upper() == letters[i]):
                    return i
        elif isinstance(domain, (int, np.integer)) and not isinstance(domain, bool) and 0 <= domain < self.num_domains:
            return int(domain)
        raise InputError(f"domain {domain!r}: this model has no such head; its heads are {heads}")

    def _check_chosen(self, chosen):
        if chosen.numel() and (chosen.min() < 0 or chosen.max() >= self.num_domains):
            raise IndexError(f"domain index out of range for a {self.num_domains}-domain model")

    def _heads(self, feats, chosen, with_uncertainty):
        """Each image through its chosen head only; images sharing a head go together."""
        groups = chosen.unique().tolist()
        if len(groups) == 1:  # the usual case: no gather/scatter
            d_out, u_out = self.head(feats, groups[0], with_uncertainty)
            return _f32(d_out), (_f32(u_out) if with_uncertainty else None)
        depth = unc = None
        for d in groups:
            rows = (chosen == d).nonzero(as_tuple=True)[0]
            d_out, u_out = self.head(feats[rows], d, with_uncertainty)
            if depth is None:
                depth = torch.zeros((feats.shape[0],) + d_out.shape[1:], dtype=torch.float32,
                                    device=d_out.device)
                unc = depth.clone() if with_uncertainty else None
            depth[rows] = d_out.float()
            if with_uncertainty:
                unc[rows] = u_out.float()
        return depth, unc


# DepthPredictor's keyword options (``extra`` of RuntimeOptions may set any of them).
PREDICTOR_KEYWORDS = ("fast", "precision", "channels_last", "fuse_bn", "cast_weights", "jit", "fused_kernels",
                      "backend")


@dataclass
class RuntimeOptions:
    """How a DepthPredictor runs: the speed/precision trade-off asked for. Only what differs from
    the defaults is passed on (:meth:`keywords`), so DepthPredictor's own defaults (the fast path)
    apply otherwise."""
    fast: bool = field(default=True, metadata={"help": (
        "use DepthPredictor's plain float32 path, without the speed-ups it applies by default (BN "
        "folded into convs, channels_last, fused oneDNN kernels on a CPU, bf16 where the device has "
        "native kernels, fp16 on CUDA GPUs without bf16; how far that moves the metrics: "
        "docs/BENCHMARKS.md#accuracy-of-the-fast-path); for exact numbers")})
    precision: str = field(default="auto", metadata={"help": (
        "numeric precision of the network. auto: bfloat16 where the device runs it natively (CPUs with "
        "AVX512-BF16 or AMX, CUDA GPUs with bf16), float16 on older CUDA GPUs, else float32 (AVX2-only "
        "CPUs); float32 with --no-fast. ONNX Runtime runs float32 whatever is asked, OpenVINO bf16 (the heads' output "
        "convolutions in float32, as PyTorch's path) or float32 (fp16 runs as float32)")})
    backend: str = field(default=AUTO, metadata={"help": (
        "what runs the network: auto (default) = predict.py on a folder, video or stream: the fastest "
        "installed runtime and precision measured on this machine on first use (cached per CPU, package "
        "versions and input size in $XDG_CACHE_HOME/lifelong-monodepth; printed when measured); one "
        "image and the other commands: the "
        "fastest measured for this CPU kind (OpenVINO bf16 on AMX CPUs, ONNX Runtime on AVX2-only "
        "ones, else PyTorch); PyTorch with --no-fast; LIFELONG_MONODEPTH_BACKEND forces one; "
        "torch; or ONNX graphs of the trunk and the chosen head in onnxruntime / openvino (CPU; "
        "bench/README.md has the figures per CPU kind)")})
    measure: bool = field(default=False, metadata={"help": (
        "with backend auto: choose the backend and precision by a short measurement on this machine "
        "(models.tuning: the fastest installed runtime meeting the accuracy bound, cached per CPU, "
        "package versions and input size); predict.py's default. False: the table per CPU kind")})
    extra: dict = field(default_factory=dict, metadata={"help": (
        "extra keyword argument for DepthPredictor.from_checkpoint (repeatable; the value is parsed "
        "as JSON when it can be, e.g. channels_last=false)")})

    def keywords(self) -> dict:
        """DepthPredictor's keyword arguments for these settings; InputError for a key it has not."""
        unknown = sorted(k for k in self.extra if k not in PREDICTOR_KEYWORDS)
        if unknown:
            raise InputError(f"DepthPredictor has no option {', '.join(unknown)}; its options are "
                             f"{', '.join(PREDICTOR_KEYWORDS)}")
        asked = {"fast": False} if not self.fast else {}
        if self.precision != "auto":
            asked["precision"] = self.precision
        if self.backend != AUTO:
            asked["backend"] = self.backend
        merged = dict(asked, **self.extra)
        choices = {"precision": PRECISIONS, "backend": (AUTO,) + tuple(BACKENDS)}
        for key, value in merged.items():  # each value checked here: one line, not a traceback later
            if value is None:  # the default
                continue
            if key in choices and value not in choices[key]:
                raise InputError(f"{key}={value!r}: expected one of {', '.join(choices[key])}")
            if key not in choices and not isinstance(value, bool):
                raise InputError(f"{key}={value!r}: expected true or false")
        return merged


def build_predictor(source, runtime: RuntimeOptions | None = None, device="cpu", *, order=None,
                    prototypes=None, selector=None) -> DepthPredictor:
    """A DepthPredictor of ``source`` (a checkpoint path, loaded here, or a loaded network) run as
    ``runtime`` asks; ``prototypes`` None: the checkpoint's own. Raises CheckpointError (a missing
    or bad file), RuntimeUnavailable (a backend not installed), InputError (an unknown option)."""
    runtime = runtime or RuntimeOptions()
    keywords = runtime.keywords()
    net = source
    if not isinstance(source, torch.nn.Module):
        net = load_checkpoint(check_checkpoint_path(source), order=order)
    protos = prototypes if prototypes is not None else checkpoint_meta(net).prototypes
    if runtime.measure and measurable(keywords, device):
        choice = measured_backend(net, protos, selector, device, keywords.get("precision"))
        keywords = dict(keywords, backend=choice["backend"], precision=choice["precision"])
        predictor = DepthPredictor(net, protos, selector=selector, device=device, **keywords)
        predictor.backend_choice = choice["why"]
        return predictor
    return DepthPredictor(net, protos, selector=selector, device=device, **keywords)


def measurable(keywords: dict, device) -> bool:
    """Whether ``backend="auto"`` is decided by measurement: on a CPU, the fast path, no backend
    asked for (``--backend``, ``LIFELONG_MONODEPTH_BACKEND``) and no PyTorch-only option set."""
    import os
    from models.runtimes import BACKEND_ENV
    if torch.device(device).type != "cpu" or keywords.get("fast") is False or "backend" in keywords:
        return False
    if os.environ.get(BACKEND_ENV, "").strip().lower() not in ("", AUTO):
        return False
    return not any(k in keywords for k in ("channels_last", "fuse_bn", "jit", "fused_kernels", "cast_weights"))


def probe_batch(meta: dict, letters) -> tuple:
    """(normalised (B,3,h,w) probe at the first head's input size, ground truth (B,1,h/2,w/2) or
    None): one synthetic frame (data.synthetic, seeded) per built-in domain of ``letters``, resized
    to the input; a model without built-in domains gets a seeded random image and no ground truth."""
    import numpy as np
    import torch.nn.functional as F
    from base.images import image_tensor
    from data.synthetic import render_sample
    from models.checkpoint import default_scale
    h, w = checkpoint_meta(meta).example_size
    images, gts = [], []
    for c in letters:
        try:
            s = render_sample(str(c)[:1].upper(), "test", 0, seed=12345, scale=default_scale(meta))
        except (ValueError, KeyError):
            continue
        images.append(F.interpolate(image_tensor(s["image"]), size=(h, w), mode="bilinear", align_corners=False,
                                    antialias=True))
        gt = torch.from_numpy(np.asarray(s.get("depth_exact", s["depth"]), np.float32))[None, None]
        gts.append(F.interpolate(gt, size=(h // 2, w // 2), mode="nearest"))
    if not images:
        g = torch.Generator().manual_seed(0)
        return torch.randn(1, 3, h, w, generator=g), None
    return torch.cat(images), torch.cat(gts)


def measured_backend(net, prototypes, selector, device, precision=None, *, timer=None, log=None) -> dict:
    """``models.tuning.choose_measured`` for this network: the one-head function (trunk, head choice
    where prototypes are stored, else head 0, one head) on :func:`probe_batch`, per installed
    backend and precision (only ``precision`` when one is asked for); reported once on stderr."""
    import sys
    from models import tuning
    meta = checkpoint_meta(net)
    letters, (h, w) = meta.letter_list, meta.example_size
    asked = None if precision in (None, "auto") else {"float32": "fp32", "bfloat16": "bf16"}.get(str(precision), str(precision))
    probe = {}

    def batch():  # rendered only when measuring (a cached answer needs none of this)
        if not probe:
            probe["x"], probe["gt"] = probe_batch(net.meta, letters)
        return probe["x"], probe["gt"]

    def cands():
        found = tuning.candidates(device)
        if asked is None:
            return found
        return [("torch", "fp32")] + [c for c in found if c[1] == asked and c != ("torch", "fp32")]

    def run(backend, prec):
        x, _ = batch()
        p = DepthPredictor(net, prototypes, selector=selector, device=device, backend=backend, precision=prec)
        domain = None if prototypes else 0
        return lambda: p.predict(x, domain=domain)

    return tuning.choose_measured(run, (h, w), device=device, cands=cands, timer=timer, gt=lambda: batch()[1],
                                  precision=asked, log=log or (lambda m: print(m, file=sys.stderr)))


def predictor_settings(predictor) -> dict:
    """The predictor's effective speed settings (fast path, precision, ...) when it reports them."""
    options = getattr(predictor, "options", None)
    return dict(options) if isinstance(options, dict) else {"fast": False, "precision": "float32"}



def auto_backend(device, fast: bool, precision, torch_options: dict) -> tuple[str, str]:
    """(backend, why) of ``backend="auto"``: PyTorch where its own path was asked for (``fast=False``
    or one of its options set: those exist only there), else the fastest backend measured for this
    CPU kind and the precision (``models.runtimes.choose_backend``; PyTorch if that runtime is absent)."""
    asked = sorted(k for k, v in torch_options.items() if v is not None)
    if not fast or asked:
        return "torch", "PyTorch options asked for (" + (", ".join(asked) or "fast=False") + ")"
    dtype = resolve_precision("auto" if precision is None else precision, device)
    return choose_backend(dtype, device)



def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32).contiguous()
