"""Decoder pieces of Lifelong-MonoDepth: multi-scale feature fusion (MFF) and per-domain heads.

Submodule names and ``nn.Sequential`` indices follow the authors' released state_dict
(``MFF.att1.1.weight``, ``MFF.up1.conv1.weight``, ``task0.depth.bn0.running_mean`` ...).
"""
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["channel_attention", "UpProjection", "MFF", "Branch", "Head"]


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

    def forward(self, blocks):
        b1 = blocks[0]
        size = (2 * b1.shape[-2], 2 * b1.shape[-1])  # half the input resolution
        ups = []
        for k, b in enumerate(blocks, 1):
            gate = getattr(self, f"att{k}")(b)
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
