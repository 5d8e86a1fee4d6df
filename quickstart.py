"""The main job on a fresh clone: synthetic data -> lifelong N -> K -> S on the CPU -> evaluation -> report.

The command lives in cli/quickstart.py (`python quickstart.py --help` explains every option).
"""
from cli.quickstart import main

if __name__ == "__main__":
    main()
