"""ResNet-18/34/50 encoders with torchvision's parameter names (no torchvision needed).

The released Lifelong-MonoDepth checkpoints store the encoder under ``E.*`` with exactly
torchvision's names (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer2.0.downsample.0`` ...),
so these classes reproduce that layout; the classifier (``avgpool``/``fc``) is left out.
"""
import os

import torch
from torch import nn

__all__ = ["BasicBlock", "Bottleneck", "ResNetEncoder", "ENCODERS", "build_encoder",
           "load_imagenet_weights"]


def _conv3x3(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut."""

    expansion = 1

    def __init__(self, cin, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided, torchvision v1.5 style) -> 1x1 with 4x channel expansion."""

    expansion = 4

    def __init__(self, cin, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNetEncoder(nn.Module):
    """ResNet trunk returning the outputs of layer1..layer4 (strides 4, 8, 16, 32)."""

    def __init__(self, block, layers):
        super().__init__()
        self._cin = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.block_channels = tuple(c * block.expansion for c in (64, 128, 256, 512))
        self.reset_parameters()

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self._cin != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self._cin, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion))
        modules = [block(self._cin, planes, stride, downsample)]
        self._cin = planes * block.expansion
        modules += [block(self._cin, planes) for _ in range(1, blocks)]
        return nn.Sequential(*modules)

    def reset_parameters(self):
        """torchvision's initialisation: He (fan_out) for convs, BN weight 1 and bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        b1 = self.layer1(x)
        b2 = self.layer2(b1)
        b3 = self.layer3(b2)
        b4 = self.layer4(b3)
        return b1, b2, b3, b4


# name -> (block type, blocks per layer), as in torchvision.
ENCODERS = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}


def build_encoder(name="resnet34", pretrained=None):
    """Build a ResNet encoder by name; ``pretrained`` is an optional path to ImageNet weights."""
    key = str(name).lower()
    if key not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; choose one of {sorted(ENCODERS)}")
    block, layers = ENCODERS[key]
    encoder = ResNetEncoder(block, layers)
    encoder.name = key
    if pretrained:
        load_imagenet_weights(encoder, pretrained)
    return encoder


def _preview(keys, n=5):
    keys = sorted(keys)
    more = f" ... (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_imagenet_weights(encoder, path):
    """Load a torchvision ImageNet state_dict file (e.g. ``resnet34-b627a593.pth``) into ``encoder``.

    Only the classifier keys (``fc.*``) are ignored; any other missing/unexpected key or shape
    mismatch raises ``ValueError`` naming the file, so a wrong depth (18 vs 34) is never
    silently half-loaded.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ImageNet weights {path!r}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors come in many types
        raise ValueError(f"ImageNet weights {path!r}: not a readable PyTorch file ({exc})") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"ImageNet weights {path!r}: expected a state_dict, got {type(state).__name__}")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = encoder.state_dict()
    # Pre-2018 torchvision files (resnet34-333f7ec4.pth) have no BN ``num_batches_tracked``
    # buffers; that counter carries no weights, so keep the encoder's own value.
    for k in own.keys() - state.keys():
        if k.endswith("num_batches_tracked"):
            state[k] = own[k]
    missing = own.keys() - state.keys()
    unexpected = state.keys() - own.keys()
    mismatched = [k for k in own.keys() & state.keys() if tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"ImageNet weights {path!r} do not fit encoder {getattr(encoder, 'name', '?')}: "
            f"{len(missing)} missing [{_preview(missing)}], "
            f"{len(unexpected)} unexpected [{_preview(unexpected)}], "
            f"{len(mismatched)} shape mismatches [{_preview(mismatched)}]")
    encoder.load_state_dict(state, strict=True)
    return encoder
