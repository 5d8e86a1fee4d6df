"""The study's settings: presets, arms (what is trained after the first stage) and the options.

A *cell* of the study is (order, arm, seed). An *arm* is a way of learning the later domains: a
strategy of the engine plus, for the protocol comparison, engine options that switch on one (or
all) of the authors' documented differences (``engine/protocol.py``).
"""
from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass
from pathlib import Path

from data.domains import parse_order
from models.resnet import ENCODERS
from cli import options
from cli.options import CLIError, HelpFormatter, register_custom_domains

LIFELONG_STRATEGIES = ("ours", "finetune", "distill", "replay")


@dataclass(frozen=True)
class Arm:
    """How the later stages of an order are learned."""
    name: str                 # folder name and report label key
    strategy: str             # the engine's --strategy
    extra: tuple = ()         # further engine options of every stage of this arm
    own_first: bool = False   # trains its own first stage with ``extra`` (data/initialisation differ)
    label: str = ""
    protocol: bool = False    # part of the protocol comparison (trained on --protocol-orders)

    @property
    def text(self) -> str:
        return self.label or self.name


# The built-in arms. The protocol arms switch on the authors' differences (engine/protocol.py) that act on
# training: all of them (``authors``: its data options and initialisation change the first stage
# too, so it trains its own), or one at a time on top of ours.
ARMS = {a.name: a for a in (
    Arm("ours", "ours", label="ours (distillation + replay)"),
    Arm("finetune", "finetune", label="finetune (lower bound)"),
    Arm("distill", "distill", label="distillation only"),
    Arm("replay", "replay", label="replay only"),
    Arm("authors", "ours", ("--protocol", "authors"), own_first=True, protocol=True,
        label="authors' protocol (every training difference)"),
    Arm("reinit", "ours", ("--reinit-old-heads",), protocol=True, label="ours + re-initialised old heads"),
    Arm("bn_all", "ours", ("--bn-all-heads",), protocol=True, label="ours + all-head BN statistics"),
    Arm("exhaust", "ours", ("--replay-exhaust", "authors"), protocol=True,
        label="ours + replay stops when exhausted"),
)}


@dataclass
class Settings:
    """Everything that changes a number of the study (and how it is computed)."""
    preset: str
    data_root: str
    runs_dir: Path
    seeds: tuple
    orders: tuple
    arms: tuple                     # names of lifelong arms trained on every order
    protocol_arms: tuple            # names of protocol arms trained on protocol_orders
    protocol_orders: tuple
    joint: bool                     # joint model on all domains (upper bound)
    single_head: bool               # joint model with one shared head (baseline)
    n_train: int                    # rendered training images per domain
    n_test: int
    scale: float
    first_epochs: int
    joint_epochs: int               # epochs of the joint and single-head models (each covers every domain)
    epochs: int
    lr: float
    lr_step: int
    batch_size: int
    encoder: str
    val_images: int
    replay_size: int
    proto_images: int
    max_steps: int | None = None    # optimiser-step cap of every stage (tests only)
    device: str = "cpu"
    amp: str = "off"
    workers: int = 0
    jobs: int = 2
    threads: int = 1
    eval_images: int | None = None
    selection_images: int | None = None
    quiet: bool = False

    @property
    def letters(self) -> str:
        """Every domain of the study, in the order of first appearance."""
        out = ""
        for o in self.orders + (self.protocol_orders if self.protocol_arms else ()):
            out += "".join(c for c in o if c not in out)
        return out

    def evaluation(self) -> dict:
        """The evaluation conventions (ours: the domain's crop, capped, per-image mean, float32)."""
        return {"crop": "default", "cap": True, "aggregate": "image", "precision": "fp32",
                "eval_images": self.eval_images, "scale": self.scale, "selector": "checkpoint default"}


# Presets. ``full`` is the study behind docs/RESULTS.md: the three cyclic orders (each domain learned
# first, second and third once), 3 seeds, sizes chosen so that the single-domain models fit their
# domain (see the fit table; S falls short) in 120 min on 2 CPU cores; ``quick`` is its subset (order NKS,
# ours and finetune: the same stages, so a later full run reuses them), 38 min; ``cuda`` is
# the paper's input size and schedule on a GPU; ``smoke`` is for the tests (meaningless numbers).
# Measured on the synthetic data (rendered at scale 0.25, 800 training images per domain): after 5
# epochs the single-domain models reach 46 % (N), 13 % (K) and 60 % (S) of a constant's validation
# AbsRel; S needs the most training, hence 8.
_BASE = dict(seeds=(0, 1, 2), n_train=800, n_test=100, scale=0.25, first_epochs=8, joint_epochs=4,
             epochs=2, lr=3e-4, lr_step=4, batch_size=8, encoder="resnet18", val_images=30,
             replay_size=100, proto_images=50, joint=True, single_head=True, protocol_orders=("NKS",))
PRESETS = {
    "full": dict(_BASE, orders=("NKS", "KSN", "SNK"), arms=("ours", "finetune"),
                 protocol_arms=("authors", "reinit", "bn_all", "exhaust")),
    "quick": dict(_BASE, orders=("NKS",), arms=("ours", "finetune"), protocol_arms=(),
                  joint=False, single_head=False),
    "cuda": dict(_BASE, orders=("NKS", "NSK", "KNS", "KSN", "SNK", "SKN"), arms=("ours", "finetune"),
                 protocol_arms=("authors", "reinit", "bn_all", "exhaust"), n_train=4000, n_test=300,
                 scale=1.0, first_epochs=20, joint_epochs=20, epochs=20, lr=1e-4, lr_step=5,
                 encoder="resnet34", val_images=50, replay_size=500, proto_images=200, device="cuda",
                 jobs=1, threads=4, workers=4),
    "smoke": dict(_BASE, seeds=(0, 1), orders=("NK",), arms=("ours", "finetune"),
                  protocol_arms=("reinit",), protocol_orders=("NK",), n_train=12, n_test=3,
                  first_epochs=1, joint_epochs=1, epochs=1, batch_size=2, val_images=2, replay_size=4,
                  proto_images=2, max_steps=2, eval_images=2, selection_images=2),
}


def SYNTHETIC_COMMAND(s) -> list[str]:
    """synthetic.py's arguments for the study's data root (frames at the training scale: the KITTI
    recipe crops without resizing, so larger frames would show only the road right ahead)."""
    return ["--train", str(s.n_train), "--test", str(s.n_test), "--scale", f"{s.scale:g}",
            "--replay-size", str(s.replay_size), "--seed", "0"]


DATA_ROOTS = {"full": "datasets/study", "quick": "datasets/study", "cuda": "datasets/study_s100",
              "smoke": "datasets/study_smoke"}
RUNS_DIRS = {"full": "runs/study", "quick": "runs/study", "cuda": "runs/study_cuda",
             "smoke": "runs/study_smoke"}


def _csv(text: str) -> tuple:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def parse_orders(text: str) -> tuple:
    """Comma-separated orders of registered domains (built-in or custom letters)."""
    out = []
    for item in _csv(text):
        try:
            order = "".join(spec.letter for spec in parse_order(item))
        except ValueError as e:
            raise CLIError(f"--orders: {e}") from None
        if len(order) < 2:
            raise CLIError(f"--orders: {item!r} has one domain; an order needs at least two")
        if order not in out:
            out.append(order)
    return tuple(out)


def parse_arms(text: str, protocol: bool) -> tuple:
    """Arm names (checked against ARMS; protocol arms only where ``protocol``)."""
    names = _csv(text)
    for n in names:
        if n not in ARMS or ARMS[n].protocol != protocol:
            valid = [a for a, arm in ARMS.items() if arm.protocol == protocol]
            raise CLIError(f"--{'protocol-arms' if protocol else 'arms'}: unknown {n!r}; choose among "
                           f"{', '.join(valid)}")
    return names


def parse_seeds(text: str) -> tuple:
    try:
        seeds = tuple(int(t) for t in _csv(text))
    except ValueError:
        raise CLIError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise CLIError(f"--seeds {text!r}: give distinct seeds")
    return seeds


def preset_values(option: str) -> str:
    """' (full X, quick Y, cuda Z)' for an option whose default is the preset's."""
    key = option.lstrip("-").replace("-", "_")
    values = [f"{name} {PRESETS[name][key]}" for name in ("full", "quick", "cuda") if key in PRESETS[name]]
    return f" (preset: {', '.join(values)})" if values else ""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="study.py",
        description="The lifelong study on synthetic stand-in domains: for each seed, single-domain "
                    "first stages, every order x arm, the protocol comparison, joint and single-head "
                    "baselines; evaluation, selection benchmark, figures and docs/RESULTS.md with "
                    "95 %% intervals over seeds. Everything on disk is reused; an interrupted study "
                    "resumes with the same command.",
        formatter_class=HelpFormatter)
    p.add_argument("--preset", default="full", choices=list(PRESETS),
                   help="full: the study of docs/RESULTS.md (6 orders, 3 seeds); quick: order NKS and "
                        "fewer arms (38 min measured on 2 cores, the full study 120 min); cuda: the paper's input size and "
                        "schedule on a GPU; smoke: a few steps, for tests")
    p.add_argument("--quick", action="store_const", const="quick", dest="preset",
                   help="same as --preset quick")
    p.add_argument("--report-only", action="store_true",
                   help="train and evaluate nothing: rebuild the report from the runs and evaluations "
                        "on disk (missing ones are reported as missing)")
    g = p.add_argument_group("what to run (each overrides the preset)")
    g.add_argument("--seeds", default=None, help="comma-separated engine seeds, e.g. 0,1,2")
    g.add_argument("--orders", default=None,
                   help="comma-separated learning orders of registered domain letters (custom domains "
                        "of the data root's domains.json included), e.g. NKS,KNS")
    g.add_argument("--arms", default=None,
                   help="lifelong arms trained on every order: "
                        + ", ".join(n for n, a in ARMS.items() if not a.protocol))
    g.add_argument("--protocol-arms", default=None,
                   help="protocol arms trained on --protocol-orders (empty: none): "
                        + "; ".join(f"{n} = {a.label} ({' '.join(a.extra)})" for n, a in ARMS.items()
                                    if a.protocol))
    g.add_argument("--protocol-orders", default=None,
                   help="orders of the protocol comparison (default: the preset's, NKS; with --orders, "
                        "its first order)")
    g.add_argument("--joint", action=argparse.BooleanOptionalAction, default=None,
                   help="train the joint model on all domains (upper bound)")
    g.add_argument("--single-head", action=argparse.BooleanOptionalAction, default=None,
                   help="train the single-head joint baseline (and the joint model it is compared with)")
    g = p.add_argument_group("data and outputs")
    g.add_argument("--data-root", default=None,
                   help="synthetic data root, rendered by synthetic.py when missing (default: per preset, "
                        "e.g. datasets/study); custom domains: a root with their CSVs and domains.json")
    g.add_argument("--runs-dir", default=None, help="checkpoints, run folders and evaluations "
                                                    "(default: per preset, e.g. runs/study)")
    g.add_argument("--report", default="docs/RESULTS.md", help="the markdown report to write")
    g.add_argument("--figures-dir", default="docs/figures", help="folder of the report's PNG figures")
    g = p.add_argument_group("training (each overrides the preset)")
    for name, kind, text in (
            ("--n-train", int, "rendered training images per domain"),
            ("--scale", float, "input size factor of every stage (and of the rendered frames)"),
            ("--first-epochs", int, "epochs of the single-domain first stages"),
            ("--joint-epochs", int, "epochs of the joint and single-head models (each epoch covers "
                                    "every domain's data)"),
            ("--epochs", int, "epochs of every later stage"),
            ("--lr", float, "Adam learning rate"),
            ("--lr-step", int, "halve the learning rate every N epochs"),
            ("--batch-size", int, "batch size (also of each replay batch)"),
            ("--val-images", int, "validation images per domain held out of training by the engine"),
            ("--replay-size", int, "replay buffer per old domain"),
            ("--proto-images", int, "images per domain for the stored prototypes and lda statistics"),
            ("--max-steps", int, "optimiser-step cap of every stage (for tests)"),
            ("--eval-images", int, "test images per domain (default all)"),
            ("--selection-images", int, "test images per domain in the selection benchmark (default all)"),
            ("--jobs", int, "stages trained (and checkpoints evaluated) in parallel processes"),
            ("--threads", int, "torch threads per process (1 x 2 processes is fastest on 2 cores)"),
            ("--workers", int, "data-loader workers of the engine")):
        g.add_argument(name, type=kind, default=None, help=text + preset_values(name))
    g.add_argument("--encoder", default=None, choices=sorted(ENCODERS),
                   help="encoder of the models trained from scratch")
    options.add_device_argument(g, default=None, help="where training runs (default: per preset; cpu, or cuda for "
                                               "--preset cuda)")
    g.add_argument("--quiet", action="store_true", help="no progress bars in the engine")
    return p


def resolve_settings(args) -> Settings:
    """The preset, overridden by every option given (custom domains of the data root registered
    first, so that their letters are valid in --orders)."""
    base = dict(PRESETS[args.preset])
    data_root = args.data_root or DATA_ROOTS[args.preset]
    if (Path(data_root) / "domains.json").is_file():
        register_custom_domains(data_root)
    picks = {"seeds": parse_seeds(args.seeds) if args.seeds else None,
             "orders": parse_orders(args.orders) if args.orders else None,
             "arms": parse_arms(args.arms, False) if args.arms is not None else None,
             "protocol_arms": parse_arms(args.protocol_arms, True) if args.protocol_arms is not None else None,
             "protocol_orders": parse_orders(args.protocol_orders) if args.protocol_orders else None}
    for key in ("joint", "single_head", "n_train", "scale", "first_epochs", "joint_epochs", "epochs", "lr", "lr_step",
                "batch_size", "val_images", "replay_size", "proto_images", "max_steps", "eval_images",
                "selection_images", "jobs", "threads", "workers", "encoder", "device"):
        picks[key] = getattr(args, key)
    if picks["orders"] and not picks["protocol_orders"]:  # --orders alone: compare protocols on its first
        picks["protocol_orders"] = picks["orders"][:1]
    base.update({k: v for k, v in picks.items() if v is not None})
    s = Settings(preset=args.preset, data_root=data_root,
                 runs_dir=Path(args.runs_dir or RUNS_DIRS[args.preset]), quiet=args.quiet, **base)
    check_settings(s)
    return s


def check_settings(s: Settings) -> None:
    if not s.orders:
        raise CLIError("--orders: no order given")
    if not s.scale > 0 or min(s.first_epochs, s.joint_epochs, s.epochs, s.batch_size, s.n_train, s.jobs, s.threads) < 1:
        raise CLIError("--scale must be positive; --n-train, --first-epochs, --joint-epochs, --epochs, --batch-size, "
                       "--jobs and --threads at least 1")
    if s.lr <= 0 or s.lr_step < 1:
        raise CLIError("--lr must be positive and --lr-step at least 1")
    if s.val_images < 2 and s.preset != "smoke":
        raise CLIError("--val-images: the fit table and the equal-budget plasticity need >= 2 "
                       "validation images per domain")
    if s.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise CLIError("--device cuda: no CUDA device is available here (torch "
                           f"{torch.__version__}); use --preset full/quick on the CPU")


def quote(argv) -> str:
    return " ".join(shlex.quote(str(a)) for a in argv)
