"""Inference (and training) speed-ups for LifelongDepthNet that keep its module structure.

Everything here works on a *copy* of a network, or on tensors, never on the training model itself:

* :func:`fuse_conv_bn` folds every eval-mode BatchNorm into the convolution before it (the BN
  becomes ``nn.Identity`` under the same attribute name), so ``features``/``head_forward``/``forward``
  of the copy run unchanged with fewer kernels and one less pass over every activation.
* :func:`inference_copy` builds the copy used by :class:`inference.predictor.DepthPredictor`: frozen, eval
  mode, BN folded, channels_last, and optionally cast to bfloat16/float16 ("cast" mode: weights are
  converted once, instead of autocast converting every weight on every call). The last convolution
  of every head branch (64 -> 1 channel, ~0.2 % of the FLOPs) stays float32, so depth and
  uncertainty are computed and returned in float32. ``fused_kernels=True`` adds
  :func:`fuse_kernels` (DepthPredictor's default on a CPU; the training engine's teacher too).
* :func:`resolve_precision` picks the compute dtype: on CPU bfloat16 where oneDNN has native bf16
  kernels (AVX512-BF16/AMX), else float32; on CUDA bfloat16 (or float16 where bf16 is unsupported).
  What the machine supports is asked in one place, ``models/hardware.py``.
* :func:`fuse_kernels` (on an inference copy, CPU): every Conv+ReLU and every residual
  Conv+add+ReLU of the network runs as one oneDNN kernel (``mkldnn._convolution_pointwise``) with its
  weights pre-packed once per input shape (:class:`FusedConv2d`), and each head's 64 -> 1 output
  convolution becomes one float32 matmul plus 25 shifted sums (:class:`TapSumConv2d`, exact).
* :func:`trace_module` wraps TorchScript trace + freeze (optional; see bench/README.md).
* :func:`to_channels_last` / :func:`channels_last_batch` are for the training engine.

Measured effects against the authors' forward of three heads (2 AVX512-BF16 cores without AMX,
228x304 / 352x1216, ratio of medians, see bench/README.md): one head's depth branch 2.0x / 2.1x,
+ channels_last and BN folding 1.8-2.1x / 2.4x, + fused kernels 2.3x / 2.7x, + bfloat16 (the
default) 4.0-4.2x / 5.0x; TorchScript freeze adds nothing measurable once BN is folded; float16 has
no native CPU kernels here and is never chosen automatically on a CPU.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from . import hardware
from .hardware import lowp_supported

__all__ = ["PRECISIONS", "resolve_precision", "lowp_supported", "fold_conv_bn", "fuse_conv_bn",
           "count_batchnorms", "inference_copy", "CastInputConv2d", "autocast_context",
           "FusedConv2d", "TapSumConv2d", "fuse_kernels", "count_fused",
           "prepare_input", "trace_module", "to_channels_last", "channels_last_batch"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_NAMES = {v: k for k, v in _DTYPES.items()}


# ----------------------------------------------------------------------------- precision
# lowp_supported (native fast kernels for a dtype) is decided in models/hardware.py, with the rest of
# what this machine can run; re-exported here for the existing callers.


def resolve_precision(precision, device) -> torch.dtype:
    """``"auto" | "fp32" | "bf16" | "fp16"`` (or a torch dtype) -> the compute dtype.

    ``auto``: bfloat16 where the device has native bf16 convolutions (CUDA with bf16, CPUs with
    AVX512-BF16/AMX whose oneDNN runs them: ``models.hardware.bf16_native``), float16 on CUDA
    without bf16, else float32 (AVX2-only and AVX-512-without-BF16 CPUs). float16 is never picked on a CPU:
    it measured slower than bfloat16 there (no AMX-FP16 kernels;
    docs/BENCHMARKS.md#figures-that-were-in-the-codes-comments).
    """
    device = torch.device(device)
    if isinstance(precision, torch.dtype):
        if precision not in _NAMES:
            raise ValueError(f"unsupported precision {precision}; choose one of {PRECISIONS}")
        return precision
    key = str(precision).lower()
    aliases = {"float32": "fp32", "float": "fp32", "bfloat16": "bf16", "float16": "fp16",
               "half": "fp16"}
    key = aliases.get(key, key)
    if key not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    if key != "auto":
        return _DTYPES[key]
    if lowp_supported(torch.bfloat16, device):
        return torch.bfloat16
    if device.type == "cuda":
        return torch.float16
    return torch.float32


def autocast_context(device, dtype):
    """Autocast to ``dtype`` on ``device``; for float32/None autocast is switched off (also inside an
    enclosing autocast region), so float32 means float32. The one autocast helper of the project."""
    device_type = torch.device(device).type
    if dtype is None or dtype == torch.float32:
        return torch.autocast(device_type=device_type, enabled=False)
    return torch.autocast(device_type=device_type, dtype=dtype)


# ----------------------------------------------------------------------------- Conv+BN folding
@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Return a new Conv2d (with bias) equal to ``bn(conv(x))`` with ``bn`` in eval mode.

    ``w' = w * g / sqrt(var + eps)``, ``b' = (b - mean) * g / sqrt(var + eps) + beta``, computed in
    float64 and stored in the convolution's dtype.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics")
    dtype = conv.weight.dtype
    w = conv.weight.double()
    b = conv.bias.double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64,
                                                                      device=w.device)
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(b)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(b)
    scale = gamma / torch.sqrt(bn.running_var.double() + bn.eps)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                      padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
                      padding_mode=conv.padding_mode).to(device=w.device)
    fused.weight.copy_((w * scale.reshape(-1, 1, 1, 1)).to(dtype))
    fused.bias.copy_(((b - bn.running_mean.double()) * scale + beta).to(dtype))
    fused.weight.requires_grad_(conv.weight.requires_grad)
    fused.bias.requires_grad_(conv.weight.requires_grad)
    return fused.to(dtype=dtype, memory_format=_memory_format(conv.weight))


def _memory_format(t):
    return torch.channels_last if (t.dim() == 4 and not t.is_contiguous()
                                   and t.is_contiguous(memory_format=torch.channels_last)) \
        else torch.contiguous_format


def _conv_bn_pairs(module: nn.Module):
    """(conv name, bn name) children of ``module`` that run back to back.

    Two layouts occur in LifelongDepthNet: attributes ``conv<s>`` / ``bn<s>`` with the same suffix
    (``conv1``/``bn1`` in ResNet blocks and UpProjection, ``conv``/``bn`` in MFF, ``conv0``/``bn0`` in
    a head branch), and ``nn.Sequential`` entries ``[i]`` Conv2d, ``[i+1]`` BatchNorm2d (ResNet
    ``downsample``). In every one of these forward() applies the BN directly to the conv's output.
    """
    children = dict(module.named_children())
    if isinstance(module, nn.Sequential):
        names = list(children)
        for a, b in zip(names, names[1:]):
            if isinstance(children[a], nn.Conv2d) and isinstance(children[b], nn.BatchNorm2d):
                yield a, b
        return
    for name, child in children.items():
        if isinstance(child, nn.BatchNorm2d) and name.startswith("bn"):
            conv = "conv" + name[2:]
            if isinstance(children.get(conv), nn.Conv2d):
                yield conv, name


def fuse_conv_bn(net: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold every eval-mode BN of ``net`` into its convolution; BNs become ``nn.Identity``.

    Works on a deep copy unless ``inplace``. The result is for inference only (eval mode); its
    attribute structure (``E.layer1[0].conv1``, ``task0.depth.conv0`` ...) is unchanged, so all of
    LifelongDepthNet's methods work on it. Training-mode BNs (batch statistics) cannot be folded:
    the copy is put in eval mode first.
    """
    if not inplace:
        net = copy.deepcopy(net)
    net.eval()
    for module in list(net.modules()):
        for conv_name, bn_name in list(_conv_bn_pairs(module)):
            conv, bn = getattr(module, conv_name), getattr(module, bn_name)
            setattr(module, conv_name, fold_conv_bn(conv, bn))
            setattr(module, bn_name, nn.Identity())
    return net


def count_batchnorms(net: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


# ----------------------------------------------------------------------------- inference copy
class CastInputConv2d(nn.Conv2d):
    """A Conv2d that first casts its input to its own weight dtype (a float32 output layer after
    a bfloat16/float16 trunk)."""

    def forward(self, x):
        return super().forward(x.to(self.weight.dtype))


def _float32_output_convs(net: nn.Module, weights: dict) -> None:
    """Give every head branch's last conv (``conv2``: 64 -> 1 channel) float32 weights and inputs;
    ``weights``: :func:`_output_conv_weights` of the network before it was cast, so that these
    convolutions keep float32's values (the depth's bias rounded to bfloat16 moved S-like depth by
    0.27 % median, five times the rest of the bf16 path's change)."""
    from .modules import Branch  # local: keeps this module importable on its own
    for name, branch in net.named_modules():
        if isinstance(branch, Branch):
            old = branch.conv2
            new = CastInputConv2d(old.in_channels, old.out_channels, old.kernel_size,
                                  stride=old.stride, padding=old.padding, dilation=old.dilation,
                                  groups=old.groups, bias=old.bias is not None)
            new = new.to(device=old.weight.device)
            weight, bias = weights[name]
            with torch.no_grad():
                new.weight.copy_(weight)
                if bias is not None:
                    new.bias.copy_(bias)
            new.requires_grad_(False)
            branch.conv2 = new.to(memory_format=_memory_format(old.weight))


def _output_conv_weights(net: nn.Module) -> dict:
    """Branch name -> float32 copies of its output conv's (weight, bias), taken before a cast."""
    from .modules import Branch
    return {name: (b.conv2.weight.detach().float().clone(),
                   None if b.conv2.bias is None else b.conv2.bias.detach().float().clone())
            for name, b in net.named_modules() if isinstance(b, Branch)}


def inference_copy(net: nn.Module, *, fuse_bn: bool = True, channels_last: bool = True,
                   dtype: torch.dtype | None = None, device=None,
                   fused_kernels: bool = False) -> nn.Module:
    """A frozen, eval-mode copy of ``net`` for fast inference (``net`` itself is not touched).

    ``fuse_bn``: fold BN into the convolutions. ``channels_last``: NHWC weights (oneDNN's native
    layout; feed NHWC inputs, see :func:`prepare_input`). ``dtype``: cast the copy's parameters to
    bfloat16/float16 except the heads' output convolutions, which stay float32. ``fused_kernels``
    (needs ``fuse_bn``): :func:`fuse_kernels` on the result (eager only: not for tracing/export).
    """
    if fused_kernels and not fuse_bn:
        raise ValueError("fused_kernels needs fuse_bn: a BatchNorm sits between a conv and its ReLU")
    net = copy.deepcopy(net)
    if device is not None:
        net = net.to(device)
    net.eval()
    net.requires_grad_(False)
    if fuse_bn:
        net = fuse_conv_bn(net, inplace=True)
    if dtype is not None and dtype != torch.float32:
        kept = _output_conv_weights(net)
        net = net.to(dtype)
        _float32_output_convs(net, kept)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    if fused_kernels:
        fuse_kernels(net)
    return net


def prepare_input(x: torch.Tensor, device=None, channels_last: bool = False,
                  dtype: torch.dtype | None = None) -> torch.Tensor:
    """Move/convert an image batch the way an :func:`inference_copy` expects it."""
    x = x.to(device=device, dtype=dtype if dtype is not None else x.dtype, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


# ----------------------------------------------------------------------------- fused kernels
def _onednn_path(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``x`` can take oneDNN's fused convolution: a CPU NHWC batch of the weight's dtype,
    a dtype whose weights oneDNN pre-packs on this CPU (float32; bfloat16 only where it has the
    instructions: on AVX2-only CPUs it raises, see models/hardware.py), outside autograd, autocast
    and TorchScript tracing (a traced graph must stay portable, so it records the plain ops)."""
    return (x.device.type == "cpu" and x.dim() == 4 and x.dtype == weight.dtype
            and hardware.lowp_kernels(x.dtype)
            and x.is_contiguous(memory_format=torch.channels_last)
            and not (torch.is_grad_enabled() and x.requires_grad)
            and not torch.jit.is_tracing() and not torch.jit.is_scripting()
            and not torch.is_autocast_enabled("cpu"))  # autocast has no rule for the fused op


class FusedConv2d(nn.Module):
    """An inference Conv2d (BN already folded into its bias) whose ReLU, and optionally a residual
    added before it, run inside the convolution kernel.

    On a CPU the weights are re-ordered into oneDNN's blocked layout once per input shape and kept
    (``_convolution_pointwise`` would otherwise re-order them on every call: at batch 1 that is a
    third of a 512-channel 3x3 convolution's time). Elsewhere (CUDA, NCHW input, tracing) it runs
    the same arithmetic as plain ops. Parameter names stay ``weight``/``bias``.
    """

    max_shapes = 4  # packed weight sets kept (input shapes); the oldest is dropped beyond that

    def __init__(self, conv: nn.Conv2d, relu: bool):
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("FusedConv2d needs numeric zero padding")
        self.weight = nn.Parameter(conv.weight.detach().clone(memory_format=torch.preserve_format),
                                   requires_grad=False)
        self.bias = (nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
                     if conv.bias is not None else None)
        self.stride, self.padding = list(conv.stride), list(conv.padding)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self.relu = bool(relu)
        self._packed = {}

    def extra_repr(self):
        w = self.weight.shape
        return (f"{w[1] * self.groups}, {w[0]}, kernel_size={tuple(w[2:])}, stride={tuple(self.stride)}, "
                f"relu={self.relu}")

    def __getstate__(self):  # deepcopy/pickle: packed weights are a cache (and opaque tensors)
        state = dict(self.__dict__)
        state["_packed"] = {}
        return state

    def _apply(self, fn, *args, **kwargs):
        self._packed = {}  # device/dtype/layout changes invalidate the packed copies
        return super()._apply(fn, *args, **kwargs)

    def _packed_weight(self, x: torch.Tensor) -> torch.Tensor:
        key = tuple(x.shape)
        packed = self._packed.get(key)
        if packed is None:
            if len(self._packed) >= self.max_shapes:
                self._packed.pop(next(iter(self._packed)))
            packed = torch.ops.mkldnn._reorder_convolution_weight(
                self.weight.detach(), self.padding, self.stride, self.dilation, self.groups, list(key))
            self._packed[key] = packed
        return packed

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``relu(conv(x) [+ residual])`` (no ReLU when built with ``relu=False``)."""
        if _onednn_path(x, self.weight) and (residual is None or (
                residual.dtype == x.dtype and residual.is_contiguous(memory_format=torch.channels_last))):
            weight = self._packed_weight(x)
            unary = "relu" if self.relu else "none"
            if residual is None:
                return torch.ops.mkldnn._convolution_pointwise(
                    x, weight, self.bias, self.padding, self.stride, self.dilation, self.groups,
                    unary, [], "")
            return torch.ops.mkldnn._convolution_pointwise.binary(
                x, residual, weight, self.bias, self.padding, self.stride, self.dilation, self.groups,
                "add", None, unary if self.relu else None, [], "")
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        if residual is not None:
            y = y + residual
        return F.relu(y) if self.relu else y


class TapSumConv2d(nn.Module):
    """A stride-1 'same' convolution to a few output channels, computed in float32 as one matmul
    (every pixel's C features times the C x (out*k*k) taps) followed by k*k shifted sums.

    For the heads' 64 -> 1 5x5 output convolutions: oneDNN has no efficient kernel for one output
    channel (as slow as 64 -> 16; this is faster, measured in bench/README.md); it computes
    the same sums in float32 (max difference ~1e-6), whatever the input's dtype.
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        kh, kw = conv.kernel_size
        if (tuple(conv.stride) != (1, 1) or tuple(conv.dilation) != (1, 1) or conv.groups != 1
                or isinstance(conv.padding, str) or tuple(conv.padding) != (kh // 2, kw // 2)
                or kh % 2 == 0 or kw % 2 == 0 or conv.padding_mode != "zeros"):
            raise ValueError("TapSumConv2d needs an odd kernel, stride 1, no dilation/groups and "
                             "'same' zero padding")
        weight = conv.weight.detach().float()
        out_ch, in_ch = weight.shape[:2]
        # taps[o * kh * kw + t, c] = weight[o, c, t // kw, t % kw]
        self.register_buffer("taps", weight.permute(0, 2, 3, 1).reshape(out_ch * kh * kw, in_ch)
                             .contiguous())
        bias = conv.bias.detach().float() if conv.bias is not None else torch.zeros(out_ch)
        self.register_buffer("bias", bias.clone())
        self.kernel_size, self.out_channels = (kh, kw), out_ch

    def extra_repr(self):
        return f"{self.taps.shape[1]}, {self.out_channels}, kernel_size={self.kernel_size}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        kh, kw = self.kernel_size
        pixels = x.permute(0, 2, 3, 1).reshape(n, h * w, c).to(self.taps.dtype)  # NHWC: a view
        maps = torch.matmul(self.taps, pixels.transpose(1, 2))  # (n, out*kh*kw, h*w)
        maps = F.pad(maps.reshape(n * self.out_channels, kh * kw, h, w),
                     (kw // 2, kw // 2, kh // 2, kh // 2))
        out = self.bias.repeat(n).reshape(n * self.out_channels, 1, 1, 1).expand(-1, 1, h, w).clone()
        for i in range(kh):
            for j in range(kw):
                # out[y, x] += sum_c weight[c, i, j] * x[c, y + i - kh//2, x + j - kw//2]
                out += maps[:, i * kw + j: i * kw + j + 1, i:i + h, j:j + w]
        return out.reshape(n, self.out_channels, h, w)


class FusedBasicBlock(nn.Module):
    """BasicBlock with ``conv1`` + ReLU and ``conv2`` + shortcut + ReLU as two fused kernels."""

    def __init__(self, block):
        super().__init__()
        self.conv1 = FusedConv2d(block.conv1, relu=True)
        self.conv2 = FusedConv2d(block.conv2, relu=True)
        self.downsample = _fused_shortcut(block.downsample)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        return self.conv2(self.conv1(x), identity)


class FusedBottleneck(nn.Module):
    """Bottleneck with its three convolutions fused (ReLU; the last one adds the shortcut)."""

    def __init__(self, block):
        super().__init__()
        self.conv1 = FusedConv2d(block.conv1, relu=True)
        self.conv2 = FusedConv2d(block.conv2, relu=True)
        self.conv3 = FusedConv2d(block.conv3, relu=True)
        self.downsample = _fused_shortcut(block.downsample)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        return self.conv3(self.conv2(self.conv1(x)), identity)


def _fused_shortcut(downsample):
    """A folded ``downsample`` (Sequential(Conv2d, Identity)) as one FusedConv2d without ReLU."""
    if downsample is None:
        return None
    convs = [m for m in downsample if isinstance(m, nn.Conv2d)]
    rest = [m for m in downsample if not isinstance(m, (nn.Conv2d, nn.Identity))]
    if len(convs) != 1 or rest:
        raise ValueError("fuse_kernels: a shortcut that is not one (folded) 1x1 convolution")
    return FusedConv2d(convs[0], relu=False)


def fuse_kernels(net: nn.Module) -> nn.Module:
    """Rewrite a BN-folded inference copy of LifelongDepthNet in place so that every Conv+ReLU
    (stem, ResNet blocks, fusion projections, fusion conv, head branches) is one fused kernel, and
    every head branch's output convolution a :class:`TapSumConv2d`. Returns ``net``.

    Only the ReLUs that directly follow a folded convolution are removed (replaced by
    ``nn.Identity`` under the same name), so every method of the network works unchanged; the
    squeeze-and-excitation gates (1x1 maps) are left as they are.
    """
    from .modules import MFF, Branch, UpProjection
    from .resnet import BasicBlock, Bottleneck, ResNetEncoder
    if count_batchnorms(net):
        raise ValueError("fuse_kernels needs BatchNorm folded first (fuse_conv_bn)")
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, BasicBlock):
                setattr(parent, name, FusedBasicBlock(child))
            elif isinstance(child, Bottleneck):
                setattr(parent, name, FusedBottleneck(child))
    for module in net.modules():
        if isinstance(module, (ResNetEncoder, UpProjection)):  # their relu follows conv1 only
            module.conv1, module.relu = FusedConv2d(module.conv1, relu=True), nn.Identity()
        elif isinstance(module, MFF):
            module.conv, module.relu = FusedConv2d(module.conv, relu=True), nn.Identity()
        elif isinstance(module, Branch):
            module.conv0, module.relu = FusedConv2d(module.conv0, relu=True), nn.Identity()
            module.conv2 = TapSumConv2d(module.conv2)
    return net


def count_fused(net: nn.Module) -> int:
    """Fused convolutions in ``net`` (0 for a network :func:`fuse_kernels` has not rewritten)."""
    return sum(isinstance(m, (FusedConv2d, TapSumConv2d)) for m in net.modules())


# ----------------------------------------------------------------------------- selection
# ----------------------------------------------------------------------------- TorchScript
def trace_module(module: nn.Module, example: torch.Tensor, freeze: bool = True):
    """``torch.jit.trace`` (+ ``torch.jit.freeze``) of an eval-mode module on ``example``.

    Input sizes are not baked in (sizes are traced as ``aten::size``), so one trace serves every
    input size; freezing inlines the weights and lets the JIT fuse conv + add + ReLU.
    """
    module = module.eval()
    with torch.no_grad():
        traced = torch.jit.trace(module, example, check_trace=False)
        return torch.jit.freeze(traced) if freeze else traced


# ----------------------------------------------------------------------------- training helpers
def to_channels_last(*modules: nn.Module) -> None:
    """Convert parameters (and buffers) of modules to channels_last in place (training works)."""
    for m in modules:
        if m is not None:
            m.to(memory_format=torch.channels_last)


def channels_last_batch(batch: dict) -> dict:
    """A loader batch with its image (and depth) tensors in channels_last; other entries as is."""
    out = dict(batch)
    for key in ("image", "depth"):
        t = out.get(key)
        if isinstance(t, torch.Tensor) and t.dim() == 4:
            out[key] = t.contiguous(memory_format=torch.channels_last)
    return out
