"""The networks of a stage: the prior model checked against the order (``load_prior``), the student
with its new head (``build_model``, ``reinit_heads``), the frozen teacher and its targets
(``make_teacher``, ``teacher_targets``) and a fresh head's depth bias (``median_depth``,
``init_depth_bias``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from base.errors import InputError
from engine.options import STRATEGIES
from engine.processes import amp_settings
from models import CheckpointError, LifelongDepthNet, read_checkpoint
from models.checkpoint import check_finite, check_letters, checkpoint_meta, infer_encoder
from models.fast import inference_copy, lowp_supported, prepare_input


def prior_command(letters: str, strategy: str) -> str:
    script = {1: "train_N.py --order", 2: "train_NK.py --order"}.get(len(letters), "train_NKS.py --order")
    extra = "" if strategy == "ours" or len(letters) == 1 else f" --strategy {strategy}"
    return f"python {script} {letters}{extra}"


def load_prior(opts) -> tuple[LifelongDepthNet, dict]:
    """The previous stage's model, checked against the order."""
    old_letters = opts.order[:-1]
    if not Path(opts.prior).is_file():
        raise InputError(f"prior checkpoint {opts.prior} not found; make it with "
                         f"`{prior_command(old_letters, opts.strategy)}` (same --data-root/--scale)")
    state, meta = read_checkpoint(opts.prior)
    info = checkpoint_meta(meta)
    heads = len({k.split(".")[0] for k in state if k.startswith("task")})
    known = info.letters
    if known and info.domains:
        check_letters(known, list(info.domains), opts.prior)
    if not known:  # an authors' file: only the learning order on the command line names its heads
        if not opts.order_given:
            raise InputError(f"{opts.prior} has no metadata (an authors' checkpoint); name its "
                             f"domains with --order, e.g. --order {'NKS'[:heads]}{opts.order[-1]}")
        known = old_letters
    if heads != len(old_letters) or known != old_letters:
        raise InputError(f"{opts.prior} holds {heads} head(s) for domains {known!r}, but order "
                         f"{opts.order!r} needs the prior {old_letters!r}")
    net = LifelongDepthNet(encoder=info.encoder or infer_encoder(state), num_domains=heads)
    check_finite(state, opts.prior)
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {opts.prior!r} does not fit {net.encoder_name} with {heads} "
                              f"head(s): {str(err).splitlines()[0]}") from None
    return net, meta


def build_model(opts, ctx):
    """(student, teacher or None, index of the new head)."""
    if opts.strategy == "joint":
        heads = 1 if opts.shared_head else len(opts.order)
        net = LifelongDepthNet(encoder=opts.encoder, num_domains=heads, pretrained=opts.pretrained)
        return net.to(ctx.device), None, heads - 1
    if len(opts.order) == 1:
        net = LifelongDepthNet(encoder=opts.encoder, num_domains=1, pretrained=opts.pretrained)
        return net.to(ctx.device), None, 0
    net, _ = load_prior(opts)
    opts.encoder = net.encoder_name
    teacher = None
    if STRATEGIES[opts.strategy][0]:
        teacher = make_teacher(net, ctx.device, amp_settings(opts.precision, ctx.device)[0])
    new_head = net.add_domain()
    if opts.reinit_old_heads:
        reinit_heads(net, range(new_head))
    if opts.strategy == "finetune":  # old heads get no loss; freezing them keeps DDP free of unused grads
        for j in range(new_head):
            for p in net.heads[j].parameters():
                p.requires_grad_(False)
    return net.to(ctx.device), teacher, new_head


def reinit_heads(net: LifelongDepthNet, heads) -> None:
    """--reinit-old-heads: replace each of ``heads`` by a freshly initialised head, as upstream's
    ``model_ll(copy.deepcopy(old), num_tasks=n)`` (is_training=False) builds every head anew and
    keeps only E and MFF. The teacher (made before) keeps the old heads."""
    for j in heads:
        old = net.head(j)
        ref = next(old.parameters())
        fresh = type(old)(net.num_features).to(device=ref.device, dtype=ref.dtype)
        fresh.train(old.training)
        setattr(net, f"task{j}", fresh)


def make_teacher(prior: LifelongDepthNet, device, amp_dtype=None) -> LifelongDepthNet:
    """The frozen previous model that gives the distillation targets, as an inference copy.

    It only ever runs forward in eval mode, so it gets what the product's inference path gets
    (models/fast.py): BatchNorm folded into the convolutions and, on a CPU, NHWC layout with fused
    Conv+ReLU(+add) kernels; under mixed precision its weights are cast once to the autocast dtype
    (its output convolutions stay float32) instead of autocast converting them on every step. In
    float32 its outputs equal the plain frozen copy's to ~1e-6 relative (rounding of the fold).
    Where the device has no native kernels for the autocast dtype (bf16 on an AVX2-only CPU) the
    teacher stays float32: emulated bf16 convolutions measured slower than fused float32 ones
    (docs/BENCHMARKS.md#figures-that-were-in-the-codes-comments).
    """
    device = torch.device(device)
    on_cpu = device.type == "cpu"
    if amp_dtype is not None and not lowp_supported(amp_dtype, device):
        amp_dtype = None
    return inference_copy(prior, fuse_bn=True, channels_last=on_cpu, dtype=amp_dtype, device=device,
                          fused_kernels=on_cpu)


def teacher_targets(teacher, image: torch.Tensor, heads: int) -> list:
    """(depth, uncertainty) of the teacher's first ``heads`` heads on ``image``, float32, no graph."""
    weight = teacher.E.conv1.weight
    x = prepare_input(image, channels_last=weight.is_contiguous(memory_format=torch.channels_last),
                      dtype=weight.dtype)
    with torch.no_grad(), torch.autocast(image.device.type, enabled=False):
        feats = teacher.features(x)
        return [tuple(t.float() for t in teacher.head_forward(feats, j)) for j in range(heads)]


class NoGroundTruth(ValueError):
    """The first samples of a training set hold no valid depth at all."""


def median_depth(dataset, max_samples: int = 32) -> float:
    """Median valid ground-truth depth (metres) over the first samples of a dataset, untransformed."""
    values = []
    for i in range(min(max_samples, len(dataset))):
        depth = np.asarray(dataset.load(i)[1])
        values.append(depth[depth > 0])
    values = np.concatenate(values) if values else np.zeros(0)
    if values.size == 0:
        raise NoGroundTruth(f"no valid ground truth in the first {max_samples} samples of {dataset.csv_file}")
    return float(np.median(values))


@torch.no_grad()
def init_depth_bias(net: LifelongDepthNet, head: int, depth: float) -> None:
    """Start a fresh head's depth output near ``depth`` metres (its last conv's bias)."""
    net.heads[head].depth.conv2.bias.fill_(depth)
