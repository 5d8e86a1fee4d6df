"""A web page to try a Lifelong-MonoDepth model (Gradio).

    pip install -r requirements-demo.txt
    python demo.py                                              # the quickstart model, http://127.0.0.1:7860
    python demo.py --checkpoint NKS.pth.tar --order NKS --replay-root datasets   # an authors' file

Upload an image or click a bundled synthetic example, and see the colourised depth, the width of
each pixel's 90 % depth interval in metres (the calibrated uncertainty), the domain whose head was chosen and the distance from the image to every domain
prototype (the chosen one highlighted); the "head" control forces another head. The checkpoint
menu lists ``--checkpoint`` and the project checkpoints found under ``--runs-dir``.

Serving: loopback only unless ``--host`` comes with ``--allow-remote`` (there is no authentication;
a warning is printed). Memory is bounded per request (``--max-pixels``, checked from the upload's
header before any decoding; ``--max-upload-mb``) and in total (one request at a time, at most
``--queue-size`` waiting, ``--max-models`` checkpoints loaded); result images are deleted once read
and Gradio's cache is cleaned (files older than an hour, and at exit).

Everything is computed by inference/images.py: ``Predictor.run`` (the frame pipeline of
inference/frames.py: head choice on the whole frame, the out-of-domain verdict, depth at the chosen
head's pixel scale); its pictures are written by inference/outputs.py (``save_depth_colormap``, as
predict.py's, and ``save_colormap``: the colour bars).
"""
from __future__ import annotations

import argparse
import importlib
import io
import os
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository root
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home: the page works offline

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from inference import images as P  # noqa: E402
from base.images import UNCERTAINTY_CMAP  # noqa: E402
from inference.outputs import save_colormap, save_depth_colormap  # noqa: E402
from base.uncertainty import interval_summary, median_width  # noqa: E402
from inference.known_depth import describe_fit, read_known_depth  # noqa: E402
from cli.errors import CLIError, run_command  # noqa: E402
from cli.options import (HelpFormatter, add_checkpoint_arguments, add_device_argument, checked_type,  # noqa: E402
                         parse_letters)
from engine.processes import resolve_device  # noqa: E402

AUTO = "auto (nearest prototype)"
DEMO_INTERVAL = 0.9  # the central coverage whose width the page shows
DEMO_CHECKPOINT = "runs/quickstart/NKS.pth.tar"  # the quickstart's model: what a fresh clone has
DEFAULT_MAX_MODELS = 2
# Per request: the pixel cap (read from the header before decoding) and the upload size: 12.5 M (a 12 MP
# phone photo, 4032x3024, passes), from a request's measured memory
# (docs/BENCHMARKS.md#figures-that-were-in-the-codes-comments).
# In total: one request at a time (the queue's concurrency limit), at most DEFAULT_QUEUE waiting,
# DEFAULT_MAX_MODELS models kept.
DEFAULT_DEMO_MAX_PIXELS = 12_500_000
DEFAULT_MAX_UPLOAD_MB = 50
DEFAULT_QUEUE = 8
LOOPBACK = ("127.0.0.1", "localhost", "::1")
UPLOAD = "the uploaded image"


class PageError(Exception):
    """A message for the page's user (no server path, no traceback)."""


def upload_image(image, max_pixels) -> Image.Image:
    """The RGB image of an upload: a file path (read by inference.images.read_rgb: the pixel cap from the
    header, EXIF orientation, 16-bit PNGs scaled, not clipped) or an image object (the API's)."""
    if isinstance(image, (str, os.PathLike)):
        try:
            return P.read_rgb(image, max_pixels)
        except (ValueError, OSError) as e:  # DatasetFormatError / ImageTooLarge / unreadable
            raise PageError(str(e).replace(os.fspath(image), UPLOAD)) from None
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    return Image.fromarray(np.asarray(image)).convert("RGB")


# ----------------------------------------------------------------------------------------------
# The model side (no Gradio here: unit-testable)
# ----------------------------------------------------------------------------------------------
class Models:
    """Loaded ``inference.images.Predictor`` per checkpoint path, loaded on first use; only the
    ``--max-models`` most recently used stay in memory (a menu of many checkpoints must not load
    them all)."""

    def __init__(self, args):
        self.args = args
        self.cache = {}  # insertion order = least recently used first
        self.lock = threading.Lock()
        self.limit = max(1, int(getattr(args, "max_models", DEFAULT_MAX_MODELS)))

    def get(self, checkpoint: str):
        with self.lock:
            if checkpoint in self.cache:
                self.cache[checkpoint] = self.cache.pop(checkpoint)  # now the most recent
            else:
                evicted = False
                while len(self.cache) >= self.limit:
                    self.cache.pop(next(iter(self.cache)))
                    evicted = True
                if evicted:
                    release_memory()  # the evicted model's memory goes back to the system
                # what the library refuses is one error line, predict.py's (shown on the page)
                self.cache[checkpoint] = run_command(self.load, checkpoint)
            return self.cache[checkpoint]

    def load(self, checkpoint: str):
        """The Predictor of ``checkpoint``; --order and --replay-root are --checkpoint's only."""
        first = checkpoint == self.args.checkpoint
        order = parse_letters(self.args.order, "--order") if self.args.order and first else None
        options = P.ImageOptions(replay_root=self.args.replay_root if first else None, quiet=True)
        return P.Predictor(checkpoint, options, device=resolve_device(self.args.device), order=order)


def release_memory() -> None:
    """Collect what an evicted model left (reference cycles) and return the freed heap to the
    system (glibc keeps freed memory in its arenas: malloc_trim gives it back)."""
    import gc
    gc.collect()
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the allocator's own policy


BODY_LIMIT = 1_000_000  # bytes of a request body outside the upload route (Gradio's JSON calls)


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes on any route but the upload (which
    Gradio bounds by ``max_file_size``) is answered 413 without being read into memory."""

    def __init__(self, app, limit: int = BODY_LIMIT):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http" or "upload" in scope.get("path", ""):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        try:
            declared = int(headers.get(b"content-length", b"0"))
        except ValueError:
            declared = 0
        if declared > self.limit:
            return await self._refuse(send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise BodyTooLarge
            return message
        try:
            return await self.app(scope, limited, send)
        except BodyTooLarge:
            return await self._refuse(send)

    async def _refuse(self, send):
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"request body too large"})


class BodyTooLarge(Exception):
    pass


def check_port(host: str, port: int) -> None:
    """CLIError (one line) when ``port`` on ``host`` is taken, before a model is loaded."""
    import socket
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family) as s:
            s.bind((host, port))
    except OSError as e:
        raise CLIError(f"--port {port}: cannot serve on {host}:{port} ({e.strerror or e}; another server "
                       f"uses it?); choose another --port") from None


def on_sigterm(workdir: Path):
    """SIGTERM (a service manager's stop) ends like Ctrl-C: the exit handlers run and remove the
    work folder with the users' uploads and results."""
    import signal

    def stop(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, stop)


def head_choices(model) -> list[str]:
    from base.domains import get_domain
    return [AUTO] + [f"{get_domain(c).name} ({c})" for c in model.letters]


def distance_chart(letters, distances, chosen) -> Image.Image:
    """A small horizontal bar chart of the prototype distances, the chosen head in orange."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from base.domains import get_domain
    names = [f"{get_domain(c).name} ({c})" for c in letters]
    fig, ax = plt.subplots(figsize=(4.2, 0.45 * len(letters) + 0.9), dpi=100)
    try:
        colors = ["tab:orange" if i == chosen else "tab:blue" for i in range(len(letters))]
        ax.barh(names[::-1], list(distances)[::-1], color=colors[::-1])
        for y, v in enumerate(list(distances)[::-1]):
            ax.text(v, y, f" {v:.3f}", va="center", fontsize=8)
        ax.set_xlabel("distance to the domain prototype")
        ax.set_xlim(0, max(distances) * 1.25 if len(distances) and max(distances) > 0 else 1)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def infer(models: Models, image, checkpoint: str, head_choice: str, workdir: Path, known_depth=None) -> dict:
    """Everything the page shows for one image: ``{"domain" (text), "depth", "uncertainty" (the
    90 % interval width; colour-mapped PNG paths), "chart" (PIL or None), "head", "distances"}``.
    ``known_depth``: a file of known distances (predict.py --known-depth's rule, the scale fit)."""
    from base.domains import get_domain
    model = models.get(checkpoint)
    img = upload_image(image, getattr(models.args, "max_pixels", DEFAULT_DEMO_MAX_PIXELS))
    choices = head_choices(model)
    if head_choice not in (None, AUTO) and head_choice not in choices:  # a head of the checkpoint shown before
        raise PageError(f"{checkpoint} has no head {head_choice}; its heads are {', '.join(choices[1:])} "
                        f"(or {AUTO})")
    forced = None if head_choice in (None, AUTO) else choices.index(head_choice) - 1
    # the upload's camera by predict.py's rule (its EXIF focal length): the file, or the API's image
    camera = model.camera_of(image if isinstance(image, (str, os.PathLike, Image.Image)) else None)
    r = model.run(img, head=forced, want_distances=True, camera=camera)
    head = r["head"]
    depth = model.clamp(r["depth"], head)
    fit = None
    if known_depth:
        depth, fit = model.correct_scale(dict(r, depth=depth), read_known_depth(known_depth, img.size), DEMO_INTERVAL)
    workdir.mkdir(parents=True, exist_ok=True)
    fd, depth_png = tempfile.mkstemp(suffix="_depth.png", dir=workdir)
    os.close(fd)
    save_depth_colormap(depth_png, depth)  # predict.py's <name>_depth_color.png
    unc_png = None
    if r["uncertainty"] is not None:
        fd, unc_png = tempfile.mkstemp(suffix="_uncertainty.png", dir=workdir)
        os.close(fd)
        lower, upper = model.interval(depth, r["uncertainty"], head, DEMO_INTERVAL)
        save_colormap(unc_png, upper - lower, f"{DEMO_INTERVAL:.0%} interval width [m]", UNCERTAINTY_CMAP)
    letter = model.letters[head]
    how = "forced" if r["how"] == "given" else "nearest prototype"
    text = (f"{get_domain(letter).name} ({letter}), {how}; depth {float(depth.min()):.2f}-"
            f"{float(depth.max()):.2f} m")
    if r["how"] == "given" and r["raw_head"] is not None:
        text += f"; the nearest prototype is {model.letters[r['raw_head']]}"
    if unc_png is not None:
        text += interval_text(model, head, lower, upper)
    if fit is not None:
        text += f"; {describe_fit(fit)}"
    if r.get("ood"):
        text += "; OUT OF DOMAIN: no learned head fits this image, the depth is a guess"
    if r.get("camera"):
        text += f"; camera: {r['camera']['assumed']}"
    dists = None if r["distances"] is None else [float(v) for v in r["distances"]]
    chart = None if dists is None else distance_chart(model.letters, dists, head)
    return {"domain": text, "depth": depth_png, "uncertainty": unc_png, "chart": chart, "head": head,
            "distances": dists, "out_of_domain": r.get("ood")}


def interval_text(model, head, lower, upper) -> str:
    """'; 90 % interval: median width X m (what the interval means, its measured coverage on this
    path: base.uncertainty.interval_sentence)'."""
    s = interval_summary(model.predictor.meta, head, len(model.letters), DEMO_INTERVAL, model.interval_path)
    return f"; {DEMO_INTERVAL:.0%} interval: median width {median_width(lower, upper):.2f} m ({s['meaning']})"


def find_checkpoints(first: str, runs_dir: Path) -> list[str]:
    """``first``, then the project checkpoints under ``runs_dir`` (resumable last.pth.tar excluded)."""
    found = [first]
    if runs_dir.is_dir():
        for p in sorted(runs_dir.rglob("*.pth.tar")):
            if p.name != "last.pth.tar" and str(p) not in found:
                found.append(str(p))
    return found


def example_images(folder: Path) -> list[str]:
    if not folder.is_dir() and not folder.is_absolute():
        folder = ROOT / folder
    if not folder.is_dir():
        return []
    return [str(p) for p in sorted(folder.iterdir()) if p.suffix.lower() in P.IMAGE_EXTENSIONS]


# ----------------------------------------------------------------------------------------------
# The page
# ----------------------------------------------------------------------------------------------
def page_result(out: dict) -> tuple:
    """The page's outputs of one :func:`infer` result: the colour-mapped PNGs are read into memory
    and their files deleted at once (Gradio keeps its own copy in its cache, which delete_cache
    cleans), so the work folder does not grow with every request."""
    shown = []
    for key in ("depth", "uncertainty"):
        path = out.get(key)
        if path is None:
            shown.append(None)
            continue
        try:
            with Image.open(path) as im:
                shown.append(im.convert("RGB"))
        finally:
            Path(path).unlink(missing_ok=True)
    return out["domain"], shown[0], shown[1], out["chart"]


def serve_request(models: Models, image, checkpoint: str, head_choice: str, workdir: Path, known_depth=None) -> tuple:
    """One page request: (text, depth image, uncertainty image, chart), or PageError with a message
    for the user: no server path (an upload's temporary name is shown as "the uploaded image")."""
    if image is None:
        raise PageError("upload an image or click one of the examples first")
    try:
        return page_result(infer(models, image, checkpoint, head_choice, workdir, known_depth))
    except SystemExit as e:  # predict.py's CLIError: a user-facing message
        raise PageError(str(e.code)) from None
    finally:
        for litter in workdir.glob("*.png"):  # an infer() stopped half way leaves no file either
            litter.unlink(missing_ok=True)


def upload_component(gr):
    """gr.Image whose upload reaches the handler as the path of the uploaded file, undecoded:
    Gradio's own preprocessing would decode any size (a small PNG can cost many GB to decode)
    and answer a non-image with a message naming its temporary path."""
    class UploadedImage(gr.Image):
        def get_block_name(self):
            return "image"  # the front end of gr.Image

        def preprocess(self, payload):
            if payload is None:
                return None
            if payload.path:
                return str(payload.path)
            raise gr.Error("send the image as a file upload")
    return UploadedImage


def check_host(args):
    """A --host other than loopback serves the page (no authentication) to everyone who can reach
    the port: only with --allow-remote, and then with a warning (returned)."""
    import ipaddress
    try:
        loopback = args.host == "localhost" or ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        return None
    if not args.allow_remote:
        raise CLIError(f"--host {args.host}: would serve the page beyond this machine, without "
                       f"authentication; pass --allow-remote as well to do that on purpose")
    return (f"warning: serving on {args.host}: anyone who can reach port {args.port} can use this page "
            f"(no authentication) and this machine's CPU and memory, one request at a time")


def make_workdir() -> Path:
    """The demo's work folder (results; Gradio's uploads too, unless GRADIO_TEMP_DIR is set), removed
    at exit, also after SIGTERM."""
    import atexit
    import shutil
    workdir = Path(tempfile.mkdtemp(prefix="lm_demo_"))
    atexit.register(shutil.rmtree, workdir, True)  # nothing of ours is left at exit
    if "GRADIO_TEMP_DIR" not in os.environ:  # read by Gradio at import: the uploads go with the folder
        os.environ["GRADIO_TEMP_DIR"] = str(workdir / "uploads")
    on_sigterm(workdir)
    return workdir


def build_app(args, workdir: Path | None = None):
    import gradio as gr
    models = Models(args)
    first = models.get(args.checkpoint)  # fail now, with predict.py's message, if it cannot load
    workdir = workdir or make_workdir()
    checkpoints = find_checkpoints(args.checkpoint, Path(args.runs_dir))

    def run(image, checkpoint, head_choice, known_depth=None):
        try:
            return serve_request(models, image, checkpoint, head_choice, workdir, known_depth)
        except PageError as e:
            raise gr.Error(str(e)) from None
        except Exception as e:  # noqa: BLE001 - logged here; the page gets no server detail
            print(f"demo: request failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            raise gr.Error(f"the prediction failed ({type(e).__name__})") from None

    def on_checkpoint(checkpoint):
        try:
            model = models.get(checkpoint)
        except SystemExit as e:
            raise gr.Error(str(e.code)) from None
        return gr.update(choices=head_choices(model), value=AUTO)

    # Gradio's cache (uploads, shown images): files older than an hour go, checked hourly and at exit
    with gr.Blocks(title="Lifelong-MonoDepth", analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        gr.Markdown("# Lifelong-MonoDepth\nMetric depth from one image; the head (one per learned "
                    "domain) is chosen by the nearest domain prototype, or forced below. The bundled "
                    "examples and the quickstart model are **synthetic** stand-ins, not NYU-v2, KITTI "
                    "or ScanNet.")
        with gr.Row():
            with gr.Column():
                ckpt = gr.Dropdown(checkpoints, value=args.checkpoint, label="checkpoint", elem_id="checkpoint")
                head = gr.Radio(head_choices(first), value=AUTO, label="head", elem_id="head")
                image = upload_component(gr)(type="filepath", image_mode=None, label="image", elem_id="input",
                                             sources=["upload", "clipboard"])
                known = gr.File(label="known distances (optional): CSV of x,y,metres fixes the scale",
                                type="filepath", elem_id="known")
                button = gr.Button("Predict depth", variant="primary", elem_id="run")
                examples = example_images(Path(args.examples))
                if examples:
                    gr.Examples(examples, inputs=[image], label="synthetic examples", elem_id="examples")
            with gr.Column():
                domain = gr.Textbox(label="chosen domain", interactive=False, elem_id="domain")
                depth = gr.Image(type="filepath", label="depth (metres)", elem_id="depth", interactive=False)
                chart = gr.Image(type="pil", label="distance to each domain prototype", elem_id="distances",
                                 interactive=False)
                unc = gr.Image(type="filepath", label="90 % interval width (metres): where the depth is least certain", elem_id="uncertainty",
                               interactive=False)
        outputs = [domain, depth, unc, chart]
        button.click(run, inputs=[image, ckpt, head, known], outputs=outputs)
        image.upload(run, inputs=[image, ckpt, head, known], outputs=outputs)
        ckpt.change(on_checkpoint, inputs=[ckpt], outputs=[head])
    # one request at a time (memory is bounded per request by --max-pixels), a bounded queue
    app.queue(default_concurrency_limit=1, max_size=args.queue_size)
    return app


def build_parser():
    p = argparse.ArgumentParser(description="A web page (Gradio) to try a Lifelong-MonoDepth checkpoint: "
                                            "depth, uncertainty, the chosen domain and its prototype distances.",
                                formatter_class=HelpFormatter)
    add_checkpoint_arguments(p, "the checkpoint shown first (project format; an authors' file needs --order)",
                             "learning order naming the heads of an authors' --checkpoint, e.g. NKS",
                             default=DEMO_CHECKPOINT)
    p.add_argument("--replay-root", default=None,
                   help="compute --checkpoint's prototypes from this data root's replay rows (for files without them)")
    p.add_argument("--runs-dir", default="runs", help="other project checkpoints offered in the menu are found here")
    p.add_argument("--examples", default="docs/examples",
                   help="folder of example images shown under the upload (relative: to the current "
                        "folder, else to this script's)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to serve on; other than loopback (e.g. 0.0.0.0: every interface) only "
                        "with --allow-remote")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a --host other than loopback: the page has no authentication, anyone "
                        "who reaches the port can use it (a warning is printed)")
    p.add_argument("--port", type=int, default=7860, help="port to serve on")
    p.add_argument("--max-pixels", type=checked_type(P.parse_max_pixels), default=DEFAULT_DEMO_MAX_PIXELS,
                   help="refuse uploads with more pixels than this, read from the file's header before "
                        "decoding (a request needs about 170 bytes of memory per pixel)")
    p.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                   help="refuse uploaded files larger than this many megabytes")
    p.add_argument("--max-models", type=int, default=DEFAULT_MAX_MODELS,
                   help="checkpoints of the menu kept loaded at once (the least recently used is dropped)")
    p.add_argument("--queue-size", type=int, default=DEFAULT_QUEUE,
                   help="requests waiting at most (one runs at a time); more are refused as 'queue full'")
    add_device_argument(p)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 < args.port < 65536:
        raise CLIError(f"--port must be 1..65535, got {args.port}")
    for option, value in (("--max-models", args.max_models), ("--queue-size", args.queue_size),
                          ("--max-upload-mb", args.max_upload_mb)):
        if not value > 0:
            raise CLIError(f"{option} must be positive, got {value}")
    warning = check_host(args)
    check_port(args.host, args.port)
    workdir = make_workdir()  # before Gradio is imported: it reads GRADIO_TEMP_DIR then
    try:
        importlib.import_module("gradio")  # installed? (before a model is loaded for nothing)
    except ImportError:
        raise CLIError("the demo needs Gradio: pip install -r requirements-demo.txt") from None
    app = build_app(args, workdir)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    print(f"serving {args.checkpoint} on http://{args.host}:{args.port} (Ctrl-C stops)", flush=True)
    from starlette.middleware import Middleware
    try:
        app.launch(server_name=args.host, server_port=args.port, share=False, inbrowser=False,
                   show_error=True, quiet=True, footer_links=[], max_file_size=f"{int(args.max_upload_mb * 1e6)}b",
                   app_kwargs={"middleware": [Middleware(BodyLimit)]})
    except OSError as e:  # the port taken between the check and the launch
        raise CLIError(f"--port {args.port}: cannot serve on {args.host}:{args.port} ({e})") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
