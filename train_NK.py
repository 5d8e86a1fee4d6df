"""Learn a second domain on top of the first (default order N -> K): writes runs/NK.pth.tar.

The work is done by engine/lifelong.py, the shared engine; see `python train_NK.py --help`.
"""
from engine import lifelong

if __name__ == "__main__":
    lifelong.main(default_order="NK", description=__doc__.splitlines()[0])
