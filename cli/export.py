"""export.py: a checkpoint as one self-contained TorchScript or ONNX file (inference/export.py has
the export itself, and what the file holds and how to run it).

    python export.py --checkpoint runs/NKS.pth.tar --out runs/NKS.ts                 # automatic domain
    python export.py --checkpoint runs/NKS.pth.tar --out runs/NKS_K.onnx --format onnx --domain K

An --out it must not replace, or a bad --size, is one ``error:`` line (exit status 1); a checkpoint
or a setting the export refuses is an ``error:`` line and exit status 2; a written file that does
not match the eager model (the check) exit status 1.
"""
import argparse
import os
import sys

from cli.errors import run_command
from cli.options import add_checkpoint_arguments, parse_size
from base.safeio import WriteError
from inference.export import FORMATS, ONNX_TOLERANCE, check_out, export_net, verify_export
from models import CheckpointError, load_checkpoint


def build_parser():
    p = argparse.ArgumentParser(description="Export a checkpoint as a single TorchScript or ONNX "
                                            "file (image -> depth, domain[, uncertainty]): the network "
                                            "only, not predict.py's frame pipeline (no head choice on "
                                            "whole frames, no resampling to the head's camera, no "
                                            "fitted pass at the head's training geometry); the file's metadata carries each head's camera "
                                            "and the uncertainty calibration to reproduce them.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_checkpoint_arguments(p, "project or authors' checkpoint (.pth.tar)",
                             "learning order of an authors' file (its name, e.g. NKS), naming its heads",
                             default=None)
    p.add_argument("--out", required=True, help="output file, e.g. runs/NKS.ts or runs/NKS.onnx")
    p.add_argument("--format", choices=list(FORMATS), default="torchscript",
                   help="TorchScript (needs only torch) or float32 ONNX (for ONNX Runtime, OpenVINO...; "
                        "without --domain every head is computed)")
    p.add_argument("--domain", default=None,
                   help="fix the head: an index (0 = first learned) or a learned domain's letter/name; "
                        "default: automatic selection with the stored prototypes")
    p.add_argument("--uncertainty", action="store_true", help="also return the uncertainty (log-variance)")
    p.add_argument("--selector", choices=["pooled", "map"], default="pooled",
                   help="prototype form used for automatic selection")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16", "auto"], default="fp32",
                   help="weights/activations in the file (auto: bf16 where this machine has native bf16, fp16 on a "
                        "CUDA GPU without bf16, else fp32); "
                        "--format onnx is float32 only")
    p.add_argument("--no-fuse", action="store_true", help="keep BatchNorm layers (no Conv+BN folding)")
    p.add_argument("--size", default=None, help="example input HxW for tracing (default: the first "
                                                "domain's input size); any size works at run time")
    p.add_argument("--no-check", action="store_true",
                   help="skip the comparison of the written file with the eager model")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out file (never the --checkpoint itself); without it "
                        "an existing file stops the export with an error")
    return p


def is_onnx(exported) -> bool:
    return exported["format"] == "lifelong-monodepth-onnx"


def written_line(out, exported) -> str:
    """What was written: the file's size, its domains, how it chooses one, its outputs."""
    megabytes = os.path.getsize(out) / 1e6
    domains = f"{len(exported['domains'])} domain(s) {exported['domains']}"
    if exported["domain"] is not None:
        what = f"fixed head {exported['domain']} ({exported['domains'][exported['domain']]})"
    elif is_onnx(exported):
        what = "automatic selection (pooled prototypes; every head computed)"
    else:
        what = f"automatic selection ({exported['selection']} prototypes)"
    scope = ("\nnote: the network only, not predict.py's frame pipeline (head choice on whole frames, "
             "resampling to each head's camera, the fitted pass at the head's training geometry); the metadata's cameras and calibration_scales "
             "say how to reproduce its metres and intervals")
    if is_onnx(exported):
        return f"wrote {out} ({megabytes:.1f} MB, ONNX float32): {domains}, {what}, outputs {exported['outputs']}{scope}"
    return (f"wrote {out} ({megabytes:.1f} MB): {domains}, {what}, outputs {exported['outputs']}, "
            f"{exported['precision']}{scope}")


def check_line(res, exported) -> str:
    """The result of inference.export.verify_export on one line."""
    verdict = f"same domains: {res['same_domains']} -> {'OK' if res['ok'] else 'MISMATCH'}"
    if is_onnx(exported):
        return (f"check in ONNX Runtime vs DepthPredictor(fast=False): relative RMS of depth "
                f"{res['rel_rms_depth']:.2e} (tolerance {ONNX_TOLERANCE:g}), {verdict}")
    return f"check vs DepthPredictor(fast=False): max relative depth error {res['max_rel_depth_error']:.2e}, {verdict}"


def export_command(argv) -> int:
    """export.py; returns the exit status (see the module docstring)."""
    args = build_parser().parse_args(argv)
    size = parse_size(args.size) if args.size else None
    check_out(args.out, args.checkpoint, args.overwrite, args.format)
    try:
        net = load_checkpoint(args.checkpoint, order=args.order)
        exported = export_net(net, args.out, format=args.format, domain=args.domain, with_uncertainty=args.uncertainty,
                          selector=args.selector, precision=args.precision, fuse_bn=not args.no_fuse,
                          example_size=size)
    except (CheckpointError, ValueError, WriteError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(written_line(args.out, exported))
    if args.no_check:
        return 0
    res = verify_export(args.out, net, exported, selector=args.selector, size=size)
    print(check_line(res, exported))
    return 0 if res["ok"] else 1


def main(argv=None) -> int:
    """Run export.py: the refusals of --out are one ``error:`` line (cli.errors.run_command)."""
    return run_command(export_command, argv)


if __name__ == "__main__":
    sys.exit(main())
