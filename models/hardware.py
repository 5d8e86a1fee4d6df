"""What this machine's CPU (or GPU) can run, asked of the libraries that run it: the one place where
the precision and kernel choices of the inference path, the training engine's teacher and the
benchmarks are decided.

Two questions are kept apart, because they differ on real machines:

* :func:`bf16_kernels`: does oneDNN *accept* bfloat16 convolutions with pre-packed weights (what
  ``models.fast.FusedConv2d`` uses)? oneDNN needs AVX512BW/VL/DQ or AVX-NE-CONVERT for that; on an
  AVX2-only CPU (e.g. AMD Zen 3) it raises ``mkldnn_reorder_conv2d_weight: bf16 path needs the cpu
  support avx_ne_convert or avx512bw, avx512vl and avx512dq``. Answered by a probe: a tiny bf16
  weight pre-pack, so that every limit the library applies counts (the CPU, and the
  ``ONEDNN_MAX_CPU_ISA`` environment variable, which emulates an older CPU's oneDNN path).
* :func:`bf16_native`: is bfloat16 *fast* here, i.e. computed by bf16 dot-product instructions
  (AVX512-BF16 or AMX-BF16) rather than emulated through float32 (AVX-512 CPUs without BF16, such
  as Skylake-SP, accept bf16 but run it slower than float32)? Only then does ``precision="auto"``
  pick it on a CPU.

Everything is computed once per process and cached.
"""
from __future__ import annotations

import functools
import os
import platform

import torch

__all__ = ["cpu_model", "cpu_flags", "bf16_kernels", "bf16_native", "amx_bf16", "avx512", "fp16_native",
           "lowp_supported", "lowp_kernels", "capabilities", "capability_line", "cpu_kind", "ISA_LIMIT_VARS",
           "TRAINING_PRECISION", "training_precision", "TRAINING_CHANNELS_LAST", "training_channels_last"]

# oneDNN's (and its older name's) limit on the instruction set it dispatches to
ISA_LIMIT_VARS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


@functools.lru_cache(maxsize=None)
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset:
    """The CPU's feature flags as the kernel reports them (empty where there is no /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _torch_cpu_query(name: str) -> bool:
    fn = getattr(torch.cpu, name, None)
    try:
        return bool(fn()) if fn is not None else False
    except Exception:  # informative queries only
        return False


def _has(flag: str, torch_query: str | None = None) -> bool:
    flags = cpu_flags()
    if flags:
        return flag in flags
    return _torch_cpu_query(torch_query) if torch_query else False


@functools.lru_cache(maxsize=None)
def bf16_kernels() -> bool:
    """Whether oneDNN runs bfloat16 convolutions with pre-packed weights on this CPU (a probe)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
        w = torch.zeros(8, 8, 3, 3, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
        torch.ops.mkldnn._reorder_convolution_weight(w, [1, 1], [1, 1], [1, 1], 1, [1, 8, 8, 8])
        return True
    except Exception:  # a probe: whatever the library raises means "not here"
        return False


def bf16_native() -> bool:
    """Whether bfloat16 convolutions are native (AVX512-BF16 or AMX-BF16) *and* oneDNN runs them."""
    isa = _has("avx512_bf16", "_is_avx512_bf16_supported") or _has("amx_bf16", "_is_amx_tile_supported")
    return isa and bf16_kernels()


def amx_bf16() -> bool:
    """Whether the CPU has AMX tiles with bf16 (Sapphire Rapids and later Xeons): there bf16 matrix
    products run on the tile units, which the runtimes' fused graphs keep busier than PyTorch's
    per-op calls do (``models.runtimes.choose_backend``)."""
    return _has("amx_bf16", "_is_amx_tile_supported") and _has("amx_tile", "_is_amx_tile_supported")


def avx512() -> bool:
    """Whether the CPU has AVX-512 (foundation)."""
    return _has("avx512f", "_is_avx512_supported")


def cpu_kind() -> str:
    """The CPU class the speed decisions tell apart: ``"amx"`` (AMX-BF16 and native bf16),
    ``"avx512_bf16"`` (native bf16 without AMX, e.g. AMD Zen 4), ``"avx512"`` (AVX-512 without
    native bf16, e.g. Skylake-SP), ``"avx2"`` (e.g. AMD Zen 3) or ``"other"``."""
    if bf16_native():
        return "amx" if amx_bf16() else "avx512_bf16"
    if avx512():
        return "avx512"
    return "avx2" if _has("avx2", "_is_avx2_supported") else "other"


# The training precision that ``--precision auto`` picks on each CPU kind (engine.processes.amp_settings).
# bf16 autocast trains faster than float32 where bf16 is native (AMX, AVX512-BF16), but a kind is switched
# only where a seed table shows the same model quality (bench/bench_seeds.py: mean over >= 3 seeds no
# worse than float32's seed spread on every figure, head selection >= 99 % on every seed). The table
# (docs/BENCHMARKS.md, "The seed table") found bf16's N RMSE worse than every float32 seed's, so every
# kind stays float32; a kind is switched here, in one place.
TRAINING_PRECISION = {"amx": "fp32", "avx512_bf16": "fp32", "avx512": "fp32", "avx2": "fp32", "other": "fp32"}


# Whether ``--channels-last auto`` trains in NHWC layout on each CPU kind (engine.stage.Stage): the
# same arithmetic in another memory layout, for which oneDNN has faster convolution kernels.
TRAINING_CHANNELS_LAST = {"amx": False, "avx512_bf16": False, "avx512": False, "avx2": False, "other": False}


def training_channels_last(kind: str | None = None) -> bool:
    """What ``--channels-last auto`` picks for training on a CPU of ``kind`` (default: this one)."""
    return bool(TRAINING_CHANNELS_LAST.get(kind or cpu_kind(), False))


def training_precision(kind: str | None = None) -> str:
    """``"fp32"`` or ``"bf16"``: what ``--precision auto`` trains in on a CPU of ``kind`` (default: this
    one, :func:`cpu_kind`). bf16 only where the table says so *and* bf16 is native here, so that a
    forced or mis-detected kind never gets emulated (slower) bf16."""
    kind = kind or cpu_kind()
    choice = TRAINING_PRECISION.get(kind, "fp32")
    return "bf16" if choice == "bf16" and bf16_native() else "fp32"


@functools.lru_cache(maxsize=None)
def fp16_native() -> bool:
    """Whether oneDNN has native float16 convolutions (AMX-FP16/AVX512-FP16 CPUs)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):
        return False


def lowp_supported(dtype: torch.dtype, device) -> bool:
    """Whether ``device`` has native (fast) kernels for ``dtype`` convolutions."""
    device = torch.device(device)
    if dtype == torch.float32:
        return True
    if device.type == "cuda":
        return dtype == torch.float16 or torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        if dtype == torch.bfloat16:
            return bf16_native()
        if dtype == torch.float16:
            return fp16_native()
    return False


def lowp_kernels(dtype: torch.dtype) -> bool:
    """Whether oneDNN's pre-packed (fused) CPU convolutions accept ``dtype`` here."""
    if dtype == torch.float32:
        return torch.backends.mkldnn.is_available()
    if dtype == torch.bfloat16:
        return bf16_kernels()
    return False  # FusedConv2d never pre-packs float16


def capabilities(device="cpu") -> dict:
    """Everything the decisions above rest on, for benchmark titles, reports and bug reports."""
    device = torch.device(device)
    limit = {k: os.environ[k] for k in ISA_LIMIT_VARS + ("ATEN_CPU_CAPABILITY",) if os.environ.get(k)}
    info = {"cpu": cpu_model(), "machine": platform.machine(),
            "avx2": _has("avx2", "_is_avx2_supported"), "fma": _has("fma"),
            "avx512": _has("avx512f", "_is_avx512_supported"),
            "avx512_bf16": _has("avx512_bf16", "_is_avx512_bf16_supported"),
            "amx": _has("amx_tile", "_is_amx_tile_supported"),
            "aten_isa": torch.backends.cpu.get_cpu_capability(),
            "onednn_bf16_kernels": bf16_kernels(), "bf16_native": bf16_native(),
            "fp16_native": fp16_native(), "isa_limits": limit}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda_bf16"] = torch.cuda.is_bf16_supported()
    return info


def capability_line(device="cpu") -> str:
    """One line for a table title: the CPU model and what it runs natively."""
    c = capabilities(device)
    yes = lambda b: "yes" if b else "no"  # noqa: E731
    bf16 = ("native" if c["bf16_native"] else "emulated by oneDNN" if c["onednn_bf16_kernels"]
            else "no oneDNN kernels")
    line = (f"{c['cpu']} (AVX2 {yes(c['avx2'])}, AVX-512 {yes(c['avx512'])}, AVX512-BF16 "
            f"{yes(c['avx512_bf16'])}, AMX {yes(c['amx'])}; ATen {c['aten_isa']}, bf16 {bf16})")
    if c["isa_limits"]:
        line += " limited by " + ", ".join(f"{k}={v}" for k, v in c["isa_limits"].items())
    if "gpu" in c:
        line += f"; GPU {c['gpu']}"
    return line
