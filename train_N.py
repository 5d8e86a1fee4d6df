"""Learn the first domain (default NYU-v2) from ImageNet weights: writes runs/N.pth.tar.

The work is done by engine/lifelong.py, the shared engine; see `python train_N.py --help`.
"""
from engine import lifelong

if __name__ == "__main__":
    lifelong.main(default_order="N", description=__doc__.splitlines()[0])
