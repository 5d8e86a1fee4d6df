#!/usr/bin/env python3
"""The lifelong study behind docs/RESULTS.md (the command lives in cli/study.py, the logic in the ``study`` package).

    python3 study.py                  # the full study: 3 orders x arms x 3 seeds (wall time: docs/RESULTS.md)
    python3 study.py --quick          # its subset (order NKS, ours and finetune)
    python3 study.py --report-only    # rebuild docs/RESULTS.md from the runs on disk
    python3 study.py --preset cuda    # the paper's input size and schedule on a GPU

Everything already on disk is reused; an interrupted study resumes with the same command.
"""
import sys

from cli.study import main

if __name__ == "__main__":
    sys.exit(0 if main() else 1)
