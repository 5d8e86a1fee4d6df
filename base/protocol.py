"""The one place that maps ``--protocol ours|authors`` to the individual options.

``ours`` is this project's procedure; ``authors`` reproduces the released code (the upstream
``train_NK.py`` / ``train_NKS.py`` / ``test.py`` / ``test_inference.py``) including its quirks.
Every difference is also an option of its own; an option given on the command line always wins
over the protocol's value, so ``--protocol authors --drop-last`` is the authors' procedure with
only the last batch dropped. docs/PROTOCOL.md lists what each does and
what it changes.

Options and their values under each protocol (the key is the option's attribute name):
"""
from __future__ import annotations

PROTOCOLS = ("ours", "authors")

# dest: (ours, authors, what the authors' code does)
TRAINING = {
    "reinit_old_heads": (False, True, "the student of a later stage is model_ll(copy.deepcopy(old)) "
                                      "with is_training=False: every head re-initialised, only E and "
                                      "MFF copied"),
    "bn_all_heads": (False, True, "the whole network (every head) runs in train mode on every batch, "
                                  "so every head's BatchNorm statistics move on every batch"),
    "replay_exhaust": ("cycle", "authors", "replay stops for the rest of the epoch once a replay "
                                           "loader is exhausted, and every distillation weight drops "
                                           "to the first domain's (10)"),
    "drop_last": (True, False, "partial last batches (DataLoader default)"),
    "init_depth_bias": ("auto", "off", "fresh heads start from PyTorch's default initialisation"),
}
DATA = {
    "scannet_resize": ("twice", "once", "ScanNet colour resized once, straight to 320x240"),
    "nyu_rotation": ("bilinear", "spline", "NYU images rotated with scipy.ndimage.rotate(order=2)"),
}
EVALUATION = {
    "full_frame": ("none", "kitti", "KITTI evaluated on whole 1216x352 frames; NYU and ScanNet on "
                                    "their 304x228 centre crops, as upstream's test loaders feed them"),
    "scannet_resize_eval": ("twice", "once", "ScanNet colour resized once (test loader)"),
    "crop": ("default", "none", "no Eigen/Garg crop"),
    "cap": (True, False, "no depth cap"),
    "aggregate": ("image", "pixel", "every valid pixel weighted equally"),
    "rmse": ("pooled", "weighted", "RMSE of each image weighted by its valid-pixel count"),
    "pred_clamp": (True, False, "predictions not clamped (a negative one passes every delta test)"),
    "delta": ("lt", "le", "delta test max(p/g, g/p) <= 1.25^k"),
    "exact": (False, True, "the plain float32 forward (no BN folding, no bf16)"),
}
SELECTION = {
    "selector": (None, "authors", "mean fused feature map of 500 training-augmented replay images, "
                                  "summed and divided by 499; mean squared difference to each "
                                  "prototype resized to the query"),
}
ALL = {**TRAINING, **DATA, **EVALUATION, **SELECTION}

__doc__ += "\n".join(f"- ``{k}``: ours {v[0]!r}, authors {v[1]!r} ({v[2]})" for k, v in ALL.items())


def resolve(args, keys, protocol: str | None = None):
    """Fill every option of ``keys`` of ``args`` (parsed options or a settings dataclass) left at
    None (not given) with the value of ``protocol`` (default: ``args.protocol``). ``scannet_resize_eval`` fills ``args.scannet_resize``."""
    protocol = protocol or getattr(args, "protocol", None) or "ours"
    column = PROTOCOLS.index(protocol)
    for key in keys:
        dest = "scannet_resize" if key == "scannet_resize_eval" else key
        if getattr(args, dest, None) is None:
            setattr(args, dest, ALL[key][column])
    return args


def value(protocol: str, key: str):
    """The value of option ``key`` under ``protocol``."""
    return ALL[key][PROTOCOLS.index(protocol)]
