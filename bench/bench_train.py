"""Training speed of a third stage (learning a 3rd domain on top of a 2-domain model), CPU or CUDA.

    python bench/bench_train.py --out runs/bench_train.json                      # scales 1.0 and 0.5
    python bench/bench_train.py --loader --data-root datasets/synthetic          # + data loader speed
    python bench/bench_train.py --quick                                          # smoke test

One step of ``ours`` is timed through the product's code: ``engine.stage.Stage.train_step`` (hence
``Stage.micro_batch`` and ``engine.stage.StageLoss``) on a stage object holding a 3-head student, the
frozen 2-head teacher (evaluated under ``no_grad``), Adam, the paper's weights (10, 100), batch 4 of
the new domain plus one replay batch of 4 per old domain, each through its own head.

The reference step follows the authors' ``train_NKS.py``: the teacher is the previous model in eval
mode but *not* frozen and not under ``no_grad`` (its outputs enter the loss undetached, so backward
runs through the teacher too), the student computes every head (depth and uncertainty) for the new
batch, and each replay batch goes through the whole student (every head), of which one head's
outputs are used.

Variants of ours: fp32 with the teacher a plain frozen copy (the engine before its teacher became
an inference copy); fp32 (the engine's teacher, ``engine.model.make_teacher``: BN folded, fused CPU
kernels); channels_last; bf16 autocast (``--precision bf16``, teacher weights cast to bf16 once);
bf16 + channels_last. Steps are
interleaved round by round; medians of ``--repeats`` rounds after ``--warmup`` steps. Inputs are
pre-made random tensors (the loader is measured separately with ``--loader``).
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (str(ROOT), str(ROOT / "bench")):
    if p not in sys.path:
        sys.path.insert(0, p)

import torch  # noqa: E402

from base.images import scaled_size  # noqa: E402
from bench_inference import Timer, interleaved, machine_info, say, summarize, write_report  # noqa: E402
from losses import uncertainty_depth_loss  # noqa: E402
from models import LifelongDepthNet  # noqa: E402
from models.fast import channels_last_batch, lowp_supported, to_channels_last  # noqa: E402

WEIGHTS = [10.0, 100.0]  # the paper's weights of the 1st and 2nd domain's terms in a third stage
NYU_SIZE = (228, 304)
REFERENCE = "reference (authors' procedure)"


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------
def random_batch(batch, size, device, seed, sparse=False):
    """A loader-like batch: normalized image and positive depth (KITTI-like 7 % valid if sparse)."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, 3, *size, generator=g)
    depth = 0.5 + 9.5 * torch.rand(batch, 1, *size, generator=g)
    keep = torch.rand(batch, 1, *size, generator=g) < (0.07 if sparse else 0.95)
    return {"image": image.to(device), "depth": (depth * keep).to(device)}


# ------------------------------------------------------------------------------------------------
# Networks
# ------------------------------------------------------------------------------------------------
def make_models(encoder, device, seed=0):
    """(3-head student in train mode, 2-head prior model in eval mode) with equal shared weights."""
    torch.manual_seed(seed)
    prior = LifelongDepthNet(encoder=encoder, num_domains=2).to(device).eval()
    student = copy.deepcopy(prior)
    student.add_domain()
    return student.train(), prior


# ------------------------------------------------------------------------------------------------
# Ours: the product's Stage.train_step
# ------------------------------------------------------------------------------------------------
def make_stage(encoder, device, amp_dtype=None, channels_last=False, plain_teacher=False, seed=0):
    """An engine.stage.Stage with only what train_step needs (no data, no checkpoints); its teacher
    is the engine's (``engine.model.make_teacher``) unless ``plain_teacher`` (a frozen fp32 deep copy,
    as the engine had it before)."""
    from engine.model import make_teacher
    from engine.options import StageOptions
    from engine.processes import Dist, StopSignals
    from engine.stage import Stage, StageLoss
    student, prior = make_models(encoder, device, seed)
    if plain_teacher:
        teacher = copy.deepcopy(prior).eval().requires_grad_(False)
    else:
        teacher = make_teacher(prior, device, amp_dtype)
    if channels_last:
        to_channels_last(student)
    stage = Stage.__new__(Stage)
    stage.ctx = Dist(torch.device(device).type)
    stage.net, stage.teacher, stage.new_head = student, teacher, 2
    stage.distill_w, stage.replay_w, stage.replay_heads = list(WEIGHTS), list(WEIGHTS), [0, 1]
    stage.amp_dtype, stage.channels_last = amp_dtype, channels_last
    stage.scaler = torch.amp.GradScaler(torch.device(device).type, enabled=False)
    stage.signals = StopSignals()  # train_step shields its optimiser step from Ctrl-C
    # the step counters and the non-finite-loss policy train_step keeps and reads
    stage.epoch = stage.step_in_epoch = stage.global_step = stage.skipped_steps = 0
    stage.batch_files, stage.bn_snapshot = [], None
    stage.opts = StageOptions(on_nonfinite="stop")
    stage.loss = stage.step_module = StageLoss(student, 2, stage.distill_w, stage.replay_w,
                                                 stage.replay_heads)
    trainable = [p for p in student.parameters() if p.requires_grad]
    stage.optim = torch.optim.Adam(trainable, lr=1e-4, weight_decay=1e-4)
    return stage


def ours_step(stage, batch, replay, channels_last=False):
    if channels_last:
        batch, replay = channels_last_batch(batch), [channels_last_batch(b) for b in replay]
    return lambda: stage.train_step([(batch, replay)])


# ------------------------------------------------------------------------------------------------
# Reference: the authors' train_NKS.py step
# ------------------------------------------------------------------------------------------------
def authors_distill(p, u, p_old, u_old):
    """Their distillation term, teacher outputs *not* detached."""
    m, mu = p_old.median(), u_old.median()
    return ((p / m - p_old / m).abs() + (u / mu - u_old / mu).abs()).mean()


def reference_step(encoder, device, batch, replay, seed=0):
    student, teacher = make_models(encoder, device, seed)
    teacher.eval()  # net_.eval(); parameters still require grad, no torch.no_grad()
    optim = torch.optim.Adam(student.parameters(), lr=1e-4, weight_decay=1e-4)

    def step():
        optim.zero_grad()
        out = student(batch["image"])           # every head, depth and uncertainty
        out_ = teacher(batch["image"])          # the old model, every head, with autograd
        loss = uncertainty_depth_loss(*out[2], batch["depth"])
        for j in range(2):
            loss = loss + WEIGHTS[j] * authors_distill(*out[j], *out_[j])
        for j, r in enumerate(replay):
            r_out = student(r["image"])         # the whole network for each replay batch
            loss = loss + WEIGHTS[j] * uncertainty_depth_loss(*r_out[j], r["depth"])
        loss.backward()
        optim.step()
        return loss.item()
    return step


# ------------------------------------------------------------------------------------------------
# Benchmarks
# ------------------------------------------------------------------------------------------------
PLAIN_TEACHER = "ours fp32, plain frozen teacher"


def engine_default(device) -> str | None:
    """The variant that is the engine's default (``--precision auto``) on ``device``; None where that
    default (float16 on a CUDA GPU without bf16) is not among the variants."""
    from engine.processes import amp_settings
    dtype = amp_settings("auto", torch.device(device))[0]
    return {None: "ours fp32", torch.bfloat16: "ours bf16 autocast"}.get(dtype)


def variants(device):
    out = {PLAIN_TEACHER: dict(plain_teacher=True), "ours fp32": dict(),
           "ours channels_last": dict(channels_last=True)}
    if torch.device(device).type == "cuda" or lowp_supported(torch.bfloat16, device):
        out["ours bf16 autocast"] = dict(amp_dtype=torch.bfloat16)
        out["ours bf16 + channels_last"] = dict(amp_dtype=torch.bfloat16, channels_last=True)
    return out


def skipped_variants(device) -> dict:
    """{variant: why} for the variants this device does not run (bf16 without native kernels)."""
    if torch.device(device).type == "cuda" or lowp_supported(torch.bfloat16, device):
        return {}
    why = "no native bf16 on this CPU (bf16 autocast would be emulated, slower than fp32)"
    return {"ours bf16 autocast": why, "ours bf16 + channels_last": why}


def bench_step(args, scale, timer):
    size = scaled_size(NYU_SIZE, scale)
    b = args.batch_size
    batch = random_batch(b, size, args.device, 0)
    replay = [random_batch(b, size, args.device, 1), random_batch(b, size, args.device, 2, sparse=True)]
    fns = {REFERENCE: reference_step(args.encoder, args.device, batch, replay)}
    default = engine_default(args.device)
    for name, opts in variants(args.device).items():
        if args.variants == "main" and name not in ("ours fp32", default):
            continue
        stage = make_stage(args.encoder, args.device, **opts)
        fns[name] = ours_step(stage, batch, replay, opts.get("channels_last", False))
    times = interleaved(fns, args.repeats, args.warmup, timer,
                        lambda r, n: say(f"  scale {scale}: round {r}/{n}", end="\r"))
    say()
    rows = summarize(times, REFERENCE)
    new_images, all_images = b, b * 3
    for r in rows.values():
        r["new_images_per_s"] = new_images / r["median_s"]
        r["images_per_s"] = all_images / r["median_s"]
    return {"scale": scale, "size": list(size), "batch": b, "rows": rows,
            "engine_default": default,
            "note": f"per step: {b} new-domain images + {b} replay images of each of 2 old domains"}


def profile_steps(args, scale, top=12) -> str:
    """Where one step's time goes: torch.profiler's operators by self CPU time (``--profile``), for
    the engine's fp32 step and, where bf16 is native, the bf16 step; markdown."""
    from torch.profiler import ProfilerActivity, profile
    size = scaled_size(NYU_SIZE, scale)
    b = args.batch_size
    batch = random_batch(b, size, args.device, 0)
    replay = [random_batch(b, size, args.device, 1), random_batch(b, size, args.device, 2, sparse=True)]
    texts = []
    for name, opts in variants(args.device).items():
        if name not in ("ours fp32", "ours bf16 autocast"):
            continue
        step = ours_step(make_stage(args.encoder, args.device, **opts), batch, replay)
        for _ in range(max(1, args.warmup)):
            step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events) or 1.0
        lines = [f"**Profile of one step: {name}, scale {scale} ({size[0]}x{size[1]})** "
                 f"({total / 1e6:.2f} s of operator self time)", "",
                 "| operator | self s | share | calls |", "|---|---:|---:|---:|"]
        for e in events[:top]:
            lines.append(f"| `{e.key}` | {e.self_cpu_time_total / 1e6:.3f} | "
                         f"{100 * e.self_cpu_time_total / total:.1f} % | {e.count} |")
        texts.append("\n".join(lines))
    return "\n\n".join(texts)


def bench_loader(args):
    """Images/s of loaders.get_dataset(train transform) + get_loader for each domain and worker count."""
    from loaders import get_dataset, get_loader
    out = {}
    for c in args.loader_domains:
        ds = get_dataset(c, "train", args.data_root, train=True, scale=args.loader_scale)
        for workers in args.loader_workers:
            dl = get_loader(ds, batch_size=args.batch_size, shuffle=True, workers=workers, seed=0,
                            drop_last=True)
            n_batches = min(args.loader_batches, len(dl))
            it = iter(dl)
            t_first = time.perf_counter()
            next(it)  # worker start-up and the first batch, not counted below
            t0 = time.perf_counter()
            for _ in range(n_batches - 1):
                next(it)
            dt = time.perf_counter() - t0
            del it, dl
            n = (n_batches - 1) * args.batch_size
            out[f"{c}/{workers}"] = {"domain": c, "workers": workers, "images": n,
                                     "images_per_s": n / dt if dt > 0 else None,
                                     "startup_s": t0 - t_first,
                                     "size": list(ds[0]["image"].shape[-2:])}
            say(f"  loader {c} workers={workers}: {n / dt:.1f} img/s")
    return out


# ------------------------------------------------------------------------------------------------
def step_table(res) -> str:
    h, w = res["size"]
    lines = [f"**Third-stage training step, scale {res['scale']} ({h}x{w}), batch {res['batch']}** "
             f"({res['note']})", "",
             "| step | median s | min s | new img/s | all img/s | speed-up vs reference (medians / paired) |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r in res["rows"].items():
        if name == res.get("engine_default"):
            name = f"**{name}** (the engine's default here, `--precision auto`)"
        lines.append(f"| {name} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['new_images_per_s']:.2f} | "
                     f"{r['images_per_s']:.2f} | {r['speedup']:.2f}x / {r['speedup_paired']:.2f}x |")
    return "\n".join(lines)


def loader_table(res, steps) -> str:
    lines = ["**Data loader (train transform, batch 4) vs the training step**", "",
             "| domain | workers | crop | img/s |", "|---|---:|---|---:|"]
    for r in res.values():
        lines.append(f"| {r['domain']} | {r['workers']} | {r['size'][0]}x{r['size'][1]} | "
                     f"{r['images_per_s']:.1f} |")
    if steps:
        need = []
        for s in steps:
            best = max(s["rows"].items(), key=lambda kv: kv[1]["images_per_s"])
            need.append(f"scale {s['scale']}: fastest step ({best[0]}) consumes "
                        f"{best[1]['images_per_s']:.1f} img/s (all three loaders together)")
        lines += ["", "; ".join(need)]
    return "\n".join(lines)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--scales", default="1.0,0.5", help="input scales (1.0 = 228x304)")
    p.add_argument("--batch-size", type=int, default=4, help="images per batch (third stage: 4)")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per variant (median)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per variant first")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="a step's time on a CPU: wall time (default), or the process's CPU seconds "
                        "(for a shared machine; they add up over threads)")
    p.add_argument("--encoder", default="resnet34")
    p.add_argument("--variants", choices=["all", "main"], default="all")
    p.add_argument("--no-step", action="store_true", help="skip the step timing")
    p.add_argument("--profile", action="store_true",
                   help="also profile one step (fp32, and bf16 where native) at the first scale: "
                        "operators by self CPU time")
    p.add_argument("--loader", action="store_true", help="also time the data loader")
    p.add_argument("--data-root", default="datasets/synthetic", help="synthetic data for --loader")
    p.add_argument("--loader-domains", default="NKS")
    p.add_argument("--loader-workers", default="0,2")
    p.add_argument("--loader-batches", type=int, default=10, help="batches read per measurement")
    p.add_argument("--loader-scale", type=float, default=1.0)
    p.add_argument("--quick", action="store_true", help="smoke test: scale 0.25, 1 round, resnet18")
    p.add_argument("--out", default="runs/bench_train.json", help="write the results as JSON here")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.quick:
        args.scales, args.repeats, args.warmup, args.encoder = "0.25", 1, 1, "resnet18"
        args.loader_batches, args.loader_scale = 3, 0.25
    torch.set_num_threads(args.threads)
    args.device = torch.device(args.device)
    args.loader_domains = list(args.loader_domains)
    args.loader_workers = [int(v) for v in args.loader_workers.split(",")]
    timer = Timer(args.device, args.clock)
    report = {"machine": machine_info(args.device),
              "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
              "args": {k: str(v) for k, v in vars(args).items()}, "steps": []}
    texts = [f"Machine: {report['machine']['capability_line']}, {report['machine']['threads']} threads, torch "
             f"{report['machine']['torch']}, device {args.device}; command: `python bench/{report['command']}`"]
    skipped = skipped_variants(args.device)
    if skipped:
        texts[0] += "\n\n" + "\n".join(f"Skipped: {name}: {why}." for name, why in skipped.items())
    report["skipped"] = skipped
    if not args.no_step:
        for scale in (float(s) for s in args.scales.split(",")):
            res = bench_step(args, scale, timer)
            report["steps"].append(res)
            texts.append(step_table(res))
            print("\n" + texts[-1], flush=True)
    if args.profile:
        texts.append(profile_steps(args, float(args.scales.split(",")[0])))
        print("\n" + texts[-1], flush=True)
    if args.loader:
        report["loader"] = bench_loader(args)
        texts.append(loader_table(report["loader"], report["steps"]))
        print("\n" + texts[-1], flush=True)
    write_report(report, texts, args.out)
    return report


if __name__ == "__main__":
    main()
