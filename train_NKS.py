"""Learn a third (or later) domain on top of the previous stage (default order N -> K -> S): writes runs/NKS.pth.tar.

The work is done by the shared engine (cli/train.py, engine/run.py); see `python train_NKS.py --help`.
"""
from cli import train

if __name__ == "__main__":
    train.main(default_order="NKS", description=__doc__.splitlines()[0])
