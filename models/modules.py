"""Decoder pieces of Lifelong-MonoDepth: multi-scale feature fusion (MFF) and per-domain heads.

Submodule names and ``nn.Sequential`` indices follow the authors' released state_dict
(``MFF.att1.1.weight``, ``MFF.up1.conv1.weight``, ``task0.depth.bn0.running_mean`` ...).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["channel_attention", "UpProjection", "MFF", "Branch", "Head", "Windows", "tile_starts",
           "tent", "ANCHORS"]

ANCHORS = ("center", "bottom")  # where a head's training crops lay in its frames (KITTI: bottom)


def tile_starts(length: int, tile: int) -> list:
    """Evenly spread starts of tiles of ``tile`` covering ``length`` (each overlap at least 1/4 tile)."""
    if length <= tile:
        return [0]
    n = math.ceil((length - tile) / (0.75 * tile)) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def tent(n: int) -> torch.Tensor:
    """Blending weights along one tile side: highest in the middle, small but positive at the edges."""
    i = torch.arange(n, dtype=torch.float32)
    return torch.minimum(i + 1, n - i) / ((n + 1) / 2)


class Windows:
    """Where the channel attention pools (an inference option of :class:`MFF`; weights unchanged).

    The attention of the trained network pools over its whole input, which in training was a crop
    of ``size`` = (h, w) input pixels. On a larger input, ``Windows(size)`` pools each block's
    attention over windows of that extent laid like tiles (``tile_starts``), and every position takes
    the blend of the gates of the windows covering it (``tent`` weights), so the head sees the
    attention of the extent it learned while the convolutions run once over the whole input.
    ``anchor="bottom"`` (a head whose training crops kept the bottom of the frame, KITTI): the
    rows are pooled over the bottom window only and every row takes its gate. An input no larger
    than ``size`` is one window: the global pooling of the trained network, exactly."""

    def __init__(self, size, anchor: str = "center"):
        if anchor not in ANCHORS:
            raise ValueError(f"unknown anchor {anchor!r}; choose one of {ANCHORS}")
        self.size = (int(size[0]), int(size[1]))
        self.anchor = anchor

    def __repr__(self):
        return f"Windows(size={self.size}, anchor={self.anchor!r})"

    def covers(self, h: int, w: int) -> bool:
        """True when an h x w input is one window (global pooling)."""
        return h <= self.size[0] and w <= self.size[1]

    @staticmethod
    def _axis(length, full, window, anchor):
        """(starts, ends) in block cells and the (n, length) normalised blend weights of one axis of
        a block ``length`` cells long standing for ``full`` input pixels with windows of ``window``."""
        if window >= full:
            return [(0, length)], torch.ones(1, length)
        starts = [full - window] if anchor == "bottom" else tile_starts(full, window)
        boxes, weights = [], []
        for s in starts:
            a = min(length - 1, int(math.floor(s * length / full)))
            b = max(a + 1, min(length, int(math.ceil((s + window) * length / full))))
            boxes.append((a, b))
            w = torch.zeros(length)
            if anchor == "bottom":
                w[:] = 1.0  # every row takes the bottom window's gate
            else:
                w[a:b] = tent(b - a)
            weights.append(w)
        weights = torch.stack(weights)
        return boxes, weights / weights.sum(0, keepdim=True)

    def gate(self, att: nn.Sequential, block: torch.Tensor, input_hw) -> torch.Tensor:
        """The (B, C, h, w) attention gate of ``block`` (B, C, h, w) with pooling over the windows
        (``att``: a :func:`channel_attention`, its pooling at index 0)."""
        H, W = input_hw
        h, w = block.shape[-2:]
        rows, wr = self._axis(h, H, self.size[0], self.anchor)
        cols, wc = self._axis(w, W, self.size[1], "center")
        pooled = torch.stack([torch.stack([block[:, :, a:b, c:d].float().mean(dim=(2, 3)) for c, d in cols], 1)
                              for a, b in rows], 1)                      # (B, nr, nc, C)
        nr, nc = len(rows), len(cols)
        B, C = block.shape[:2]
        g = att[1:](pooled.reshape(B * nr * nc, C, 1, 1).to(block.dtype)).float()
        g = g.reshape(B, nr, nc, C)
        gate = torch.einsum("iy,jx,bijc->bcyx", wr.to(g.device), wc.to(g.device), g)
        return gate.to(block.dtype).contiguous(memory_format=torch.channels_last
                                               if block.is_contiguous(memory_format=torch.channels_last)
                                               and not block.is_contiguous() else torch.contiguous_format)


def channel_attention(channels, reduction=16):
    """Squeeze-and-excitation gate; the two 1x1 convs sit at Sequential indices 1 and 3."""
    hidden = max(channels // reduction, 1)
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(1),
        nn.Conv2d(channels, hidden, 1, bias=False),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, channels, 1, bias=False),
        nn.Sigmoid(),
    )


class UpProjection(nn.Module):
    """ReLU(BN(conv5x5(x))) followed by bilinear upsampling (align_corners=True) to ``size``."""

    def __init__(self, in_channels, out_channels=16):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 5, padding=2, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x, size):
        x = self.relu(self.bn1(self.conv1(x)))
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class MFF(nn.Module):
    """Fuse the four encoder blocks into ``num_features`` channels at twice block 1's size.

    Each block is re-weighted by its channel attention, projected to ``num_features // 4``
    channels and upsampled; the concatenation goes through ReLU(BN(conv5x5)).
    """

    def __init__(self, block_channels, num_features=64, reduction=16):
        super().__init__()
        if len(block_channels) != 4 or num_features % 4:
            raise ValueError("MFF needs four block widths and num_features divisible by 4")
        per_block = num_features // 4
        # Registration order (att*, up*, conv, bn) reproduces the upstream key order.
        for k, c in enumerate(block_channels, 1):
            setattr(self, f"att{k}", channel_attention(c, reduction))
        for k, c in enumerate(block_channels, 1):
            setattr(self, f"up{k}", UpProjection(c, per_block))
        self.conv = nn.Conv2d(num_features, num_features, 5, padding=2, bias=False)
        self.bn = nn.BatchNorm2d(num_features)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, blocks, windows: "Windows | None" = None, input_hw=None):
        """``windows`` (inference only): pool the channel attention over windows of the training
        extent (:class:`Windows`) of an input of ``input_hw`` (default: 4x block 1's size) instead
        of over the whole input (None: the trained network's rule)."""
        b1 = blocks[0]
        size = (2 * b1.shape[-2], 2 * b1.shape[-1])  # half the input resolution
        if windows is not None:
            input_hw = tuple(input_hw) if input_hw is not None else (4 * b1.shape[-2], 4 * b1.shape[-1])
            if windows.covers(*input_hw):
                windows = None
        ups = []
        for k, b in enumerate(blocks, 1):
            att = getattr(self, f"att{k}")
            gate = att(b) if windows is None else windows.gate(att, b, input_hw)
            ups.append(getattr(self, f"up{k}")(b * gate, size))
        return self.relu(self.bn(self.conv(torch.cat(ups, dim=1))))


class Branch(nn.Module):
    """conv5x5 (no bias) -> BN -> ReLU -> conv5x5 to one channel (with bias)."""

    def __init__(self, num_features=64):
        super().__init__()
        self.conv0 = nn.Conv2d(num_features, num_features, 5, padding=2, bias=False)
        self.bn0 = nn.BatchNorm2d(num_features)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(num_features, 1, 5, padding=2, bias=True)

    def forward(self, x):
        return self.conv2(self.relu(self.bn0(self.conv0(x))))


class Head(nn.Module):
    """One domain's head: a depth branch (metres) and an uncertainty branch (log-variance)."""

    def __init__(self, num_features=64):
        super().__init__()
        self.depth = Branch(num_features)
        self.uncertainty = Branch(num_features)

    def forward(self, feats, with_uncertainty=True):
        """Return ``(depth, uncertainty)``; uncertainty is ``None`` (not computed) if disabled."""
        depth = self.depth(feats)
        return depth, (self.uncertainty(feats) if with_uncertainty else None)
