"""LifelongDepthNet: shared encoder ``E`` + fusion ``MFF`` + one head ``task{i}`` per domain."""
import operator

from torch import nn

from .modules import MFF, Head
from .resnet import build_encoder

__all__ = ["LifelongDepthNet", "freeze", "unfreeze"]


def freeze(module):
    """Stop gradients for every parameter of ``module`` (BN statistics: call ``.eval()`` too)."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def unfreeze(module):
    """Re-enable gradients for every parameter of ``module``."""
    for p in module.parameters():
        p.requires_grad_(True)
    return module


class LifelongDepthNet(nn.Module):
    """Multi-head monocular depth network; heads are in learning order (``task0`` first).

    Outputs are at half the input resolution: depth in metres and uncertainty (log-variance).
    ``meta`` is a plain dict (domains, ...) filled by ``load_checkpoint``; it is not part of
    the state_dict.
    """

    def __init__(self, encoder="resnet34", num_domains=1, pretrained=None, num_features=64):
        super().__init__()
        self.E = build_encoder(encoder, pretrained)
        self.MFF = MFF(self.E.block_channels, num_features)
        self.encoder_name = self.E.name
        self.num_features = num_features
        self.meta = {}
        for _ in range(num_domains):
            self.add_domain()

    # ----- heads -------------------------------------------------------------------------
    @property
    def num_domains(self):
        n = 0
        while f"task{n}" in self._modules:
            n += 1
        return n

    @property
    def heads(self):
        return [self._modules[f"task{i}"] for i in range(self.num_domains)]

    def head(self, i):
        """Head module of domain ``i``; IndexError with the valid range otherwise."""
        return self._modules[f"task{self._check_domain(i)}"]

    def add_domain(self):
        """Append a fresh head ``task{D}`` (same device/dtype/mode as the trunk); return D."""
        index = self.num_domains
        ref = self.MFF.conv.weight
        head = Head(self.num_features).to(device=ref.device, dtype=ref.dtype)
        head.train(self.training)
        self.add_module(f"task{index}", head)
        return index

    def _check_domain(self, i):
        try:
            i = operator.index(i)
        except TypeError:
            raise TypeError(f"domain must be an int head index, got {type(i).__name__}") from None
        n = self.num_domains
        # Negative indices are refused: a domain index names a head, it is not a list position.
        if not 0 <= i < n:
            raise IndexError(f"domain index {i} out of range: this network has {n} head(s), "
                             f"valid indices are 0..{n - 1}")
        return i

    # ----- forward -----------------------------------------------------------------------
    def features(self, x, windows=None):
        """Fused MFF features (B, num_features, H/2, W/2) shared by all heads. ``windows``
        (inference only, ``modules.Windows``): the channel attention pooled over windows of the
        training extent instead of the whole input."""
        if windows is None:
            return self.MFF(self.E(x))
        return self.MFF(self.E(x), windows, tuple(x.shape[-2:]))

    def head_forward(self, feats, i, with_uncertainty=True):
        """Run head ``i`` on precomputed features: ``(depth, uncertainty or None)``."""
        return self.head(i)(feats, with_uncertainty)

    def forward(self, x, domain=None, with_uncertainty=True):
        """All heads as a list of ``(depth, unc)`` if ``domain`` is None, else head ``domain`` only."""
        if domain is not None:
            domain = self._check_domain(domain)  # fail before spending the trunk
            return self.head_forward(self.features(x), domain, with_uncertainty)
        feats = self.features(x)
        return [head(feats, with_uncertainty) for head in self.heads]

    # ----- freezing ----------------------------------------------------------------------
    def trunk(self):
        """The shared part (encoder and fusion) as a list of modules."""
        return [self.E, self.MFF]

    def freeze_trunk(self):
        for m in self.trunk():
            freeze(m)
        return self

    def unfreeze_trunk(self):
        for m in self.trunk():
            unfreeze(m)
        return self

    def extra_repr(self):
        return f"encoder={self.encoder_name}, num_domains={self.num_domains}"
