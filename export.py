"""Export a checkpoint as a single TorchScript or ONNX model for deployment.

The command lives in cli/export.py (`python export.py --help` explains every option).
"""
import sys

from cli.export import main

if __name__ == "__main__":
    sys.exit(main())
