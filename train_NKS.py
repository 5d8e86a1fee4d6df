"""Learn a third (or later) domain on top of the previous stage (default order N -> K -> S): writes runs/NKS.pth.tar.

The work is done by engine/lifelong.py, the shared engine; see `python train_NKS.py --help`.
"""
from engine import lifelong

if __name__ == "__main__":
    lifelong.main(default_order="NKS", description=__doc__.splitlines()[0])
