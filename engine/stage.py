"""One stage of lifelong learning: the loss terms of a micro-batch (``StageLoss``), the training
loop with its resume state, prototypes and uncertainty calibration (``Stage``), and the stage's
one-line description (``describe``)."""
from __future__ import annotations

import dataclasses
import json
import math
import signal
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import Subset
from tqdm import tqdm

from base.domains import get_domain
from base.errors import InputError
from engine.model import NoGroundTruth, build_model, init_depth_bias, median_depth, teacher_targets
from base.images import scaled_size
from engine.options import STRATEGIES, drop_last, parse_weights
from engine.processes import (Dist, StageInterrupted, StopSignals, amp_settings, channels_last_setting,
                              seed_everything)
from base.protocol import DATA as PROTOCOL_DATA
from base.protocol import TRAINING as PROTOCOL_TRAINING
from engine.sampling import (CyclingLoader, DomainData, EpochReplayLoader, SeededSamples, StepSampler,
                             loader_message, make_loader)
from evaluation.evaluate import evaluate_domain
from base.uncertainty import CALIBRATION_KEY
from evaluation.uncertainty import fit_calibration
from inference.prototypes import LDA_PASSES, compute_lda, compute_prototypes
from loaders import DatasetFormatError, get_loader
from losses import distillation_loss, uncertainty_depth_loss
from models import CheckpointError, LifelongDepthNet, save_checkpoint
from models.checkpoint import _plain, atomic_save, check_finite
from models.fast import autocast_context, to_channels_last


def fit_uncertainty(net, data, opts, device, amp_dtype=None, progress=None) -> dict:
    """Every head's uncertainty scale fitted on its domain's validation rows (``DomainData.val``,
    never the test split; evaluation.uncertainty), with the test-time conventions (the domain's
    crop, depth caps): called at the end of every stage, and by test.py --calibrate-into."""
    device = torch.device(device)

    def forward(images, head):
        with autocast_context(device, amp_dtype):
            return net(images.to(device), domain=head)

    def loaders(domains):
        return [get_loader(d.val, batch_size=opts.batch_size, workers=0, device=device.type)
                for d in domains if d.val is not None]
    groups = [data] if opts.shared_head else [[d] for d in data]
    heads = [{"domain": "+".join(d.spec.name for d in g), "loaders": loaders(g),
              "rules": (g[0].spec.min_depth, max(d.spec.max_depth for d in g),
                        g[0].spec.eval_crop if len(g) == 1 else "none")} for g in groups]
    was_training = net.training
    net.eval()
    try:
        return fit_calibration(forward, heads, note=f"fitted after learning {opts.order}", progress=progress)
    finally:
        net.train(was_training)


def fit_frame_uncertainty(net, opts, device, cameras, previous=None, fit_heads=None, progress=None) -> dict:
    """The stage's calibration record on whole frames (evaluation.frame_calibration.calibrate_frames):
    heads ``fit_heads`` (default: the last) on their validation rows through the frame pipeline of
    ``net`` (the default inference path), the others kept from ``previous``."""
    from evaluation.frame_calibration import calibrate_frames, stage_pipeline
    specs = [get_domain(c) for c in opts.order]
    was_training = net.training
    net.eval()
    try:
        pipe = stage_pipeline(net, cameras, [list(scaled_size(s.input_size, opts.scale)) for s in specs],
                              device=device, letters=opts.order)
        return calibrate_frames(pipe, opts.order, opts.data_root, val_images=opts.val_images,
                                val_seed=opts.val_seed, depth_ranges=[(s.min_depth, s.max_depth) for s in specs],
                                fit_heads=fit_heads, previous=previous, fitted_at=opts.order,
                                note=f"fitted after learning {opts.order}", progress=progress)
    finally:
        net.train(was_training)


class StageLoss(nn.Module):
    """All loss terms of one micro-batch in a single forward, so DDP sees one call per step."""

    def __init__(self, net: LifelongDepthNet, new_head: int, distill_w, replay_w, replay_heads,
                 bn_all_heads: bool = False):
        super().__init__()
        self.net, self.new_head = net, new_head
        self.distill_w, self.replay_w, self.replay_heads = distill_w, replay_w, replay_heads
        self.bn_all_heads = bn_all_heads

    def forward(self, image, depth, teacher_out=None, replay=(), distill_w=None):
        """``distill_w`` replaces the distillation weights for this call (--replay-exhaust authors)."""
        distill_w = self.distill_w if distill_w is None else distill_w
        terms = {}
        feats = self.net.features(image)
        d, u = self.net.head_forward(feats, self.new_head)
        total = terms["new"] = uncertainty_depth_loss(d, u, depth)
        for j, (t_d, t_u) in enumerate(teacher_out or ()):
            s_d, s_u = self.net.head_forward(feats, j)
            terms[f"distill{j}"] = distillation_loss(s_d, s_u, t_d, t_u)
            total = total + distill_w[j] * terms[f"distill{j}"]
        self.run_other_heads(feats, {self.new_head, *range(len(teacher_out or ()))})
        for k, (r_image, r_depth) in enumerate(replay):
            j = self.replay_heads[k]
            r_feats = self.net.features(r_image)
            r_d, r_u = self.net.head_forward(r_feats, j)
            self.run_other_heads(r_feats, {j})
            terms[f"replay{k}"] = uncertainty_depth_loss(r_d, r_u, r_depth)
            total = total + self.replay_w[k] * terms[f"replay{k}"]
        terms["total"] = total
        return terms

    def run_other_heads(self, feats, used) -> None:
        """--bn-all-heads: every head not used by a loss term runs on ``feats`` too, without a
        gradient, only so that its BatchNorm running statistics move as in upstream's
        whole-network forward (in train mode BN normalises with batch statistics, so the heads
        that get a loss compute exactly what they compute without this)."""
        if not self.bn_all_heads:
            return
        with torch.no_grad():
            for j in range(self.net.num_domains):
                if j not in used:
                    self.net.head_forward(feats.detach(), j)


# --------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------
class Stage:
    """Learns one more domain: model, data, optimiser, loop, checkpoints."""

    def __init__(self, opts, ctx: Dist):
        self.opts, self.ctx = opts, ctx
        self.specs = [get_domain(letter) for letter in opts.order]
        seed_everything(opts.seed)
        self.net, self.teacher, self.new_head = build_model(opts, ctx)
        self.data = [DomainData(spec, opts) for spec in self.specs]
        self._plan_terms()
        self._init_fresh_heads(set_bias=opts.init_depth_bias == "auto")
        self.amp_dtype, needs_scaler = amp_settings(opts.precision, ctx.device)
        self.channels_last = channels_last_setting(opts.channels_last, ctx.device)
        if self.channels_last:  # before the optimiser and DDP take the parameters
            to_channels_last(self.net)
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=needs_scaler)
        self.loss = StageLoss(self.net, self.new_head, self.distill_w, self.replay_w, self.replay_heads,
                              bn_all_heads=bool(opts.bn_all_heads))
        self.step_module = self.loss
        if ctx.world > 1:
            ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            self.step_module = nn.parallel.DistributedDataParallel(self.loss, device_ids=ids)
        trainable = [p for p in self.net.parameters() if p.requires_grad]
        self.optim = torch.optim.Adam(trainable, lr=opts.lr, weight_decay=opts.weight_decay)
        self.sched = torch.optim.lr_scheduler.StepLR(self.optim, opts.lr_step, opts.lr_gamma)
        self.epoch, self.step_in_epoch, self.global_step, self.replay_steps_done = 0, 0, 0, 0
        self.log_path = Path(opts.run_dir) / "log.jsonl"
        self.signals = StopSignals()
        self.bn_snapshot = None  # buffers at the start of the step in progress (see train_step)
        self.skipped_steps, self.batch_files = 0, []
        self.stage_bar = None  # the bar of a step-limited stage (progress_bar)

    def _plan_terms(self):
        """Which dataset feeds the main batch, which are replayed, and their weights."""
        opts, n_old = self.opts, len(self.specs) - 1
        distil, replay = STRATEGIES[opts.strategy][:2]
        if opts.strategy == "joint":
            # every domain's full training set; the largest drives the epoch, the others cycle
            sizes = [len(d.train) for d in self.data]
            self.main_domain = int(np.argmax(sizes))
            others = [i for i in range(len(self.data)) if i != self.main_domain]
            self.main_head = 0 if opts.shared_head else self.main_domain
            self.replay_sets = [self.data[i].train for i in others]
            self.replay_heads = [0 if opts.shared_head else i for i in others]
            self.replay_w, self.distill_w = [1.0] * len(others), []
            self.new_head = self.main_head
            return
        self.main_domain = self.main_head = n_old
        self.distill_w = parse_weights(opts.distill_weights, n_old) if distil else []
        self.replay_heads = list(range(n_old)) if replay else []
        self.replay_sets = [self.data[j].replay for j in self.replay_heads]
        self.replay_w = parse_weights(opts.replay_weights, n_old) if replay else []

    def _init_fresh_heads(self, set_bias: bool):
        """Depth bias of every head this stage creates: the new one, or all of a joint model's.
        Its median ground truth is measured either way: data without any valid depth would train
        at loss 0 and write a useless model, so it stops the stage here."""
        if self.opts.shared_head:
            fresh = {0: [d.train_full for d in self.data]}
        elif self.opts.strategy == "joint":
            fresh = {i: [d.train_full] for i, d in enumerate(self.data)}
        else:
            fresh = {self.new_head: [self.data[-1].train_full]}
            if self.opts.reinit_old_heads:  # re-initialised old heads are fresh too
                fresh.update({j: [self.data[j].train_full] for j in range(self.new_head)})
        for head, sets in fresh.items():
            try:
                depth = float(np.median([median_depth(ds) for ds in sets]))
            except NoGroundTruth as err:  # (an unreadable file is a DatasetFormatError of its own)
                raise InputError(f"{err}: every depth is 0 (no ground truth); check the depth "
                                 f"files and the domain's depth_encoding") from None
            if set_bias:
                init_depth_bias(self.net, head, depth)

    # ---- persistence -----------------------------------------------------------------------------
    def meta(self) -> dict:
        specs = self.specs
        meta = {"encoder": self.net.encoder_name, "trained_letters": self.opts.order,
                "strategy": self.opts.strategy, "shared_head": self.opts.shared_head,
                "options": dataclasses.asdict(self.opts)}
        if self.opts.shared_head:  # one head serves every domain: it gets the widest range
            meta["domains"] = ["shared"]
            specs = [max(specs, key=lambda s: s.max_depth)]
        else:
            meta["domains"], meta["letters"] = [s.name for s in specs], self.opts.order
        meta["depth_ranges"] = [[s.min_depth, s.max_depth] for s in specs]
        meta["input_sizes"] = [list(scaled_size(s.input_size, self.opts.scale)) for s in specs]
        meta["cameras"] = [c.as_dict() if c is not None else None for c in self.cameras(specs)]
        return meta

    def cameras(self, specs):
        """Per domain, the camera its head learns (inference/frames.py: the stored frames' camera
        through the training transform's resize)."""
        from inference.frames import trained_camera
        return [trained_camera(s, self.opts.scale, self.opts.data_root) for s in specs]

    def samples_per_step(self) -> int:
        """Samples of the new domain in one optimiser step, over all processes and micro-batches."""
        return self.opts.batch_size * self.opts.grad_accum * self.ctx.world

    def save_resume(self, interrupted=False):
        """The state after the last completed step (a step in progress is rolled back first)."""
        if not self.ctx.main:
            return
        self.rollback_step()
        path = Path(self.opts.run_dir) / "last.pth.tar"
        check_finite(self.net.state_dict(), path)  # CheckpointError: keep the last good state, not a NaN model
        state = {"state_dict": self.net.state_dict(), "optimizer": self.optim.state_dict(),
                 "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict(),
                 "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                 "global_step": self.global_step, "world_size": self.ctx.world,
                 "samples_in_epoch": self.step_in_epoch * self.samples_per_step(),
                 "samples_total": self.global_step * self.samples_per_step(),
                 "skipped_steps": self.skipped_steps,
                 "interrupted": interrupted, "meta": _plain(self.meta())}
        atomic_save(state, path)

    def rollback_step(self):
        """Undo what an interrupted step changed. Parameters and Adam's state change only inside
        the optimiser step, which signals never interrupt (StopSignals.shield); the forward passes
        already updated the BatchNorm running statistics, which are restored here."""
        if self.bn_snapshot is not None:
            with torch.no_grad():
                for buf, saved in self.bn_snapshot:
                    buf.copy_(saved)
            self.bn_snapshot = None

    def load_resume(self, path):
        # weights_only: a resume file holds tensors and plain data; a crafted one must not run code
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            saved = state["meta"]
            letters, strategy = saved["trained_letters"], saved["strategy"]
        except Exception as exc:  # noqa: BLE001 - any unreadable file is one error line
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(f"resume file {path}: not a resume state of this project "
                             f"({type(exc).__name__}: {reason[:200]}); start over with --overwrite") from None
        if letters != self.opts.order or strategy != self.opts.strategy:
            raise InputError(f"{path} is a run of order {letters} strategy "
                             f"{strategy}, not {self.opts.order} {self.opts.strategy}")
        changes = resume_changes(saved.get("options"), self.opts)
        if changes and not self.opts.allow_changes:
            raise InputError(f"--resume {path}: the run was started with other options ({'; '.join(changes)}); "
                             f"resume with the run's options, pass --allow-changes to continue with these, "
                             f"or --overwrite to start over")
        for change in changes:
            self.say(f"resuming with a changed option: {change}")
        try:
            check_finite(state["state_dict"], path)
            self.net.load_state_dict(state["state_dict"])
            self.optim.load_state_dict(state["optimizer"])
            self.sched.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
        except (CheckpointError, KeyError, RuntimeError, ValueError) as exc:
            raise InputError(f"resume file {path} does not fit this stage "
                             f"({str(exc).splitlines()[0][:300]}); start over with --overwrite") from None
        self.skipped_steps = state.get("skipped_steps", 0)
        self.epoch, self.global_step = state["epoch"], state["global_step"]
        # a different world size (or --grad-accum) continues after the same number of samples
        per_step = self.samples_per_step()
        self.step_in_epoch = state["samples_in_epoch"] // per_step
        # replay streams advance one step per optimiser step, i.e. by the samples of a step
        self.replay_steps_done = state["samples_total"] // per_step
        self.say(f"resumed {path}: epoch {self.epoch + 1}, step {self.step_in_epoch}, "
                 f"{self.global_step} steps done")

    def uncertainty_calibration(self) -> dict:
        """The calibration stored with the stage: on whole frames through the frame pipeline
        (evaluation/frame_calibration.py): the new head on its validation rows, older heads kept from
        the stage that learned them (the prior checkpoint's record; a joint run fits every head: it
        has every domain's rows). A shared head keeps the one-scale fit on validation crops."""
        if self.opts.shared_head:
            rows = sum(len(d.val) for d in self.data if d.val is not None)
            with self.end_bar("calibration", rows) as bar:
                return fit_uncertainty(self.net, self.data, self.opts, self.ctx.device, self.amp_dtype, progress=bar)
        previous = None
        if len(self.specs) > 1 and self.opts.strategy != "joint" and self.opts.prior:
            from models import read_checkpoint
            from models.checkpoint import checkpoint_meta
            previous = checkpoint_meta(read_checkpoint(self.opts.prior)[1]).uncertainty_calibration
        fit_heads = range(len(self.specs)) if self.opts.strategy == "joint" else [self.new_head]
        with self.end_bar("calibration", self.opts.val_images * len(fit_heads)) as bar:
            return fit_frame_uncertainty(self.net, self.opts, self.ctx.device, self.cameras(self.specs),
                                         previous=previous, fit_heads=fit_heads, progress=bar)

    def save_final(self, prototypes, calibration=None):
        if self.ctx.main:
            extra = {} if calibration is None else {CALIBRATION_KEY: calibration}
            # non-finite weights are never written (CheckpointError)
            save_checkpoint(self.opts.out, self.net, prototypes=prototypes, **self.meta(), **extra)

    def log(self, record: dict):
        if self.ctx.main:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def say(self, text: str):
        if self.ctx.main:
            tqdm.write(text)

    # ---- one step ----------------------------------------------------------------------------------
    def micro_batch(self, batch, replay_batches):
        dev = self.ctx.device
        image, depth = batch["image"].to(dev, non_blocking=True), batch["depth"].to(dev, non_blocking=True)
        replay_batches, distill_w = self.exhausted_replay(replay_batches)
        replay = [(b["image"].to(dev, non_blocking=True), b["depth"].to(dev, non_blocking=True))
                  for b in replay_batches]
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
            replay = [(r.contiguous(memory_format=torch.channels_last), d) for r, d in replay]
        with torch.autocast(dev.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            # targets only: computed without a graph (no_grad, not inference_mode, so the loss may
            # save them for backward), by the teacher's own precision (see make_teacher)
            teacher_out = (teacher_targets(self.teacher, image, len(self.distill_w))
                           if self.teacher is not None else None)
            return self.step_module(image, depth, teacher_out, replay, distill_w)

    def exhausted_replay(self, replay):
        """(replay batches, distillation weights or None) of a micro-batch. Under --replay-exhaust
        authors a replay stream returns None once its buffer is used up for the epoch: from then on
        nothing is replayed and every distillation weight becomes the first domain's, which is
        upstream's except-branch (train_NK: 10 stays 10; train_NKS: 10 and 100 become 10 and 10)."""
        if not any(b is None for b in replay):
            return replay, None
        return [], [self.distill_w[0]] * len(self.distill_w) if self.distill_w else []

    def train_step(self, micro_batches) -> dict:
        """One optimiser step over ``grad_accum`` micro-batches (gradients averaged, as DDP does)."""
        # the forward passes update BatchNorm statistics: keep them to roll back an interrupted step
        self.bn_snapshot = [(b, b.detach().clone()) for b in self.net.buffers()]
        self.optim.zero_grad(set_to_none=True)
        sums = {}
        for k, (batch, replay_batches) in enumerate(micro_batches):
            last = k == len(micro_batches) - 1
            sync = nullcontext() if last or self.ctx.world == 1 else self.step_module.no_sync()
            with sync:
                terms = self.micro_batch(batch, replay_batches)
                self.scaler.scale(terms["total"] / len(micro_batches)).backward()
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + value.item() / len(micro_batches)
        finite = self.finite_update(sums)
        # the update and the step counters change together or not at all: an interrupt lands
        # either before (the step is rolled back) or after (the step is done)
        with self.signals.shield():
            if finite:
                self.scaler.step(self.optim)
                self.scaler.update()
                self.bn_snapshot = None
            else:  # --on-nonfinite skip: the batch is consumed without an update
                self.rollback_step()
                self.skipped_steps += 1
                sums["skipped"] = 1.0
            self.step_in_epoch += 1
            self.global_step += 1
        return sums

    def finite_update(self, sums) -> bool:
        """False (skip) or InputError (stop) when the loss or, unscaled, a gradient is NaN/inf: one
        such update makes every weight NaN. With loss scaling the scaler skips inf gradients itself."""
        finite = math.isfinite(sums["total"])
        if finite and not self.scaler.is_enabled():
            grads = [p.grad for p in self.net.parameters() if p.grad is not None]
            finite = bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))
        if self.ctx.world > 1:  # every rank takes the same decision
            flag = torch.tensor([0.0 if finite else 1.0], device=self.ctx.device)
            dist.all_reduce(flag)
            finite = flag.item() == 0
        if finite or self.opts.on_nonfinite == "skip":
            if not finite:
                self.say(f"warning: non-finite loss or gradient at step {self.global_step + 1}: "
                         f"update skipped (files: {', '.join(self.batch_files)})")
            return finite
        self.rollback_step()
        self.save_resume(interrupted=True)
        raise InputError(f"non-finite loss ({sums['total']:g}) or gradient at step "
                         f"{self.global_step + 1} (epoch {self.epoch + 1}); batch files: "
                         f"{', '.join(self.batch_files)}; the state before this step is saved: check "
                         f"these files or lower --lr, then rerun with --resume (add --on-nonfinite "
                         f"skip to skip such batches)")

    # ---- loops -------------------------------------------------------------------------------------
    def validate(self) -> dict:
        results = {}
        if not self.ctx.main or self.opts.val_images <= 0:
            return results
        for i, data in enumerate(self.data):
            if data.val is None:
                continue
            loader = get_loader(data.val, batch_size=self.opts.batch_size, workers=0,
                                device=self.ctx.device.type)
            head = 0 if self.opts.shared_head else i
            r = evaluate_domain(self.net, loader, head, data.spec, self.ctx.device, cap=True,
                                amp_dtype=self.amp_dtype)
            results[data.spec.letter] = {k: round(r[k], 5) for k in ("abs_rel", "rmse", "delta1")}
        return results

    def run_epoch(self, main_sampler, replays, max_steps) -> bool:
        """Train one epoch (or until max_steps); returns False if the step limit was reached."""
        opts = self.opts
        main_sampler.set_epoch(self.epoch)
        main_sampler.start_step = self.step_in_epoch
        main_sampler.dataset.epoch = self.epoch
        for replay in replays:  # --replay-exhaust authors: a fresh pass over each buffer per epoch
            if isinstance(replay, EpochReplayLoader):
                replay.start_epoch(self.epoch, self.step_in_epoch)
        loader = make_loader(main_sampler.dataset, main_sampler, opts, self.ctx, seed=opts.seed + self.epoch)
        steps = main_sampler.steps_per_epoch()
        bar = self.progress_bar(steps, max_steps)
        it, images, t0, sums, n = iter(loader), 0, time.time(), {}, 0
        while self.step_in_epoch < steps:
            if self.signals.requested(self.ctx):
                raise KeyboardInterrupt  # a signal asked to stop: the completed steps are saved
            if max_steps is not None and self.global_step >= max_steps:
                if bar is not self.stage_bar:
                    bar.close()
                if n:
                    self.log_epoch(sums, n, images, time.time() - t0, partial=True)
                return False
            micro = self.next_batches(it, replays)
            terms = self.train_step(micro)  # advances step_in_epoch and global_step
            images += self.samples_per_step() * (1 + len(replays))
            n += 1
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + value
            bar.set_postfix({k: f"{v:.3f}" for k, v in terms.items()}, refresh=False)
            bar.update(1)
        if bar is not self.stage_bar:
            bar.close()
        self.finish_epoch(sums, n, images, time.time() - t0)
        return True

    def step_limited(self, steps_per_epoch: int, max_steps) -> bool:
        """Whether --max-steps ends this stage before its epochs do."""
        return max_steps is not None and max_steps < self.opts.epochs * steps_per_epoch

    def progress_bar(self, steps_per_epoch: int, max_steps):
        """The training bar: a stage that --max-steps ends before its epochs shows its steps
        ("NK: 23/48 steps", one bar for the whole stage); an epoch-limited stage one bar per epoch
        ("NK ours epoch 2/20")."""
        disable = self.opts.quiet or not self.ctx.main
        if self.step_limited(steps_per_epoch, max_steps):
            if self.stage_bar is None:
                self.stage_bar = tqdm(total=max_steps, initial=min(self.global_step, max_steps), disable=disable,
                                      desc=f"{self.opts.order}", unit="step", dynamic_ncols=True, leave=False,
                                      bar_format="{desc}: {n_fmt}/{total_fmt} steps |{bar}| "
                                                 "[{elapsed}<{remaining}, {rate_fmt}{postfix}]")
            return self.stage_bar
        return tqdm(total=steps_per_epoch, initial=self.step_in_epoch, disable=disable,
                    desc=f"{self.opts.order} {self.opts.strategy} epoch {self.epoch + 1}/{self.opts.epochs}",
                    dynamic_ncols=True, leave=False)

    def next_batches(self, it, replays):
        """The micro-batches of the next step. An unreadable sample stops the run, but first the
        resume state of the last completed step is saved, so no finished work is lost."""
        try:
            micro = [(next(it), [r.next() for r in replays]) for _ in range(self.opts.grad_accum)]
        except (DatasetFormatError, OSError, ValueError, RuntimeError) as exc:
            if self.signals.signum is not None:  # data-loader workers killed by the same signal
                raise KeyboardInterrupt from None
            self.save_resume(interrupted=True)
            raise InputError(f"{loader_message(exc)}; the state after step {self.global_step} "
                             f"is saved: fix or remove that file, then rerun with --resume") from None
        self.batch_files = [str(p) for batch, replay in micro for b in (batch, *replay)
                            for p in (b.get("path", []) if b is not None else [])]
        return micro

    def finish_epoch(self, sums, n, images, seconds):
        with self.signals.shield():  # the schedule and the epoch counter advance together
            self.sched.step()
            self.epoch += 1
            self.step_in_epoch = 0
        self.log_epoch(sums, n, images, seconds)
        self.save_resume()

    def log_epoch(self, sums, n, images, seconds, partial=False):
        """Validation of every learned domain and one log line; ``partial`` when --max-steps cut it."""
        val = self.validate()
        record = {"epoch": self.epoch + (1 if partial else 0), "partial": partial,
                  "global_step": self.global_step,
                  "lr": self.optim.param_groups[0]["lr"], "seconds": round(seconds, 2),
                  # every image through the student: the new domain's and each replay batch's
                  "images_per_s": round(images / max(seconds, 1e-9), 3),
                  "new_images_per_s": round(images / (1 + len(self.replay_sets)) / max(seconds, 1e-9), 3),
                  "loss": {k: round(v / max(n, 1), 5) for k, v in sums.items()}, "val": val}
        self.log(record)
        val_text = " ".join(f"{d}: rmse {v['rmse']:.3f} d1 {v['delta1']:.3f}" for d, v in val.items())
        self.say(f"[{self.opts.order} {self.opts.strategy}] epoch {record['epoch']}"
                 f"{' (stopped by --max-steps)' if partial else ''}: "
                 f"loss {record['loss'].get('total', float('nan')):.4f}, "
                 f"{record['images_per_s']:.2f} img/s  {val_text}")

    def train(self):
        opts, ctx = self.opts, self.ctx
        main_set = SeededSamples(self.data[self.main_domain].train, opts.seed)
        if not drop_last(opts) and ctx.world * opts.grad_accum > 1:
            raise InputError("--no-drop-last (partial last batches, as upstream) needs a single "
                             "process without --grad-accum")
        main_sampler = StepSampler(main_set, opts.batch_size, ctx.world, ctx.rank, opts.grad_accum,
                                   seed=opts.seed, partial=not drop_last(opts))
        if main_sampler.steps_per_epoch() == 0:
            raise InputError(f"{len(self.data[self.main_domain].train)} training images are "
                             f"too few for batch size {opts.batch_size}")
        exhaust = opts.replay_exhaust == "authors" and opts.strategy != "joint"
        replay_class = EpochReplayLoader if exhaust else CyclingLoader
        replays = [replay_class(ds, opts, ctx, salt=k + 1) for k, ds in enumerate(self.replay_sets)]
        for replay in replays:
            replay.seek(self.replay_steps_done)
        try:
            with self.signals:
                while self.epoch < opts.epochs:
                    if not self.run_epoch(main_sampler, replays, opts.max_steps):
                        break
        except KeyboardInterrupt:
            self.close_stage_bar()
            self.save_resume(interrupted=True)
            self.say(f"interrupted at step {self.global_step}: resume with the same command plus "
                     f"--resume ({Path(opts.run_dir) / 'last.pth.tar'})")
            raise StageInterrupted(self.signals.signum or signal.SIGINT) from None
        self.close_stage_bar()
        # the finished training's state, so that an interrupt while the prototypes are computed
        # (or a failed final save) resumes straight to them
        self.save_resume()

    def close_stage_bar(self):
        if self.stage_bar is not None:
            self.stage_bar.close()
            self.stage_bar = None

    def prototypes(self) -> dict | None:
        if self.opts.shared_head:  # one head for every domain: there is nothing to select
            return None
        sets = [d.prototype_set(self.opts) for d in self.data]
        loaders = [get_loader(s, batch_size=self.opts.batch_size, workers=0,
                              device=self.ctx.device.type) for s in sets]
        with self.end_bar("prototypes", sum(len(s) for s in sets)) as bar:
            protos = compute_prototypes(self.net, loaders, self.ctx.device, progress=bar)
        # the default (lda) selector's statistics: the same rows under the training augmentation,
        # each sample's augmentation seeded, so the stored statistics are reproducible
        augmented = [SeededSamples(Subset(d.replay_full, range(min(self.opts.proto_images, len(d.replay_full)))),
                                   self.opts.seed + 7) for d in self.data]
        with self.end_bar("lda statistics", LDA_PASSES * sum(len(a) for a in augmented)) as bar:
            protos["lda"] = compute_lda(self.net, [get_loader(a, batch_size=self.opts.batch_size, workers=0,
                                                              device=self.ctx.device.type) for a in augmented],
                                        self.ctx.device, progress=bar)
        protos["frames"] = self.frame_statistics()
        return protos

    def end_bar(self, what: str, total: int):
        """The progress bar of a piece of the work at the stage's end ("NK: frame statistics 40/200
        img"), as training shows its steps; nothing with --quiet."""
        return tqdm(total=total, desc=f"{self.opts.order}: {what}", unit="img", dynamic_ncols=True, leave=False,
                    disable=self.opts.quiet or not self.ctx.main)

    def frame_images(self) -> int:
        """Replay images per domain of the ``frames`` statistics: --frame-images, or the budget
        (inference.replay.FRAME_IMAGES) where --proto-images is larger."""
        from inference.replay import FRAME_IMAGES
        n = self.opts.frame_images
        return int(n) if n else min(self.opts.proto_images, FRAME_IMAGES)

    def frame_statistics(self):
        """Selector statistics on whole frames and the out-of-domain thresholds (inference/replay.py);
        None (with a note) when a domain has too few replay rows to hold some out."""
        from base.errors import InputError
        from inference.predictor import DepthPredictor
        from inference.replay import frame_statistics
        from inference.replay import FRAME_AREA
        mode = self.net.training
        n = self.frame_images()
        area = self.opts.frame_area
        bar = self.end_bar("frame statistics", n * len(self.specs))
        try:  # on the default inference path: the features a query gets (and faster: docs/BENCHMARKS.md#speed)
            return frame_statistics(DepthPredictor(self.net, device=self.ctx.device),
                                    "".join(s.letter for s in self.specs), self.opts.data_root,
                                    self.cameras(self.specs), max_images=n, seed=self.opts.seed,
                                    progress=bar, max_area=FRAME_AREA if area is None else area,
                                    options=("--data-root", "--frame-images"), selector=self.opts.frame_selector)
        except InputError as e:  # too few replay rows to hold some out
            self.say(f"no frame statistics stored ({e})")
            return None
        finally:
            bar.close()
            self.net.train(mode)


def describe(opts, stage: Stage, ctx: Dist) -> str:
    terms = ["new"]
    terms += [f"distill {s.letter} x{w:g}" for s, w in zip(stage.specs, stage.distill_w)]
    kind = "joint" if opts.strategy == "joint" else "replay"
    others = [i for i in range(len(stage.specs)) if i != stage.main_domain] if kind == "joint" else stage.replay_heads
    terms += [f"{kind} {stage.specs[j].letter} x{w:g}" for j, w in zip(others, stage.replay_w)]
    return (f"stage {opts.order} ({opts.strategy}): learning {stage.specs[stage.main_domain].name} "
            f"on {ctx.device} x{ctx.world}, {len(stage.data[stage.main_domain].train)} images, "
            f"batch {opts.batch_size}x{opts.grad_accum}x{ctx.world}, terms: {', '.join(terms)}"
            f"{protocol_note(opts)}")


def protocol_note(opts) -> str:
    """'; protocol X: the options that differ from ours', or '' for a plain ours run."""
    ours = {k: v[0] for k, v in {**PROTOCOL_TRAINING, **PROTOCOL_DATA}.items()}
    changed = [f"{k.replace('_', '-')}={getattr(opts, k)}" for k in ours if getattr(opts, k) != ours[k]]
    protocol = opts.protocol
    if protocol == "ours" and not changed:
        return ""
    return f"; protocol {protocol}" + (f" ({', '.join(changed)})" if changed else "")


# The options a resumed run must keep (or change with --allow-changes): what the checkpoint records
# of the run (input sizes, cameras, the data) and what its optimiser state was computed with.
RESUME_KEPT = ("scale", "data_root", "encoder", "batch_size", "lr")


def resume_changes(saved, opts) -> list[str]:
    """``"--scale 0.5 -> 0.25"`` for each of RESUME_KEPT that differs between the interrupted run's
    recorded options ``saved`` (a dict; None: an older resume state, nothing to compare) and ``opts``."""
    import os
    if not isinstance(saved, dict):
        return []
    out = []
    for key in RESUME_KEPT:
        if key not in saved:
            continue
        old, new = saved[key], getattr(opts, key)
        same = (os.path.realpath(str(old)) == os.path.realpath(str(new))) if key == "data_root" and old and new \
            else old == new
        if not same:
            out.append(f"--{key.replace('_', '-')} {old} -> {new}")
    return out
