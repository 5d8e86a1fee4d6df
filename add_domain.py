"""Learn a new domain from your own RGB-D recording on top of a trained model, in one command.

The command lives in cli/add_domain.py (`python add_domain.py --help` explains every option).
"""
import sys

from cli.add_domain import main

if __name__ == "__main__":
    sys.exit(main())
