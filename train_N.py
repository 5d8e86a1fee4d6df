"""Learn the first domain (default NYU-v2) from ImageNet weights: writes runs/N.pth.tar.

The work is done by the shared engine (cli/train.py, engine/run.py); see `python train_N.py --help`.
"""
from cli import train

if __name__ == "__main__":
    train.main(default_order="N", description=__doc__.splitlines()[0])
