"""Learn a second domain on top of the first (default order N -> K): writes runs/NK.pth.tar.

The work is done by the shared engine (cli/train.py, engine/run.py); see `python train_NK.py --help`.
"""
from cli import train

if __name__ == "__main__":
    train.main(default_order="NK", description=__doc__.splitlines()[0])
