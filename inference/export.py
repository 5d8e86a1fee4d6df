"""Export a Lifelong-MonoDepth checkpoint as one self-contained TorchScript or ONNX file.

    python export.py --checkpoint runs/NKS.pth.tar --out runs/NKS.ts                 # automatic domain
    python export.py --checkpoint runs/NKS.pth.tar --out runs/NKS_K.ts --domain K    # fixed head
    python export.py --checkpoint runs/NKS.pth.tar --out runs/NKS.ts --uncertainty
    python export.py --checkpoint NKS.pth.tar --order NKS --domain 0 --out NKS_N.ts   # authors' file
    python export.py --checkpoint runs/NKS.pth.tar --out runs/NKS_K.onnx --format onnx --domain K
    python export.py --checkpoint runs/NKS.pth.tar --out runs/NKS.onnx --format onnx  # + selection

The file needs only ``torch`` to run (no project code)::

    m = torch.jit.load("runs/NKS.ts")
    depth, domain = m(x)                 # x: (B,3,H,W) float32, ImageNet-normalized RGB in [0,1]
    depth, domain, uncertainty = m(x)    # a model exported with --uncertainty

``depth`` (B,1,H/2,W/2) float32 metres, ``domain`` (B,) int64 index of the head used (learning
order), ``uncertainty`` (B,1,H/2,W/2) float32 log-variance. Automatic selection (no ``--domain``)
uses the checkpoint's stored prototypes, packed into the file: the trunk runs once, each image goes
to the head of its nearest prototype, and only that head runs (as in ``inference.predictor.DepthPredictor``).
The domain names, input sizes, depth ranges and normalization travel in the file's ``meta.json``
extra file (:func:`load_exported`). Any input size works (the trunk is traced with dynamic sizes).

Precision: float32 by default (portable; BatchNorm folded into the convolutions, results equal to
``DepthPredictor(fast=False)`` to ~1e-5). ``--precision bf16`` packs the bfloat16 fast path instead
(fast only on CPUs/GPUs with native bf16; ``auto``: bf16 there, fp16 on a CUDA GPU without bf16,
else float32).

``--format onnx`` writes a float32 ONNX graph (opset 17; batch and image sizes dynamic) with the
same inputs and outputs (``image`` -> ``depth``, ``domain``[, ``uncertainty``]) and the metadata
as JSON in the model's ``lifelong_monodepth`` metadata entry. With ``--domain`` it holds the
trunk and that head; without, the trunk, the pooled-prototype selection and every head (ONNX has
no cheap per-image dispatch, so every head is computed and each image's chosen one returned: give
``--domain`` for speed). Run it with ONNX Runtime (pinned in ``requirements.txt``)::

    import json, onnxruntime as ort
    session = ort.InferenceSession("runs/NKS.onnx")
    meta = json.loads(session.get_modelmeta().custom_metadata_map["lifelong_monodepth"])
    depth, domain = session.run(None, {"image": x})   # x: float32 numpy (B,3,H,W), normalized

From Python (the command: cli/export.py)::

    net = load_checkpoint("runs/NKS.pth.tar")
    meta = export_net(net, "runs/NKS_K.ts", domain="K")
    assert verify_export("runs/NKS_K.ts", net, meta)["ok"]
"""

import json
import os
from pathlib import Path
from typing import List, Optional, Tuple

import torch
from torch import nn

from base.errors import InputError
from base.images import IMAGENET_MEAN, IMAGENET_STD
from models.checkpoint import checkpoint_meta
from models.fast import inference_copy, resolve_precision, trace_module
from base.safeio import atomic_write
from inference.prototypes import map_distance, pooled_descriptor, pooled_descriptor_nhwc, pooled_distances

META_FILE = "meta.json"


# ------------------------------------------------------------------------------------------------
# Traced pieces
# ------------------------------------------------------------------------------------------------
class _Trunk(nn.Module):
    """Input cast/layout + encoder + fusion of an inference copy."""

    def __init__(self, net, dtype, channels_last):
        super().__init__()
        self.net, self.dtype, self.channels_last = net, dtype, channels_last

    def forward(self, x):
        x = x.to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net.features(x)


class _HeadPart(nn.Module):
    """One head: float32 depth, or (depth, uncertainty)."""

    def __init__(self, head, with_uncertainty):
        super().__init__()
        self.head, self.with_uncertainty = head, with_uncertainty

    def forward(self, feats):
        depth, unc = self.head(feats, self.with_uncertainty)
        if self.with_uncertainty:
            return depth.float().contiguous(), unc.float().contiguous()
        return depth.float().contiguous()


# ------------------------------------------------------------------------------------------------
# Scripted wrappers (control flow: selection and per-image dispatch)
# ------------------------------------------------------------------------------------------------
class _Selector(nn.Module):
    """Nearest prototype (pooled: channel mean+std; map: mean feature map) or a fixed domain."""

    maps: List[torch.Tensor]

    def __init__(self, pooled: Optional[torch.Tensor], maps: List[torch.Tensor], selector: str,
                 fixed: int):
        super().__init__()
        self.register_buffer("pooled", pooled.float() if pooled is not None else torch.zeros(0))
        self.maps = [m.float() for m in maps]
        self.use_map = selector == "map"
        self.fixed = fixed

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        b = feats.shape[0]
        if self.fixed >= 0:
            return torch.full([b], self.fixed, dtype=torch.long, device=feats.device)
        q = feats.float()
        if self.use_map:
            dists: List[torch.Tensor] = []
            for proto in self.maps:
                dists.append(map_distance(q, proto))
            return torch.stack(dists, dim=1).argmin(dim=1)
        return pooled_distances(pooled_descriptor_nhwc(q), self.pooled).argmin(dim=1)


class ExportedDepth(nn.Module):
    """image -> (depth, domain)."""

    def __init__(self, trunk, heads, selector):
        super().__init__()
        self.trunk, self.heads, self.selector = trunk, nn.ModuleList(heads), selector

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        feats = self.trunk(x)
        chosen = self.selector(feats)
        b = feats.shape[0]
        depth = torch.zeros([b, 1, feats.shape[2], feats.shape[3]], dtype=torch.float32,
                            device=feats.device)
        for i, head in enumerate(self.heads):
            rows = (chosen == i).nonzero().flatten()
            n = rows.numel()
            if n == b:
                depth = head(feats)
            elif n > 0:
                depth.index_copy_(0, rows, head(feats.index_select(0, rows)))
        return depth, chosen


class ExportedDepthUncertainty(nn.Module):
    """image -> (depth, domain, uncertainty)."""

    def __init__(self, trunk, heads, selector):
        super().__init__()
        self.trunk, self.heads, self.selector = trunk, nn.ModuleList(heads), selector

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feats = self.trunk(x)
        chosen = self.selector(feats)
        b = feats.shape[0]
        depth = torch.zeros([b, 1, feats.shape[2], feats.shape[3]], dtype=torch.float32,
                            device=feats.device)
        unc = torch.zeros_like(depth)
        for i, head in enumerate(self.heads):
            rows = (chosen == i).nonzero().flatten()
            n = rows.numel()
            if n == b:
                depth, unc = head(feats)
            elif n > 0:
                d, u = head(feats.index_select(0, rows))
                depth.index_copy_(0, rows, d)
                unc.index_copy_(0, rows, u)
        return depth, chosen, unc


class OnnxDepth(nn.Module):
    """The whole model as one traceable float32 function for ONNX: image -> depth, domain[, unc].

    ``fixed`` >= 0: the trunk and that head. Otherwise the pooled-prototype rule of
    ``DepthPredictor.select`` (prototypes.pooled_descriptor and pooled_distances) and every head,
    each image's chosen one gathered.
    """

    def __init__(self, net, pooled: Optional[torch.Tensor], fixed: int, with_uncertainty: bool):
        super().__init__()
        self.net, self.fixed, self.with_uncertainty = net, int(fixed), bool(with_uncertainty)
        self.register_buffer("pooled", pooled.float() if pooled is not None else torch.zeros(0))

    def forward(self, x):
        feats = self.net.features(x)
        if self.fixed >= 0:
            depth, unc = self.net.head_forward(feats, self.fixed, self.with_uncertainty)
            domain = torch.zeros_like(depth[:, 0, 0, 0], dtype=torch.long) + self.fixed
        else:
            # pooled_descriptor, not the chunked _nhwc one: its chunk loop would be frozen by tracing
            domain = pooled_distances(pooled_descriptor(feats), self.pooled).argmin(dim=1)
            outs = [self.net.head_forward(feats, i, self.with_uncertainty)
                    for i in range(self.net.num_domains)]
            pick = lambda maps: torch.gather(  # noqa: E731  (B, D, 1, h, w) -> (B, 1, h, w)
                maps, 1, domain[:, None, None, None, None].expand(-1, 1, -1, maps.shape[3],
                                                                  maps.shape[4])).squeeze(1)
            depth = pick(torch.stack([o[0] for o in outs], dim=1))
            unc = pick(torch.stack([o[1] for o in outs], dim=1)) if self.with_uncertainty else None
        return (depth, domain, unc) if self.with_uncertainty else (depth, domain)


ONNX_META_KEY = "lifelong_monodepth"


def export_onnx(net, out, prototypes=None, domain=None, with_uncertainty=False, selector="pooled",
                example_size=None) -> dict:
    """Write ``net`` as a float32 ONNX file (see the module's docstring); returns its metadata."""
    from models.runtimes import onnx_bytes, require
    onnx = require("onnx")
    meta_in = checkpoint_meta(net)
    n = net.num_domains
    fixed = resolve_domain(domain, meta_in, n)
    pooled = None
    if fixed < 0:
        if selector != "pooled":
            raise ValueError("--format onnx selects with the pooled prototypes only: use --selector "
                             "pooled, or fix the head with --domain")
        pooled = (prototypes or {}).get("pooled")
        if pooled is None:
            raise ValueError("this checkpoint stores no domain prototypes, so the exported model cannot "
                             "choose the domain itself: give --domain, or add prototypes (train with "
                             "train_N/NK/NKS.py, or compute them from replay data with test_inference.py "
                             "--replay-root)")
        if pooled.shape[0] != n:
            raise ValueError(f"{pooled.shape[0]} prototypes for a {n}-head model")
    fast = inference_copy(net, fuse_bn=True, channels_last=False)
    h, w = example_size or meta_in.example_size
    example = torch.randn(1, 3, int(h), int(w))
    outputs = ["depth", "domain"] + (["uncertainty"] if with_uncertainty else [])
    model = onnx.load_from_string(onnx_bytes(OnnxDepth(fast, pooled, fixed, with_uncertainty),
                                             example, "image", outputs))
    meta = {"format": "lifelong-monodepth-onnx", "version": 1,
            "domains": meta_in.domain_names(n),
            "letters": meta_in.letters, "input_sizes": meta_in.input_sizes,
            "depth_ranges": meta_in.depth_ranges, "encoder": getattr(net, "encoder_name", None),
            "selection": "fixed" if fixed >= 0 else "pooled (every head computed)",
            "domain": fixed if fixed >= 0 else None, "with_uncertainty": bool(with_uncertainty),
            "outputs": outputs, "precision": "float32", "fuse_bn": True, "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
            "input": "image: float32 (B,3,H,W) RGB in [0,1] normalized with mean/std; outputs at H/2 x W/2",
            "source": meta_in.path, **pipeline_meta(net), **knowing(meta_in)}
    onnx.helper.set_model_props(model, {ONNX_META_KEY: json.dumps(meta)})
    with atomic_write(out) as f:  # a kill leaves the earlier file (or none), never a partial one
        f.write(model.SerializeToString())  # (onnx.save wants the file's name; ours is a descriptor)
    return meta


SCOPE = ("the network only (image -> depth at half the input size), not the frame pipeline of "
         "predict.py/DepthPredictor.predict_image: no head choice on whole frames by the frames "
         "statistics, no resampling to the head's camera, no fitted pass (the head's training geometry), no depth clamping. For metres "
         "right on whole frames, feed each head input at the focal length in `cameras` (pixels, per "
         "head, at the size given there) and the head's input size; intervals: spread = median "
         "predicted depth x sqrt(2) x exp(u/2) x `calibration_scales` (base/uncertainty.py)")


def pipeline_meta(net) -> dict:
    """What an exported file needs beside the network to reproduce the frame pipeline's metres and
    intervals: per head the camera it learned (inference.frames.head_cameras), the stored
    uncertainty calibration and its scales, and a sentence saying that the file is the network
    only (``scope``)."""
    from base.uncertainty import CALIBRATION_KEY, calibration_scales
    from inference.frames import head_cameras
    meta = dict(getattr(net, "meta", {}) or {})  # base.uncertainty reads the calibration record from it
    info = checkpoint_meta(meta)
    n = net.num_domains
    letters = info.letters
    cameras = [None] * n
    if letters and len(letters) == n:
        try:
            cameras = [c.as_dict() if c is not None else None for c in head_cameras(info, list(letters))]
        except Exception:  # noqa: BLE001 - an unregistered custom domain: no camera to tell
            pass
    return {"cameras": cameras, "calibration_scales": [float(s) for s in calibration_scales(meta, n)],
            CALIBRATION_KEY: info.uncertainty_calibration, "scope": SCOPE}


def load_onnx(path, threads=None):
    """(ONNX Runtime session, metadata dict) of a file written by :func:`export_onnx`."""
    from models.runtimes import require
    ort = require("onnxruntime")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
    session = ort.InferenceSession(os.fspath(path), opts, providers=["CPUExecutionProvider"])
    return session, json.loads(session.get_modelmeta().custom_metadata_map.get(ONNX_META_KEY, "{}"))


def relative_rms(a: torch.Tensor, ref: torch.Tensor) -> float:
    """||a - ref|| / ||ref|| over all elements."""
    return float((a.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30))


@torch.no_grad()
def check_onnx(path, net, prototypes, size=None, batch=2, seed=0) -> dict:
    """Run the ONNX file in ONNX Runtime against ``DepthPredictor(fast=False)`` on random inputs."""
    from inference.predictor import DepthPredictor
    session, exported = load_onnx(path)  # the file's metadata (export_onnx's), not the checkpoint's
    h, w = size or checkpoint_meta(exported).example_size
    x = torch.randn(batch, 3, int(h), int(w), generator=torch.Generator().manual_seed(seed))
    ref = DepthPredictor(net, prototypes, selector="pooled", fast=False).predict(
        x, domain=exported["domain"], with_uncertainty=exported["with_uncertainty"])
    out = [torch.from_numpy(o) for o in session.run(None, {"image": x.numpy()})]
    res = {"rel_rms_depth": relative_rms(out[0], ref["depth"]),
           "same_domains": bool(torch.equal(out[1], ref["domain"])), "domains": out[1].tolist()}
    if exported["with_uncertainty"]:
        res["rel_rms_uncertainty"] = relative_rms(out[2], ref["uncertainty"])
    return res


# ------------------------------------------------------------------------------------------------
def knowing(meta_in) -> dict:
    """What an exported model's user needs to reproduce the checkpoint's intervals and its
    out-of-domain verdict: the uncertainty calibration record (base.uncertainty) and the verdict's
    definition (inference/ood.py: descriptor, per-head statistics, threshold; None where the
    checkpoint stores none). The graph itself computes neither."""
    from inference.ood import ood_record
    meta_in = checkpoint_meta(meta_in)
    return {"uncertainty_calibration": meta_in.uncertainty_calibration,
            "out_of_domain": ood_record(meta_in.frame_statistics.get("ood"))}


def resolve_domain(domain, meta, num_domains: int) -> int:
    """--domain as an index ("1") or a learned domain's letter/name ("K", "kitti") -> index."""
    if domain is None:
        return -1
    text = str(domain).strip()
    if text.lstrip("-").isdigit():
        i = int(text)
    else:
        meta = checkpoint_meta(meta)
        names = [str(n).lower() for n in meta.domains or []]
        letters = meta.letter_list
        if text.lower() in names:
            i = names.index(text.lower())
        elif text.upper() in letters:
            i = letters.index(text.upper())
        else:
            raise ValueError(f"--domain {domain!r}: not a head index nor one of this model's domains "
                             f"{names or '(unnamed)'}{' / ' + ''.join(letters) if letters else ''}")
    if not 0 <= i < num_domains:
        raise ValueError(f"--domain {domain!r}: index out of range, this model has {num_domains} "
                         f"head(s) (0..{num_domains - 1})")
    return i


def export_model(net, out, prototypes=None, domain=None, with_uncertainty=False, selector="pooled",
                 precision="fp32", fuse_bn=True, channels_last=None, example_size=None,
                 device="cpu", freeze=True) -> dict:
    """Write ``net`` (+ prototypes) as a TorchScript file; returns the metadata written with it."""
    meta_in = checkpoint_meta(net)
    n = net.num_domains
    fixed = resolve_domain(domain, meta_in, n)
    if fixed < 0:
        if not prototypes or (selector == "pooled" and prototypes.get("pooled") is None) or \
                (selector == "map" and not prototypes.get("map")):
            raise ValueError("this checkpoint stores no domain prototypes, so the exported model cannot "
                             "choose the domain itself: give --domain, or add prototypes (train with "
                             "train_N/NK/NKS.py, or compute them from replay data with test_inference.py "
                             "--replay-root)")
        n_protos = len(prototypes["map"]) if selector == "map" else prototypes["pooled"].shape[0]
        if n_protos != n:
            raise ValueError(f"{n_protos} prototypes for a {n}-head model")
    device = torch.device(device)
    dtype = resolve_precision(precision, device)
    if channels_last is None:
        channels_last = dtype != torch.float32
    fast = inference_copy(net, fuse_bn=fuse_bn, channels_last=channels_last,
                          dtype=None if dtype == torch.float32 else dtype, device=device)
    h, w = example_size or meta_in.example_size
    example = torch.randn(2, 3, int(h), int(w), device=device)
    trunk = trace_module(_Trunk(fast, dtype, channels_last), example, freeze=False)
    with torch.no_grad():
        feats = trunk(example)
    heads = [trace_module(_HeadPart(fast.head(i), with_uncertainty), feats, freeze=False)
             for i in range(n)]
    protos = prototypes or {}
    sel = _Selector(protos.get("pooled") if fixed < 0 and selector == "pooled" else None,
                    list(protos.get("map") or []) if fixed < 0 and selector == "map" else [],
                    selector, fixed)
    cls = ExportedDepthUncertainty if with_uncertainty else ExportedDepth
    module = torch.jit.script(cls(trunk, heads, sel).eval())
    if freeze:
        module = torch.jit.freeze(module)
    meta = {"format": "lifelong-monodepth-torchscript", "version": 1,
            "domains": meta_in.domain_names(n),
            "letters": meta_in.letters, "input_sizes": meta_in.input_sizes,
            "depth_ranges": meta_in.depth_ranges, "encoder": getattr(net, "encoder_name", None),
            "selection": "fixed" if fixed >= 0 else selector, "domain": fixed if fixed >= 0 else None,
            "with_uncertainty": bool(with_uncertainty),
            "outputs": ["depth", "domain"] + (["uncertainty"] if with_uncertainty else []),
            "precision": str(dtype).replace("torch.", ""), "fuse_bn": bool(fuse_bn),
            "channels_last": bool(channels_last), "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
            "input": "float32 (B,3,H,W) RGB in [0,1] normalized with mean/std; outputs at H/2 x W/2",
            "source": meta_in.path, **pipeline_meta(net), **knowing(meta_in)}
    with atomic_write(out) as f:  # a kill leaves the earlier file (or none), never a partial one
        torch.jit.save(module, f, _extra_files={META_FILE: json.dumps(meta)})
    return meta


def load_exported(path, map_location="cpu"):
    """(TorchScript module, metadata dict) of a file written by :func:`export_model`."""
    extra = {META_FILE: ""}
    module = torch.jit.load(os.fspath(path), map_location=map_location, _extra_files=extra)
    return module.eval(), json.loads(extra[META_FILE] or "{}")


@torch.no_grad()
def check_export(path, net, prototypes, exported, selector="pooled", size=None, batch=2, seed=0) -> dict:
    """Compare the exported file with ``DepthPredictor(fast=False)`` on random inputs (``exported``:
    the metadata export_model wrote with it)."""
    from inference.predictor import DepthPredictor
    module, _ = load_exported(path)
    h, w = size or checkpoint_meta(exported).example_size
    x = torch.randn(batch, 3, int(h), int(w), generator=torch.Generator().manual_seed(seed))
    pred = DepthPredictor(net, prototypes, selector=selector, fast=False)
    ref = pred.predict(x, domain=exported["domain"], with_uncertainty=exported["with_uncertainty"])
    out = module(x)
    scale = ref["depth"].abs().max().clamp_min(1e-6)
    res = {"max_rel_depth_error": float((out[0] - ref["depth"]).abs().max() / scale),
           "same_domains": bool(torch.equal(out[1], ref["domain"])),
           "domains": out[1].tolist()}
    if exported["with_uncertainty"]:
        res["max_uncertainty_error"] = float((out[2] - ref["uncertainty"]).abs().max())
    return res


SUFFIXES = {"torchscript": (".ts", ".pt", ".pth", ".jit", ".torchscript"), "onnx": (".onnx",)}


def check_out(out, checkpoint, overwrite: bool, format: str | None = None) -> None:
    """Refuse an --out that is the checkpoint, a folder, below a file, or (without --overwrite) an
    existing file (InputError, base.safeio.check_write): an export replaces only what an export made,
    when asked to. ``format``: a name ending in the other format's suffix (ONNX into .ts, TorchScript
    into .onnx) is refused too. The temp files of killed earlier exports in that folder are removed."""
    from base.safeio import check_write, clean_stale_temps, protect
    path = Path(out)
    if checkpoint:
        protect(checkpoint, "the --checkpoint")
    if checkpoint and path.exists() and Path(checkpoint).exists() and os.path.samefile(path, checkpoint):
        raise InputError(f"--out {out}: is the --checkpoint itself; the export would replace the trained "
                         f"model. Choose another file name, e.g. {path.with_suffix('')}.ts")
    if format is not None:
        suffix = path.suffix.lower()
        other = next((f for f, s in SUFFIXES.items() if f != format and suffix in s), None)
        if other is not None:
            raise InputError(f"--out {out}: a {suffix} name is for --format {other}, but --format {format} "
                             f"was asked; name it {path.with_suffix(SUFFIXES[format][0])}")
    check_write(path, option="--out", overwrite=overwrite)
    clean_stale_temps(path.absolute().parent)


FORMATS = ("torchscript", "onnx")
ONNX_TOLERANCE = 1e-5  # relative RMS of the float32 graph against eager float32


def export_net(net, out, *, format: str = "torchscript", domain=None, with_uncertainty: bool = False,
               selector: str = "pooled", precision: str = "fp32", fuse_bn: bool = True,
               example_size=None) -> dict:
    """Write a loaded checkpoint's ``net`` (its stored prototypes packed in for automatic selection)
    as one TorchScript (:func:`export_model`) or float32 ONNX (:func:`export_onnx`) file; returns the
    metadata written with it. ValueError for a setting the format cannot hold (ONNX is float32 with
    BatchNorm folded) or a missing runtime."""
    # the write guard (base.safeio.check_write): never the checkpoint, a folder, or the other
    # format's suffix; a library caller replaces an existing file (export.py asks first)
    check_out(out, checkpoint_meta(net).path, overwrite=True, format=format if format in FORMATS else None)
    protos = checkpoint_meta(net).prototypes
    if format == "torchscript":
        return export_model(net, out, protos, domain=domain, with_uncertainty=with_uncertainty,
                            selector=selector, precision=precision, fuse_bn=fuse_bn, example_size=example_size)
    if format != "onnx":
        raise ValueError(f"--format {format!r}: expected one of {', '.join(FORMATS)}")
    from models.runtimes import RuntimeUnavailable
    if precision not in ("fp32", "auto"):
        raise ValueError(f"--format onnx writes float32 graphs (got --precision {precision})")
    if not fuse_bn:
        raise ValueError("--format onnx always folds BatchNorm (drop --no-fuse)")
    try:
        return export_onnx(net, out, protos, domain=domain, with_uncertainty=with_uncertainty,
                           selector=selector, example_size=example_size)
    except RuntimeUnavailable as e:
        raise ValueError(str(e)) from None


def verify_export(out, net, exported, *, selector: str = "pooled", size=None) -> dict:
    """The file written by :func:`export_net` against ``DepthPredictor(fast=False)`` on random
    inputs (:func:`check_export`, or :func:`check_onnx` in ONNX Runtime), with ``"ok"``: the same
    domains and the depth within the format's tolerance."""
    protos = checkpoint_meta(net).prototypes
    if exported["format"] == "lifelong-monodepth-onnx":
        res = check_onnx(out, net, protos, size)
        return dict(res, ok=res["same_domains"] and res["rel_rms_depth"] <= ONNX_TOLERANCE)
    res = check_export(out, net, protos, exported, selector, size)
    tolerance = 1e-4 if exported["precision"] == "float32" else 5e-2
    return dict(res, ok=res["same_domains"] and res["max_rel_depth_error"] < tolerance)
