"""Who runs a stage and how: the device and the processes under torchrun (``Dist``), the stop signals
(``StopSignals``, ``StageInterrupted``), seeds and mixed precision (``amp_settings``)."""
from __future__ import annotations

import os
import random
import signal
import threading
from contextlib import contextmanager

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from base.errors import InputError
from models.fast import lowp_supported
from models.hardware import training_channels_last, training_precision


def resolve_device(arg: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without CUDA is an InputError."""
    if arg == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda, but CUDA is not available on this machine (use --device cpu or auto)")
    if arg == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(arg)


class Dist:
    """Who this process is: rank, world size and device (torchrun sets RANK/WORLD_SIZE/LOCAL_RANK)."""

    def __init__(self, device_arg: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = resolve_device(device_arg).type == "cuda"
        if use_cuda:
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
        else:
            self.device = torch.device("cpu")
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.world > 1:
            dist.barrier()

    def close(self):
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


class StageInterrupted(KeyboardInterrupt):
    """A stage stopped by SIGINT or SIGTERM after saving its resume state; ``signum`` is the signal
    (a command exits with 128 + signum: 130, 143)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = int(signum)


class StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM (what schedulers and `timeout` send) during training.

    The first signal asks the loop to stop after the step in progress; that step completes and its
    state is saved, so a resumed run repeats exactly what the uninterrupted one would do. A second
    signal stops at once (KeyboardInterrupt) unless the optimiser step is running (``shield``): the
    step in progress is then rolled back (Stage.rollback_step) before the state is saved.
    """

    def __init__(self):
        self.signum, self.shielded, self.previous = None, False, {}
        self.pid = os.getpid()

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}
        return False

    def _handle(self, signum, frame):
        if os.getpid() != self.pid:  # a forked data-loader worker: the main process decides
            return
        first = self.signum is None
        self.signum = self.signum or signum
        if first:
            tqdm.write(f"{signal.Signals(signum).name}: stopping after the step in progress "
                       f"(send it again to stop at once)")
        elif not self.shielded:
            raise KeyboardInterrupt

    @contextmanager
    def shield(self):
        self.shielded = True
        try:
            yield
        finally:
            self.shielded = False

    def requested(self, ctx) -> bool:
        """Whether to stop now; every process agrees (a signal may reach only some of them)."""
        flag = self.signum is not None
        if ctx.world > 1:
            t = torch.tensor([float(flag)], device=ctx.device)
            dist.all_reduce(t)
            flag = t.item() > 0
            if flag and self.signum is None:
                self.signum = signal.SIGTERM
        return flag


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def amp_settings(arg: str, device: torch.device):
    """(autocast dtype or None, whether a GradScaler is needed) of a training ``--precision``
    (``fp32``: no autocast; ``off``, --amp's spelling of fp32, is accepted too).

    ``auto``: bfloat16 on CUDA GPUs with bf16 (float16 with loss scaling on older ones); on a CPU
    what ``models.hardware.training_precision`` says for its kind (float32 on every kind today).
    bf16 on a CPU with native kernels (``--precision bf16``) makes a training step faster, but in
    the quickstart bf16-trained models selected their head from prototypes less reliably at equal
    depth accuracy, so it stays opt-in on CPUs (measured figures of both: bench/README.md, "Why
    bf16 is not the CPU default").
    """
    if arg == "auto" and device.type != "cuda":
        arg = "bf16" if training_precision() == "bf16" else "fp32"
    if arg in ("fp32", "off"):
        return None, False
    if arg == "fp16":
        return torch.float16, device.type == "cuda"
    if arg == "bf16" or torch.cuda.is_bf16_supported():  # bf16, or auto on a CUDA GPU with bf16
        return torch.bfloat16, False
    return torch.float16, True  # auto on a CUDA GPU without bf16


def channels_last_setting(arg: str, device: torch.device) -> bool:
    """Whether the student trains in NHWC (channels_last) layout: ``on``/``off``; ``auto`` on a CPU
    what ``models.hardware.training_channels_last`` says for its kind, NCHW on CUDA (as before)."""
    if arg == "auto":
        return device.type == "cpu" and training_channels_last()
    return arg == "on"


def amp_warning(arg: str, device: torch.device) -> str | None:
    """The line to print at the start of a stage whose autocast the CPU only emulates, else None:
    bf16 without native bf16 (models.hardware's probe) runs, but slower than float32."""
    dtype = amp_settings(arg, device)[0]
    if device.type == "cpu" and dtype == torch.bfloat16 and not lowp_supported(dtype, device):
        return ("warning: --precision bf16: this CPU has no native bf16 (AVX512-BF16 or AMX), so bf16 "
                "autocast is emulated and slower than float32 (--precision fp32)")
    return None
