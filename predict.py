"""Metric depth for any image, folder of images or video with a Lifelong-MonoDepth checkpoint.

The command lives in cli/predict.py (`python predict.py --help` explains every option).
"""
import sys

from cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
