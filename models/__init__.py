"""Network, encoders and checkpoints of Lifelong-MonoDepth (see docs/DESIGN.md)."""
from .checkpoint import CheckpointError, CheckpointMeta, checkpoint_meta, load_checkpoint, read_checkpoint, save_checkpoint
from .net import LifelongDepthNet, freeze, unfreeze
from .resnet import build_encoder, load_imagenet_weights

__all__ = ["LifelongDepthNet", "build_encoder", "load_imagenet_weights", "save_checkpoint",
           "load_checkpoint", "read_checkpoint", "CheckpointError", "CheckpointMeta", "checkpoint_meta",
           "freeze", "unfreeze"]
