"""Every training stage of the study, where its checkpoint lives, and which stages a matrix reads.

Layout under ``--runs-dir`` (one folder per seed, one per arm)::

    seed0/first/N.pth.tar                 single-domain model of N (first stage of every arm that
                                          shares it; the plasticity reference)
    seed0/ours/NK.pth.tar, NKS.pth.tar    later stages of an arm (engine names: base.domains.run_name)
    seed0/finetune/NK_finetune.pth.tar
    seed0/authors/N.pth.tar, NK.pth.tar   an arm with its own first stage
    seed0/joint/NKS_joint.pth.tar, NKS_joint_shared.pth.tar
    eval/...                              evaluation JSONs (evaluate.py)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from base.domains import run_name
from engine.options import StageOptions, as_argv

from .config import ARMS, Arm, Settings

# the engine options a stage's record (Job.argv) names, in the order of existing study folders
RECORDED = ("order", "strategy", "out", "runs_dir", "data_root", "scale", "epochs", "lr", "lr_step", "batch_size",
            "encoder", "seed", "val_images", "replay_size", "proto_images", "workers", "device", "precision",
            "max_steps", "prior", "shared_head", "quiet")


@dataclass
class Job:
    key: str                   # unique label, e.g. "seed0 ours NK"
    seed: int
    group: str                 # first | later | joint | shared
    letters: str               # domains learned after this stage, in order
    strategy: str
    out: Path
    prior: Path | None = None
    extra: tuple = ()
    arm: str | None = None

    @property
    def run_dir(self) -> Path:
        return self.out.with_suffix("").with_suffix("")

    def options(self, s: Settings, resume: bool = False) -> StageOptions:
        """The engine's settings of this stage (``resume``: continue its interrupted run)."""
        epochs = {"first": s.first_epochs, "later": s.epochs}.get(self.group, s.joint_epochs)
        return StageOptions(
            order=self.letters, strategy=self.strategy, out=str(self.out), runs_dir=str(self.out.parent),
            data_root=str(s.data_root), scale=s.scale, epochs=epochs, lr=s.lr, lr_step=s.lr_step,
            batch_size=s.batch_size, encoder=s.encoder, seed=self.seed, val_images=s.val_images,
            replay_size=s.replay_size, proto_images=s.proto_images, workers=s.workers, device=s.device,
            precision=s.precision, max_steps=s.max_steps, prior=None if self.prior is None else str(self.prior),
            shared_head=self.group == "shared", quiet=s.quiet, resume="auto" if resume else None,
            **dict(self.extra))

    def argv(self, s: Settings) -> list[str]:
        """The stage as the arguments of train_N/NK/NKS.py: the record in study_job.json that a
        resumed study compares (its order and spelling are those of existing study folders)."""
        return as_argv(self.options(s), RECORDED + tuple(k for k, _ in self.extra))


class Plan:
    """The jobs of every seed, and the checkpoint of each (order, arm, stage, seed)."""

    def __init__(self, s: Settings):
        self.s = s
        self.jobs: dict[str, Job] = {}
        for seed in s.seeds:
            self._plan_seed(seed)

    # ---- paths ------------------------------------------------------------------------------
    def seed_dir(self, seed: int) -> Path:
        return self.s.runs_dir / f"seed{seed}"

    def first(self, letter: str, seed: int, arm: str | None = None) -> Path:
        """The single-domain model of ``letter`` (an arm's own when it trains one)."""
        own = arm is not None and ARMS[arm].own_first
        return self.seed_dir(seed) / (arm if own else "first") / f"{letter}.pth.tar"

    def stage(self, order: str, k: int, arm: str, seed: int) -> Path:
        """Checkpoint after learning ``order[:k]`` with ``arm`` (k = 1: the first stage)."""
        if k == 1:
            return self.first(order[0], seed, arm)
        a = ARMS[arm]
        return self.seed_dir(seed) / arm / f"{run_name(order[:k], a.strategy)}.pth.tar"

    def joint(self, seed: int, shared_head: bool = False) -> Path:
        name = run_name(self.s.letters, "joint") + ("_shared" if shared_head else "")
        return self.seed_dir(seed) / "joint" / f"{name}.pth.tar"

    def orders_of(self, arm: str) -> tuple:
        return self.s.protocol_orders if ARMS[arm].protocol else self.s.orders

    @property
    def arms(self) -> tuple:
        return tuple(self.s.arms) + tuple(self.s.protocol_arms)

    # ---- jobs -------------------------------------------------------------------------------
    def _add(self, job: Job) -> None:
        self.jobs.setdefault(str(job.out), job)

    def _plan_seed(self, seed: int) -> None:
        s = self.s
        for c in s.letters:  # every domain's single-domain model: first stage and plasticity reference
            self._add(Job(f"seed{seed} first {c}", seed, "first", c, "ours", self.first(c, seed)))
        for arm_name in self.arms:
            arm: Arm = ARMS[arm_name]
            for order in self.orders_of(arm_name):
                if arm.own_first:
                    self._add(Job(f"seed{seed} {arm_name} {order[0]}", seed, "first", order[0], "ours",
                                  self.first(order[0], seed, arm_name), extra=arm.extra, arm=arm_name))
                for k in range(2, len(order) + 1):
                    self._add(Job(f"seed{seed} {arm_name} {order[:k]}", seed, "later", order[:k],
                                  arm.strategy, self.stage(order, k, arm_name, seed),
                                  prior=self.stage(order, k - 1, arm_name, seed), extra=arm.extra,
                                  arm=arm_name))
        if s.joint or s.single_head:
            self._add(Job(f"seed{seed} joint {s.letters}", seed, "joint", s.letters, "joint",
                          self.joint(seed)))
        if s.single_head:
            self._add(Job(f"seed{seed} single-head {s.letters}", seed, "shared", s.letters, "joint",
                          self.joint(seed, shared_head=True)))

    def ordered(self) -> list[Job]:
        """Seed by seed (an interrupted study has whole seeds done first): first stages, then each
        order's later stages (each after its prior), joint runs last."""
        rank = {"first": 0, "later": 1, "joint": 2, "shared": 3}
        return sorted(self.jobs.values(), key=lambda j: (self.s.seeds.index(j.seed), rank[j.group],
                                                         len(j.letters)))

    @property
    def selection_arm(self) -> str:
        """The arm whose final models the selection benchmark measures (ours where it is run)."""
        return "ours" if "ours" in self.arms else self.arms[0]

    def selection_checkpoints(self) -> list[Path]:
        """The selection benchmark's subjects: the selection arm's final model of every order and seed
        (its cost per model rules out every arm: docs/BENCHMARKS.md#figures-that-were-in-the-codes-comments)."""
        arm = self.selection_arm
        return [self.stage(o, len(o), arm, seed) for seed in self.s.seeds for o in self.orders_of(arm)]
