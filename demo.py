"""A web page (Gradio) to try a Lifelong-MonoDepth checkpoint on your own images.

The command lives in cli/demo.py (`python demo.py --help` explains every option).
"""
import sys

from cli.demo import main

if __name__ == "__main__":
    sys.exit(main())
