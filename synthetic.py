"""Generate the synthetic N-, K- and S-like stand-in domains in the real datasets' formats.

The command lives in cli/synthetic.py (`python synthetic.py --help` explains every option).
"""
import sys

from cli.synthetic import main

if __name__ == "__main__":
    sys.exit(main())
