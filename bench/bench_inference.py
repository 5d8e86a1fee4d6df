"""Inference speed (and fast-path accuracy) of Lifelong-MonoDepth.

    python bench/bench_inference.py --out runs/bench_inference.json              # speed, CPU, 2 threads
    python bench/bench_inference.py --accuracy --data-root datasets/synthetic    # + accuracy check
    python bench/bench_inference.py --quick                                      # smoke test (~1 min)

Speed, per input size (default NYU 228x304 and KITTI 352x1216), batch 1, random weights and random
prototypes of the right shape (timing does not depend on the weights):

(a) ``authors``: the authors' forward, ``net(x)``: trunk + every head, depth and uncertainty, fp32;
(b) ``ours fp32``: the product's path, ``DepthPredictor(fast=False).predict(x)``: trunk, prototype
    selection, the chosen head's depth branch only, fp32, no speed-ups;
(c) (b) with each speed-up alone and combined (channels_last, BN folding, fused oneDNN kernels with
    pre-packed weights, bf16/fp16 autocast or cast weights, TorchScript trace+freeze, torch.compile
    with ``--compile``); ``default`` is what ``DepthPredictor()`` does;
(d) the same function (trunk, selection, one depth branch) in ONNX Runtime and OpenVINO
    (``DepthPredictor(backend=...)``: float32 ONNX graphs of the trunk and the head).

``default`` is ``DepthPredictor()`` as the product runs it: the backend the CPU kind decides
(``models.runtimes.choose_backend``: OpenVINO bf16 on AMX, ONNX Runtime on AVX2-only CPUs, PyTorch
elsewhere; the title line names the kind and the choice); ``PyTorch fast path`` is PyTorch's own
default (``backend="torch"``) on every kind.

Rows are decided from what the machine supports (``models/hardware.py``): bf16 rows only where the
CPU has native bf16 (``--bf16`` forces them), fp16 rows only where it has native fp16 (``--fp16``),
runtime rows only where the runtime is installed; every skipped row is listed with its reason. The
table's title names the CPU and its capabilities. ``ONEDNN_MAX_CPU_ISA=AVX2`` in the environment
makes oneDNN (PyTorch's CPU convolutions) use its AVX2 code, an emulation of an AVX2-only CPU's
PyTorch path (ONNX Runtime and OpenVINO do not honour it).

Variants are interleaved round by round in one process (the machine may be shared: a slow moment
hits every variant alike) and the median over ``--repeats`` rounds after ``--warmup`` calls is
reported, with the speed-up over (a) as ratio of medians and as median of per-round ratios. The
variant table is measured at ``--variant-domains`` learned domains; the domain-scaling table runs
(a), (b) and the default path for every count in ``--domains``, and the cost of prototype
selection itself is timed separately (its growth is the only per-domain cost of our path).

``--accuracy``: RMSE and delta1 of the fast variants against the fp32 path on synthetic test images
(``python synthetic.py --out DIR --train 40 --test 30``) with a network that actually predicts depth:
``--checkpoint`` or, without one, a 3-head network fitted here for ``--fit-steps`` steps.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from inference.predictor import DepthPredictor  # noqa: E402
from inference.prototypes import DEFAULT_PROTO_IMAGES  # noqa: E402
from models import LifelongDepthNet  # noqa: E402
from models import hardware  # noqa: E402
from models.fast import lowp_supported, prepare_input, resolve_precision  # noqa: E402
from models.runtimes import available as runtime_available  # noqa: E402
from models.runtimes import choose_backend  # noqa: E402

# ------------------------------------------------------------------------------------------------
# Variants of the product's path: name -> DepthPredictor keyword options
# ------------------------------------------------------------------------------------------------
OURS_FP32 = "ours fp32 (no speed-ups)"
DEFAULT = "default: DepthPredictor() (auto backend + auto precision)"
TORCH_DEFAULT = "PyTorch fast path (cl + fold + fused kernels + auto precision)"
# fused_kernels is on by default with fast=True on a CPU: the "cl + fuse" rows turn it off so that
# each row adds one thing.
VARIANTS = {
    OURS_FP32: dict(fast=False),
    "+ channels_last": dict(fast=False, channels_last=True),
    "+ fuse Conv+BN": dict(fast=False, fuse_bn=True),
    "+ bf16 autocast": dict(fast=False, precision="bf16", cast_weights=False),
    "+ bf16 weights": dict(fast=False, precision="bf16"),
    "+ fp16 autocast": dict(fast=False, precision="fp16", cast_weights=False),
    "+ fp16 weights": dict(fast=False, precision="fp16"),
    "+ TorchScript trace+freeze": dict(fast=False, jit=True),
    "cl + fuse (fp32)": dict(fast=True, precision="fp32", fused_kernels=False),
    "cl + fuse + fused kernels (fp32)": dict(fast=True, precision="fp32", fused_kernels=True),
    "cl + fuse + bf16 autocast": dict(fast=True, precision="bf16", cast_weights=False,
                                      fused_kernels=False),
    "cl + fuse + fp16 weights": dict(fast=True, precision="fp16", fused_kernels=False),
    "cl + fuse + bf16 weights": dict(fast=True, precision="bf16", fused_kernels=False),
    "cl + fuse + bf16 weights + fused kernels": dict(fast=True, precision="bf16", fused_kernels=True),
    DEFAULT: dict(),  # exactly what the product runs: the backend and precision chosen for this CPU
    TORCH_DEFAULT: dict(fast=True, backend="torch"),  # PyTorch's own default: bf16 where native
    "default + TorchScript": dict(fast=True, jit=True),
    "default, with uncertainty": dict(fast=True),
    "ONNX Runtime fp32": dict(backend="onnxruntime"),
    "OpenVINO fp32": dict(backend="openvino", precision="fp32"),
    "OpenVINO bf16": dict(backend="openvino", precision="bf16"),
}
# --variants main: the product's path against the authors' and the other runtimes
MAIN_VARIANTS = (OURS_FP32, DEFAULT, TORCH_DEFAULT, "ONNX Runtime fp32", "OpenVINO fp32", "OpenVINO bf16")
WITH_UNCERTAINTY = {"default, with uncertainty"}
AUTHORS = "authors: all heads, both branches, fp32"
ACCURACY_VARIANTS = [DEFAULT, TORCH_DEFAULT, "OpenVINO bf16", "cl + fuse + bf16 weights", "cl + fuse + bf16 autocast",
                     "cl + fuse + fp16 weights", "cl + fuse (fp32)", "cl + fuse + fused kernels (fp32)",
                     "default + TorchScript", "ONNX Runtime fp32"]
# The product's accuracy condition: RMSE and delta1 on the synthetic test sets within 1 % of fp32,
# and the same head chosen as by fp32 for every test image.
ACCURACY_TOLERANCE_PCT = 1.0


def parse_sizes(text):
    out = []
    for item in str(text).split(","):
        h, w = (int(v) for v in item.lower().strip().split("x"))
        out.append((h, w))
    return out


def parse_ints(text):
    return [int(v) for v in str(text).split(",") if v.strip()]


# ------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------
class Timer:
    """Seconds of one call: perf_counter on CPU, CUDA events (with synchronisation) on CUDA;
    ``clock="cpu"``: the process's CPU seconds (all its threads, ``time.process_time``), which a
    shared machine's other jobs do not inflate the way they inflate wall time (with ``--threads 1``
    and OMP_WAIT_POLICY=PASSIVE it is the computation's own time; threads that spin count too)."""

    def __init__(self, device, clock: str = "wall"):
        self.device = torch.device(device)
        self.clock = time.process_time if clock == "cpu" else time.perf_counter

    def __call__(self, fn) -> float:
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(self.device)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(self.device)
            return start.elapsed_time(end) / 1000.0
        t0 = self.clock()
        fn()
        return self.clock() - t0


def interleaved(fns: dict, repeats: int, warmup: int, timer: Timer, progress=None) -> dict:
    """{name: [seconds per round]}: every round calls every function once, in turn."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for r in range(repeats):
        for name, fn in fns.items():
            times[name].append(timer(fn))
        if progress:
            progress(r + 1, repeats)
    return times


def summarize(times: dict, ref: str) -> dict:
    """Medians, minima and speed-ups over ``ref`` (ratio of medians, median of per-round ratios)."""
    out = {}
    ref_t = times[ref]
    ref_med = statistics.median(ref_t)
    for name, t in times.items():
        med = statistics.median(t)
        out[name] = {"median_s": med, "min_s": min(t), "times_s": t,
                     "speedup": ref_med / med,
                     "speedup_paired": statistics.median(a / b for a, b in zip(ref_t, t))}
    return out


def machine_info(device) -> dict:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"cpu": cpu, "logical_cpus": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "threads": torch.get_num_threads(),
            "device": str(device), "bf16_native": lowp_supported(torch.bfloat16, device),
            "fp16_native": lowp_supported(torch.float16, device),
            "default_precision": str(resolve_precision("auto", device)).replace("torch.", ""),
            "cpu_kind": hardware.cpu_kind(),
            "default_backend": choose_backend(resolve_precision("auto", device), device),
            "capabilities": hardware.capabilities(device),
            "capability_line": hardware.capability_line(device)}
    for name in ("onnxruntime", "openvino"):
        if runtime_available(name):
            info[name] = __import__(name).__version__
    try:
        info["loadavg_start"] = os.getloadavg()
    except OSError:
        pass
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def gflops(fn) -> float | None:
    try:
        from torch.utils.flop_counter import FlopCounterMode
        with FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops() / 1e9
    except Exception:  # flop counting is informative only
        return None


# ------------------------------------------------------------------------------------------------
# Networks, prototypes and predictors for timing
# ------------------------------------------------------------------------------------------------
def make_nets(domain_counts, encoder, device, seed=0):
    """{D: eval-mode net with D heads}; all share one set of trunk and head weights."""
    torch.manual_seed(seed)
    big = LifelongDepthNet(encoder=encoder, num_domains=max(domain_counts)).eval()
    nets = {}
    for d in domain_counts:
        net = LifelongDepthNet(encoder=encoder, num_domains=d)
        state = {k: v for k, v in big.state_dict().items()
                 if not k.startswith("task") or int(k.split(".")[0][4:]) < d}
        net.load_state_dict(state)
        nets[d] = net.to(device).eval()
    return nets


def random_prototypes(net, d, size, device, seed=0):
    """Prototypes of the right shapes (pooled (D, 2C), map [(C, h, w)] * D) near real features."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        feats = net.features(torch.randn(1, 3, *size, generator=g).to(device)).float().cpu()
    from inference.prototypes import pooled_descriptor
    pooled = pooled_descriptor(feats)
    return {"pooled": pooled + 0.1 * pooled.std() * torch.randn(d, pooled.shape[1], generator=g),
            "map": [feats[0] + 0.1 * torch.randn(feats.shape[1:], generator=g) for _ in range(d)]}


class CompiledPredictor(DepthPredictor):
    """DepthPredictor whose trunk and heads go through torch.compile (inductor)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._compiled_features = torch.compile(self.runner.features, dynamic=False)
        self._compiled_heads = {}

    def features(self, images):
        return self._compiled_features(images)

    def head(self, feats, d, with_uncertainty):
        key = (d, with_uncertainty)
        if key not in self._compiled_heads:
            head = self.runner.head(d)
            self._compiled_heads[key] = torch.compile(lambda f: head(f, with_uncertainty), dynamic=False)
        return self._compiled_heads[key](feats)


def skip_reason(name, args) -> str | None:
    """Why variant ``name`` is not run on this machine (None: it runs)."""
    opts = VARIANTS.get(name, {})
    backend = opts.get("backend", "torch")
    if backend != "torch":
        if args.device.type != "cpu":
            return f"{backend} rows run on a CPU only"
        if not runtime_available(backend):
            return f"{backend} is not installed (pip install -r requirements.txt)"
    precision = opts.get("precision")
    if precision == "bf16" and not (lowp_supported(torch.bfloat16, args.device) or args.bf16):
        how = ("oneDNN emulates it" if hardware.bf16_kernels() else "oneDNN has no bf16 kernels here")
        return f"no native bf16 on this {args.device.type} ({how}; --bf16 times it anyway)"
    if precision == "fp16" and not (lowp_supported(torch.float16, args.device) or args.fp16):
        return f"no native fp16 on this {args.device.type} (--fp16 times it anyway)"
    return None


def build_predictor(name, net, protos, device):
    if name.startswith("torch.compile"):
        # inductor does its own conv fusion: compile the plain ops, not the oneDNN calls
        opts = dict(VARIANTS[DEFAULT], fused_kernels=False) if "default" in name else dict(fast=False)
        return CompiledPredictor(net, protos, device=device, **opts)
    return DepthPredictor(net, protos, device=device, **VARIANTS[name])


def predictor_fn(pred, x, with_uncertainty=False):
    return lambda: pred.predict(x, domain=None, with_uncertainty=with_uncertainty)


# ------------------------------------------------------------------------------------------------
# Speed
# ------------------------------------------------------------------------------------------------
def say(*a, **kw):
    print(*a, **kw, file=sys.stderr, flush=True)


def bench_variants(args, size, nets, timer):
    """Every variant at ``args.variant_domains`` domains, interleaved."""
    d = args.variant_domains
    net = nets[d]
    x = torch.randn(args.batch, 3, *size).to(args.device)
    protos = random_prototypes(net, d, size, args.device)
    names = [n for n in VARIANTS if args.variants == "all" or n in MAIN_VARIANTS]
    skipped = {n: skip_reason(n, args) for n in names if skip_reason(n, args)}
    names = [n for n in names if n not in skipped]
    if args.compile:
        names += ["torch.compile (fp32)", "torch.compile (default)"]
    fns, build_s = {AUTHORS: lambda: net(x)}, {}
    for name in names:
        t0 = time.perf_counter()
        pred = build_predictor(name, net, protos, args.device)
        fn = predictor_fn(pred, x, name in WITH_UNCERTAINTY)
        fn()  # first call: lazy tracing / compiling
        build_s[name] = time.perf_counter() - t0
        fns[name] = fn
        say(f"  built {name} in {build_s[name]:.1f} s")
    with torch.no_grad():
        times = interleaved(fns, args.repeats, args.warmup, timer,
                            lambda r, n: say(f"  {size[0]}x{size[1]} variants: round {r}/{n}", end="\r"))
    say()
    rows = summarize(times, AUTHORS)
    for name in rows:
        rows[name]["setup_s"] = build_s.get(name, 0.0)
    with torch.no_grad():
        flops = {AUTHORS: gflops(lambda: net(x)),
                 OURS_FP32: gflops(lambda: net(x, domain=0, with_uncertainty=False))}
    return {"size": list(size), "domains": d, "batch": args.batch, "rows": rows, "skipped": skipped,
            "machine_line": f"{hardware.capability_line(args.device)}, {torch.get_num_threads()} threads",
            "gflop_per_image": {k: (v / args.batch if v else None) for k, v in flops.items()}}


def bench_scaling(args, size, nets, timer):
    """(a), (b) and the default path for every domain count, all interleaved."""
    x = torch.randn(args.batch, 3, *size).to(args.device)
    fns = {}
    for d, net in nets.items():
        protos = random_prototypes(net, d, size, args.device)
        fns[(AUTHORS, d)] = (lambda n: lambda: n(x))(net)
        for name in (OURS_FP32, DEFAULT):
            fns[(name, d)] = predictor_fn(build_predictor(name, net, protos, args.device), x)
    with torch.no_grad():
        times = interleaved(fns, args.repeats, args.warmup, timer,
                            lambda r, n: say(f"  {size[0]}x{size[1]} domains: round {r}/{n}", end="\r"))
    say()
    out = []
    for d in nets:
        ref = times[(AUTHORS, d)]
        sub = summarize({k[0]: v for k, v in times.items() if k[1] == d} | {AUTHORS: ref}, AUTHORS)
        out.append({"domains": d, "rows": sub})
    return {"size": list(size), "batch": args.batch, "by_domains": out,
            "per_domain_growth": growth(out), "select_cost": select_cost(args, size, nets, timer)}


def growth(by_domains):
    """Least-squares slope of median time over the domain count, relative to the 1st count."""
    res = {}
    ds = [r["domains"] for r in by_domains]
    if len(ds) < 2:
        return res
    for name in by_domains[0]["rows"]:
        ts = [r["rows"][name]["median_s"] for r in by_domains]
        md, mt = statistics.fmean(ds), statistics.fmean(ts)
        slope = sum((d - md) * (t - mt) for d, t in zip(ds, ts)) / sum((d - md) ** 2 for d in ds)
        base = mt - slope * (md - ds[0])  # fitted time at the smallest count
        res[name] = {"seconds_per_domain": slope, "percent_per_domain": 100.0 * slope / base}
    return res


def select_cost(args, size, nets, timer, reps=50):
    """Median seconds of prototype selection alone (``DepthPredictor.select`` of the default path,
    on its own features; both selectors) for each domain count."""
    out = {}
    x = torch.randn(args.batch, 3, *size).to(args.device)
    for d, net in nets.items():
        protos = random_prototypes(net, d, size, args.device)
        row = {}
        for selector in ("pooled", "map"):
            # selection is PyTorch's whatever the backend: time it on PyTorch's features
            pred = DepthPredictor(net, protos, selector=selector, device=args.device, **VARIANTS[TORCH_DEFAULT])
            with torch.no_grad():
                feats = pred.features(prepare_input(x, args.device, pred.channels_last, pred._input_dtype))
                fn = lambda: pred.select(feats)  # noqa: E731
                fn()
                row[selector] = statistics.median(timer(fn) for _ in range(reps))
        out[d] = row
    return out


# ------------------------------------------------------------------------------------------------
# Accuracy
# ------------------------------------------------------------------------------------------------
LETTERS = "NKS"


def fit_network(args):
    """A 3-head network fitted briefly on the synthetic training images (each domain its own head)."""
    from loaders import get_dataset, get_loader
    from losses import uncertainty_depth_loss
    torch.manual_seed(0)
    net = LifelongDepthNet(encoder=args.encoder, num_domains=len(LETTERS)).to(args.device).train()
    loaders = [get_loader(get_dataset(c, "train", args.data_root, train=True, scale=args.fit_scale),
                          batch_size=4, shuffle=True, workers=0, seed=i, drop_last=True)
               for i, c in enumerate(LETTERS)]
    iters = [iter(dl) for dl in loaders]
    opt = torch.optim.Adam(net.parameters(), lr=3e-4)
    t0 = time.perf_counter()
    for step in range(args.fit_steps):
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for i in range(len(LETTERS)):
            try:
                batch = next(iters[i])
            except StopIteration:
                iters[i] = iter(loaders[i])
                batch = next(iters[i])
            with torch.autocast(args.device.type, dtype=torch.bfloat16,
                                enabled=lowp_supported(torch.bfloat16, args.device)):
                d, u = net(batch["image"].to(args.device), domain=i)
            loss = uncertainty_depth_loss(d, u, batch["depth"].to(args.device))
            loss.backward()
            total += loss.item()
        opt.step()
        if (step + 1) % 10 == 0 or step == 0:
            say(f"  fit step {step + 1}/{args.fit_steps}: loss {total / len(LETTERS):.4f} "
                f"({time.perf_counter() - t0:.0f} s)", end="\r")
    say()
    net.eval()
    net.meta = {"domains": ["nyu", "kitti", "scannet"], "letters": LETTERS}
    return net


def accuracy(args):
    """Per domain: RMSE / delta1 / abs_rel of every accuracy variant vs the fp32 path."""
    from evaluation.evaluate import DomainEvaluator
    from base.domains import get_domain, load_domains_from_root
    from loaders import get_dataset, get_loader
    from inference.prototypes import compute_prototypes
    from models import load_checkpoint, save_checkpoint
    from models.checkpoint import checkpoint_meta
    load_domains_from_root(args.data_root)
    if args.checkpoint:
        net = load_checkpoint(args.checkpoint).to(args.device).eval()
        source = args.checkpoint
    else:
        net = fit_network(args)
        source = f"fitted here: {args.fit_steps} steps at scale {args.fit_scale}"
    meta = checkpoint_meta(net)
    letters = (meta.letters or LETTERS)[:net.num_domains]
    protos = meta.prototypes
    if not protos:  # the product's rule: replay rows, test transform, fp32 network
        loaders = [get_loader(get_dataset(c, "replay", args.data_root, train=False, scale=args.scale),
                              batch_size=4) for c in letters]
        protos = compute_prototypes(net, loaders, args.device, max_images=args.proto_images)
    if args.save_fit and not args.checkpoint:
        save_checkpoint(args.save_fit, net, prototypes=protos, domains=meta.domains,
                        letters=letters)
        say(f"  saved the fitted network to {args.save_fit}")
    variants = [n for n in ACCURACY_VARIANTS if not skip_reason(n, args)
                and (args.variants == "all" or n in MAIN_VARIANTS)]
    names = ["fp32"] + variants
    preds = {"fp32": DepthPredictor(net, protos, device=args.device, fast=False)}
    for name in variants:
        preds[name] = DepthPredictor(net, protos, device=args.device, **VARIANTS[name])
    result = {"source": source, "scale": args.scale, "domains": {}}
    for i, c in enumerate(letters):
        spec = get_domain(c)
        ds = get_dataset(c, "test", args.data_root, train=False, scale=args.scale)
        loader = get_loader(ds, batch_size=args.acc_batch)
        evals = {n: DomainEvaluator(spec, crop="default", cap=True) for n in names}
        agree = {n: 0 for n in names}
        correct = {n: 0 for n in names}
        diff_sq = {n: 0.0 for n in names}
        ref_sq, count = 0.0, 0
        for batch in loader:
            outs = {n: p.predict(batch["image"], domain=None) for n, p in preds.items()}
            ref = outs["fp32"]
            for n, o in outs.items():
                evals[n].add_batch(o["depth"].cpu(), batch["depth"], batch.get("window"))
                agree[n] += int((o["domain"] == ref["domain"]).sum())
                correct[n] += int((o["domain"] == i).sum())
                diff_sq[n] += float(((o["depth"] - ref["depth"]) ** 2).sum())
            ref_sq += float((ref["depth"] ** 2).sum())
            count += batch["image"].shape[0]
        rows = {}
        base = evals["fp32"].result()
        for n in names:
            r = evals[n].result()
            rows[n] = {"rmse": r["rmse"], "delta1": r["delta1"], "abs_rel": r["abs_rel"],
                       "rmse_change_pct": 100.0 * (r["rmse"] / base["rmse"] - 1.0),
                       "delta1_change_pct": 100.0 * (r["delta1"] / base["delta1"] - 1.0)
                       if base["delta1"] else 0.0,
                       "rel_rmse_vs_fp32_output": (diff_sq[n] / max(ref_sq, 1e-30)) ** 0.5,
                       "domain_agreement": agree[n] / count, "domain_accuracy": correct[n] / count}
            rows[n]["within_tolerance"] = (abs(rows[n]["rmse_change_pct"]) <= ACCURACY_TOLERANCE_PCT
                                           and abs(rows[n]["delta1_change_pct"]) <= ACCURACY_TOLERANCE_PCT
                                           and agree[n] == count)
        result["domains"][c] = {"images": count, "size": list(ds[0]["image"].shape[-2:]), "rows": rows}
    result["default_within_tolerance"] = all(d["rows"][DEFAULT]["within_tolerance"]
                                             for d in result["domains"].values())
    return result


# ------------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------------
def ms(s):
    return f"{1000 * s:.1f}"


def variants_table(res) -> str:
    h, w = res["size"]
    fl = res.get("gflop_per_image") or {}
    lines = [f"**{h}x{w}, {res['domains']} domains, batch {res['batch']}** on {res.get('machine_line', '?')} "
             f"(GFLOP/image: authors {fl.get(AUTHORS) or 0:.1f}, ours {fl.get(OURS_FP32) or 0:.1f})", "",
             "| variant | median ms | min ms | speed-up vs authors (ratio of medians / paired) | set-up s |",
             "|---|---:|---:|---:|---:|"]
    for name, r in res["rows"].items():
        lines.append(f"| {name} | {ms(r['median_s'])} | {ms(r['min_s'])} | "
                     f"{r['speedup']:.2f}x / {r['speedup_paired']:.2f}x | {r.get('setup_s', 0):.1f} |")
    if res.get("skipped"):
        lines += [""] + [f"Skipped: {name}: {why}." for name, why in res["skipped"].items()]
    return "\n".join(lines)


def scaling_table(res) -> str:
    h, w = res["size"]
    lines = [f"**{h}x{w}, batch {res['batch']}: time per image (ms) by learned domains**", "",
             "| domains | authors (a) | ours fp32 (b) | ours default | default vs (a) | "
             "select pooled ms | select map ms |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["by_domains"]:
        rows, d = r["rows"], r["domains"]
        sel = res["select_cost"][d]
        lines.append(f"| {d} | {ms(rows[AUTHORS]['median_s'])} | {ms(rows[OURS_FP32]['median_s'])} | "
                     f"{ms(rows[DEFAULT]['median_s'])} | {rows[DEFAULT]['speedup']:.2f}x "
                     f"(paired {rows[DEFAULT]['speedup_paired']:.2f}x) | {sel['pooled'] * 1000:.3f} | "
                     f"{sel['map'] * 1000:.3f} |")
    g = res["per_domain_growth"]
    if g:
        lines += ["", "Growth per added domain (least-squares slope of the medians): " + "; ".join(
            f"{k.split(':')[0]}: {v['seconds_per_domain'] * 1000:+.2f} ms ({v['percent_per_domain']:+.2f} %)"
            for k, v in g.items())]
    return "\n".join(lines)


def accuracy_table(res) -> str:
    lines = [f"**Accuracy of the fast paths vs fp32** (network: {res['source']}; synthetic test images, "
             f"automatic domain selection, cap + default crop)", "",
             "| domain | variant | RMSE | dRMSE % | delta1 | d delta1 % | abs_rel | rel. RMSE vs fp32 output | "
             f"same domain as fp32 | selection acc. | within {ACCURACY_TOLERANCE_PCT:g} % |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for c, dres in res["domains"].items():
        for n, r in dres["rows"].items():
            lines.append(f"| {c} ({dres['images']} img, {dres['size'][0]}x{dres['size'][1]}) | {n} | "
                         f"{r['rmse']:.4f} | {r['rmse_change_pct']:+.3f} | {r['delta1']:.4f} | "
                         f"{r['delta1_change_pct']:+.3f} | {r['abs_rel']:.4f} | "
                         f"{r['rel_rmse_vs_fp32_output']:.2e} | {r['domain_agreement']:.3f} | "
                         f"{r['domain_accuracy']:.3f} | {'yes' if r['within_tolerance'] else 'NO'} |")
    verdict = "meets" if res["default_within_tolerance"] else "FAILS"
    lines += ["", f"The default path {verdict} the accuracy condition (RMSE and delta1 within "
                  f"{ACCURACY_TOLERANCE_PCT:g} % of fp32 on every domain, the same head as fp32 "
                  f"for every test image)."]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
def write_report(report: dict, texts: list, out) -> None:
    """The report's markdown (``texts`` joined) into ``report``, and ``report`` as JSON to ``out``."""
    report["markdown"] = "\n\n".join(texts)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w") as f:
            json.dump(report, f, indent=1, default=str)
        say(f"wrote {out}")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sizes", default="228x304,352x1216", help="input sizes HxW, comma-separated")
    p.add_argument("--heads", "--domains", dest="domains", metavar="COUNTS", default="1,2,3,4,5",
                   help="learned-domain (head) counts of the scaling table (--domains: the old, deprecated spelling)")
    p.add_argument("--variant-domains", type=int, default=3,
                   help="domain count at which every speed-up variant is timed")
    p.add_argument("--variants", choices=["all", "main"], default="all",
                   help="all speed-up variants, or only (a), (b), the default path, PyTorch's fast path and the "
                        "runtimes (also the rows of --accuracy)")
    p.add_argument("--repeats", type=int, default=15, help="timed rounds (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls of each variant first")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="what a call's time is on a CPU: wall time (default), or the process's CPU "
                        "seconds (for a shared machine; use with --threads 1)")
    p.add_argument("--batch", type=int, default=1, help="images per call")
    p.add_argument("--encoder", default="resnet34")
    p.add_argument("--bf16", action="store_true",
                   help="time bf16 variants even where the CPU has no native bf16 kernels")
    p.add_argument("--fp16", action="store_true",
                   help="time fp16 variants even where the CPU has no native fp16 kernels")
    p.add_argument("--compile", action="store_true",
                   help="also time torch.compile (inductor); compiling takes ~1 min per shape on 2 cores")
    p.add_argument("--no-speed", action="store_true", help="skip the timing (e.g. with --accuracy)")
    p.add_argument("--no-scaling", action="store_true", help="skip the domain-scaling table")
    p.add_argument("--accuracy", action="store_true", help="also run the fp32-vs-fast accuracy check")
    p.add_argument("--data-root", default="datasets/synthetic", help="synthetic data for --accuracy")
    p.add_argument("--checkpoint", default=None, help="network for --accuracy (default: fit one here)")
    p.add_argument("--fit-steps", type=int, default=150, help="steps of the network fitted for --accuracy")
    p.add_argument("--fit-scale", type=float, default=0.5, help="input scale of that fit")
    p.add_argument("--save-fit", default=None, help="save the fitted network (reuse with --checkpoint)")
    p.add_argument("--scale", type=float, default=1.0, help="input scale of the accuracy test images")
    p.add_argument("--acc-batch", type=int, default=4, help="batch size of the accuracy check")
    p.add_argument("--proto-images", type=int, default=DEFAULT_PROTO_IMAGES, help="images per domain for prototypes")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: small sizes, 1 and 3 domains, 2 repeats, short fit")
    p.add_argument("--out", default="runs/bench_inference.json", help="write all results as JSON here")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.quick:
        args.sizes, args.domains, args.repeats, args.warmup = "64x96", "1,3", 2, 1
        args.fit_steps, args.fit_scale, args.scale, args.proto_images = 3, 0.25, 0.25, 8
    torch.set_num_threads(args.threads)
    args.device = torch.device(args.device)
    timer = Timer(args.device, args.clock)
    sizes, counts = parse_sizes(args.sizes), sorted(set(parse_ints(args.domains)))
    report = {"machine": machine_info(args.device), "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
              "args": {k: str(v) for k, v in vars(args).items()}, "variants": [], "scaling": []}
    m = report["machine"]
    runtimes = ", ".join(f"{k} {m[k]}" for k in ("onnxruntime", "openvino") if k in m) or "none"
    texts = [f"Machine: {m['capability_line']}, {m['threads']} threads, torch {m['torch']}, other "
             f"runtimes: {runtimes}; device {args.device}, CPU kind {m['cpu_kind']}, default precision "
             f"{m['default_precision']}, default backend {m['default_backend'][0]} ({m['default_backend'][1]}); "
             f"command: `python bench/{report['command']}`"]
    print(texts[0], flush=True)
    if not args.no_speed:
        nets = make_nets(sorted(set(counts) | {args.variant_domains}), args.encoder, args.device)
        for size in sizes:
            say(f"{size[0]}x{size[1]}: variants at {args.variant_domains} domains")
            res = bench_variants(args, size, nets, timer)
            report["variants"].append(res)
            texts.append(variants_table(res))
            print("\n" + texts[-1], flush=True)
            if not args.no_scaling:
                say(f"{size[0]}x{size[1]}: scaling over {counts} domains")
                res = bench_scaling(args, size, {d: nets[d] for d in counts}, timer)
                report["scaling"].append(res)
                texts.append(scaling_table(res))
                print("\n" + texts[-1], flush=True)
    if args.accuracy:
        say("accuracy check")
        report["accuracy"] = accuracy(args)
        texts.append(accuracy_table(report["accuracy"]))
        print("\n" + texts[-1], flush=True)
    try:
        report["machine"]["loadavg_end"] = os.getloadavg()
    except OSError:
        pass
    write_report(report, texts, args.out)
    if args.accuracy and not report["accuracy"]["default_within_tolerance"]:
        say(f"error: the default path is not within {ACCURACY_TOLERANCE_PCT:g} % of fp32 (see the table)")
        raise SystemExit(1)
    return report


if __name__ == "__main__":
    main()
