"""``python -m study`` = ``python3 study.py``."""
import sys

from cli.study import main

sys.exit(0 if main() else 1)
