"""The data of a stage and its order: samplers that emulate K processes and start mid-epoch
(``StepSampler``), per-sample seeded augmentation (``SeededSamples``), replay streams
(``CyclingLoader``, ``EpochReplayLoader``), the held-out validation rows (``loaders.split_validation``) and
a domain's datasets (``DomainData``)."""
from __future__ import annotations

import torch
from torch.utils.data import DistributedSampler, Subset

from base.errors import InputError
from engine.options import data_options, drop_last
from loaders import get_dataset, get_loader, split_validation


def loader_message(exc: BaseException) -> str:
    """The message of a data error, also when a data-loader worker raised it (the main process then
    gets the worker's traceback as text, whose last line is ``module.Error: message``)."""
    text = str(exc).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text


class StepSampler(DistributedSampler):
    """Indices for ``batch_size``-sized micro-batches of this process, ``accum`` per step.

    The epoch's permutation is DistributedSampler's (seed + epoch, same on every rank). With
    ``world`` processes and ``accum`` micro-batches, there are ``world * accum`` virtual ranks;
    micro-batch k of step s on rank r is virtual rank ``r * accum + k``'s s-th batch. One process
    with accum=2 therefore sees exactly the samples that two processes with accum=1 see, which makes
    runs comparable across world sizes. ``start_step`` skips steps already done (resume).
    """

    def __init__(self, dataset, batch_size, world=1, rank=0, accum=1, seed=0, shuffle=True,
                 partial=False):
        super().__init__(dataset, num_replicas=world * accum, rank=rank * accum,
                         shuffle=shuffle, seed=seed, drop_last=True)
        self.batch_size, self.accum, self.first_rank = batch_size, accum, rank * accum
        self.start_step = 0
        # partial: the last, smaller batch is a step too (--no-drop-last; one virtual rank only)
        self.partial = bool(partial)

    def steps_per_epoch(self) -> int:
        if self.partial:
            return -(-self.num_samples // self.batch_size)
        return self.num_samples // self.batch_size

    def _shard(self, virtual_rank: int) -> list[int]:
        self.rank = virtual_rank
        return list(super().__iter__())

    def __iter__(self):
        shards = [self._shard(self.first_rank + k) for k in range(self.accum)]
        self.rank = self.first_rank
        b = self.batch_size
        for step in range(self.start_step, self.steps_per_epoch()):
            for shard in shards:
                yield from shard[step * b:(step + 1) * b]

    def __len__(self):
        return (self.steps_per_epoch() - self.start_step) * self.batch_size * self.accum


class SeededSamples(torch.utils.data.Dataset):
    """Each sample's augmentation drawn from its own seed (seed, epoch, index).

    The transforms draw from torch's RNG; seeding it per sample makes a sample's augmentation
    independent of the worker that loads it, of the number of processes, and of where a resumed
    run starts, so an interrupted-and-resumed run or a 2-process run repeats the same arithmetic.
    """

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + self.epoch * 10_007 + index) % 2**63)
            return self.dataset[index]


class CyclingLoader:
    """Endless micro-batches of a (replay) dataset: a new epoch of its sampler when one runs out.
    The upstream code stopped replaying once its replay loader ran out; we cycle instead."""

    def __init__(self, dataset, opts, ctx, salt: int):
        dataset = SeededSamples(dataset, opts.seed + 1000 * salt)
        self.sampler = StepSampler(dataset, opts.batch_size, ctx.world, ctx.rank, opts.grad_accum,
                                   seed=opts.seed + 1000 * salt, partial=not drop_last(opts))
        if self.sampler.steps_per_epoch() == 0:
            raise InputError(f"a replay/joint set of {len(dataset)} samples is too few for batches "
                             f"of {opts.batch_size} on {ctx.world * opts.grad_accum} (virtual) processes; "
                             f"lower --batch-size or raise --replay-size")
        self.dataset, self.opts, self.ctx, self.salt = dataset, opts, ctx, salt
        self.epoch, self.iterator = 0, None

    def seek(self, steps_done: int) -> None:
        """Continue after ``steps_done`` optimiser steps (resume): each step took one sampler step."""
        per_epoch = self.sampler.steps_per_epoch()
        self.epoch, self.sampler.start_step = divmod(steps_done, per_epoch)
        self.iterator = None

    def _start_iterator(self) -> None:
        """A fresh pass over the dataset for ``self.epoch`` (sampler and augmentation seeded by it)."""
        self.sampler.set_epoch(self.epoch)
        self.dataset.epoch = self.epoch
        self.iterator = iter(make_loader(self.dataset, self.sampler, self.opts, self.ctx,
                                         seed=self.opts.seed + 1000 * self.salt + self.epoch))

    def next(self):
        while True:
            if self.iterator is None:
                self._start_iterator()
            try:
                return next(self.iterator)
            except StopIteration:
                self.epoch, self.iterator = self.epoch + 1, None
                self.sampler.start_step = 0


class EpochReplayLoader(CyclingLoader):
    """--replay-exhaust authors: upstream's replay. Each epoch of the new domain starts a fresh
    pass over the buffer (upstream calls iter() per epoch); once it is used up, ``next`` returns
    None for the rest of that epoch (upstream's StopIteration branch: no replay, and its third
    stage drops the second domain's distillation weight from 100 to 10)."""

    def start_epoch(self, epoch: int, steps_done: int = 0) -> None:
        self.epoch, self.iterator = epoch, None
        self.sampler.start_step = min(steps_done, self.sampler.steps_per_epoch())
        self.exhausted = False

    def seek(self, steps_done: int) -> None:
        pass  # the position is set per epoch by start_epoch

    def next(self):
        if getattr(self, "exhausted", False):
            return None
        if self.iterator is None:
            self._start_iterator()
        try:
            return next(self.iterator)
        except StopIteration:
            self.exhausted = True
            return None


def make_loader(dataset, sampler, opts, ctx, seed: int):
    return get_loader(dataset, batch_size=opts.batch_size, workers=opts.workers,
                      device=ctx.device.type, seed=seed, drop_last=drop_last(opts), sampler=sampler)




class DomainData:
    """The datasets of one domain for a stage: training rows, replay buffer and validation rows."""

    def __init__(self, spec, opts):
        self.spec = spec
        root, scale = opts.data_root, opts.scale
        self.train_full = get_dataset(spec.letter, "train", root, train=True, scale=scale, **data_options(opts))
        self.replay_full = get_dataset(spec.letter, "replay", root, train=True, scale=scale, **data_options(opts))
        if len(self.replay_full) == 0 and opts.replay_size > 0:
            raise InputError(f"{self.replay_full.csv_file}: the replay index of {spec.name} has no rows; "
                             f"draw it from the training rows with `python prepare_data.py replay --domain "
                             f"{spec.letter} --data-root {root}`")
        replay_rows = {row.image for row in self.replay_full.rows}
        train_idx, val_idx = split_validation(self.train_full, replay_rows, opts.val_images,
                                              opts.val_seed)
        self.train = Subset(self.train_full, train_idx)
        self.replay = Subset(self.replay_full, range(min(opts.replay_size, len(self.replay_full))))
        self.val = (Subset(get_dataset(spec.letter, "train", root, train=False, scale=scale,
                                       **data_options(opts)), val_idx) if val_idx else None)

    def prototype_set(self, opts):
        """Deterministic (test-transform) images for this domain's prototype: its replay rows."""
        ds = get_dataset(self.spec.letter, "replay", opts.data_root, train=False, scale=opts.scale,
                         **data_options(opts))
        return Subset(ds, range(min(opts.proto_images, len(ds))))
