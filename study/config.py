"""The study's settings: presets, arms (what is trained after the first stage) and the options.

A *cell* of the study is (order, arm, seed). An *arm* is a way of learning the later domains: a
strategy of the engine plus, for the protocol comparison, engine options that switch on one (or
all) of the authors' documented differences (``base/protocol.py``).
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from base.domains import load_domains_from_root, parse_order
from base.errors import InputError
from engine.options import StageOptions, as_argv

LIFELONG_STRATEGIES = ("ours", "finetune", "distill", "replay")


@dataclass(frozen=True)
class Arm:
    """How the later stages of an order are learned."""
    name: str                 # folder name and report label key
    strategy: str             # the engine's --strategy
    extra: tuple = ()         # further engine options of every stage of this arm: (field, value) pairs
    own_first: bool = False   # trains its own first stage with ``extra`` (data/initialisation differ)
    label: str = ""
    protocol: bool = False    # part of the protocol comparison (trained on --protocol-orders)

    @property
    def text(self) -> str:
        return self.label or self.name

    @property
    def command(self) -> str:
        """The arm's further engine options as command-line arguments, e.g. --protocol authors."""
        return " ".join(as_argv(StageOptions(**dict(self.extra)), [k for k, _ in self.extra]))


# The built-in arms. The protocol arms switch on the authors' differences (base/protocol.py) that act on
# training: all of them (``authors``: its data options and initialisation change the first stage
# too, so it trains its own), or one at a time on top of ours.
ARMS = {a.name: a for a in (
    Arm("ours", "ours", label="ours (distillation + replay)"),
    Arm("finetune", "finetune", label="finetune (lower bound)"),
    Arm("distill", "distill", label="distillation only"),
    Arm("replay", "replay", label="replay only"),
    Arm("authors", "ours", (("protocol", "authors"),), own_first=True, protocol=True,
        label="authors' protocol (every training difference)"),
    Arm("reinit", "ours", (("reinit_old_heads", True),), protocol=True, label="ours + re-initialised old heads"),
    Arm("bn_all", "ours", (("bn_all_heads", True),), protocol=True, label="ours + all-head BN statistics"),
    Arm("exhaust", "ours", (("replay_exhaust", "authors"),), protocol=True,
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
    precision: str = "fp32"          # training precision (as train_N.py --precision)
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
# domain (see the fit table; S falls short) on 2 CPU cores (its wall time: docs/RESULTS.md); ``quick`` is
# its subset (order NKS, ours and finetune: the same stages, so a later full run reuses them); ``cuda`` is
# the paper's input size and schedule on a GPU; ``smoke`` is for the tests (meaningless numbers).
# S needs the most training of the single-domain models, hence 8 first epochs
# (measured: docs/BENCHMARKS.md#figures-that-were-in-the-codes-comments).
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
            raise InputError(f"--orders: {e}") from None
        if len(order) < 2:
            raise InputError(f"--orders: {item!r} has one domain; an order needs at least two")
        if order not in out:
            out.append(order)
    return tuple(out)


def parse_arms(text: str, protocol: bool) -> tuple:
    """Arm names (checked against ARMS; protocol arms only where ``protocol``)."""
    names = _csv(text)
    for n in names:
        if n not in ARMS or ARMS[n].protocol != protocol:
            valid = [a for a, arm in ARMS.items() if arm.protocol == protocol]
            raise InputError(f"--{'protocol-arms' if protocol else 'arms'}: unknown {n!r}; choose among "
                            f"{', '.join(valid)}")
    return names


def parse_seeds(text: str) -> tuple:
    try:
        seeds = tuple(int(t) for t in _csv(text))
    except ValueError:
        raise InputError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise InputError(f"--seeds {text!r}: give distinct seeds")
    return seeds


# the settings a study's options override (None: the preset's value)
OVERRIDES = ("joint", "single_head", "n_train", "scale", "first_epochs", "joint_epochs", "epochs", "lr", "lr_step",
             "batch_size", "val_images", "replay_size", "proto_images", "max_steps", "eval_images",
             "selection_images", "jobs", "threads", "workers", "encoder", "device")


def resolve_settings(preset: str = "full", data_root: str | None = None, runs_dir: str | None = None,
                     quiet: bool = False, seeds: str | None = None, orders: str | None = None,
                     arms: str | None = None, protocol_arms: str | None = None,
                     protocol_orders: str | None = None, **overrides) -> Settings:
    """The preset, overridden by every value given (not None): the lists as the options' texts
    (comma-separated), the others (OVERRIDES) as values. Custom domains of the data root are
    registered first, so that their letters are valid in ``orders``."""
    base = dict(PRESETS[preset])
    data_root = data_root or DATA_ROOTS[preset]
    if (Path(data_root) / "domains.json").is_file():
        try:
            load_domains_from_root(str(data_root))
        except (ValueError, FileNotFoundError) as e:
            raise InputError(str(e)) from None
    unknown = set(overrides) - set(OVERRIDES)
    if unknown:
        raise TypeError(f"resolve_settings: unknown setting(s) {', '.join(sorted(unknown))}")
    picks = {"seeds": parse_seeds(seeds) if seeds else None,
             "orders": parse_orders(orders) if orders else None,
             "arms": parse_arms(arms, False) if arms is not None else None,
             "protocol_arms": parse_arms(protocol_arms, True) if protocol_arms is not None else None,
             "protocol_orders": parse_orders(protocol_orders) if protocol_orders else None, **overrides}
    if picks["orders"] and not picks["protocol_orders"]:  # --orders alone: compare protocols on its first
        picks["protocol_orders"] = picks["orders"][:1]
    base.update({k: v for k, v in picks.items() if v is not None})
    s = Settings(preset=preset, data_root=data_root, runs_dir=Path(runs_dir or RUNS_DIRS[preset]),
                 quiet=quiet, **base)
    check_settings(s)
    return s


def check_settings(s: Settings) -> None:
    if not s.orders:
        raise InputError("--orders: no order given")
    if not s.scale > 0 or min(s.first_epochs, s.joint_epochs, s.epochs, s.batch_size, s.n_train, s.jobs, s.threads) < 1:
        raise InputError("--scale must be positive; --n-train, --first-epochs, --joint-epochs, --epochs, --batch-size, "
                        "--jobs and --threads at least 1")
    if s.lr <= 0 or s.lr_step < 1:
        raise InputError("--lr must be positive and --lr-step at least 1")
    if s.val_images < 2 and s.preset != "smoke":
        raise InputError("--val-images: the fit table and the equal-budget plasticity need >= 2 "
                        "validation images per domain")
    if s.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise InputError("--device cuda: no CUDA device is available here (torch "
                             f"{torch.__version__}); use --preset full/quick on the CPU")


def quote(argv) -> str:
    return " ".join(shlex.quote(str(a)) for a in argv)
