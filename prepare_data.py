"""Index CSVs and replay buffers from a real dataset (NYU-v2, KITTI, ScanNet, custom) on disk.

The command lives in cli/prepare_data.py (`python prepare_data.py --help` explains every option).
"""
import sys

from cli.prepare_data import main

if __name__ == "__main__":
    sys.exit(main())
