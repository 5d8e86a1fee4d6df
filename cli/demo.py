"""A web page to try a Lifelong-MonoDepth model (Gradio).

    pip install -r requirements-demo.txt
    python demo.py                                              # the quickstart model, http://127.0.0.1:7860
    python demo.py --checkpoint NKS.pth.tar --order NKS --replay-root datasets   # an authors' file

Upload an image or click a bundled synthetic example, and see the colourised depth, the predicted
uncertainty, the domain whose head was chosen and the distance from the image to every domain
prototype (the chosen one highlighted); the "head" control forces another head. The checkpoint
menu lists ``--checkpoint`` and the project checkpoints found under ``--runs-dir``.

Everything is computed by inference/images.py: ``prediction.Predictor.run`` (selection at the first domain's
input size, depth at the chosen head's) and ``prediction.save_colormap`` (the colour bars).
"""
from __future__ import annotations

import argparse
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
from inference import stream as S  # noqa: E402
from cli.options import CLIError, HelpFormatter, add_checkpoint_arguments, add_device_argument, resolve_device  # noqa: E402

AUTO = "auto (nearest prototype)"
DEFAULT_CHECKPOINT = "runs/quickstart/NKS.pth.tar"


# ----------------------------------------------------------------------------------------------
# The model side (no Gradio here: unit-testable)
# ----------------------------------------------------------------------------------------------
class Models:
    """Loaded ``prediction.Predictor`` per checkpoint path (loaded on first use, kept)."""

    def __init__(self, args):
        self.args = args
        self.cache = {}
        self.lock = threading.Lock()

    def get(self, checkpoint: str):
        with self.lock:
            if checkpoint not in self.cache:
                argv = ["image.png", "--checkpoint", checkpoint, "--quiet", "--device", self.args.device]
                if self.args.order and checkpoint == self.args.checkpoint:
                    argv += ["--order", self.args.order]
                if self.args.replay_root and checkpoint == self.args.checkpoint:
                    argv += ["--replay-root", self.args.replay_root]
                pargs = P.build_parser().parse_args(argv)
                self.cache[checkpoint] = P.Predictor(pargs, resolve_device(self.args.device))
            return self.cache[checkpoint]


def head_choices(model) -> list[str]:
    from data.domains import get_domain
    return [AUTO] + [f"{get_domain(c).name} ({c})" for c in model.letters]


def distance_chart(letters, distances, chosen) -> Image.Image:
    """A small horizontal bar chart of the prototype distances, the chosen head in orange."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from data.domains import get_domain
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


def infer(models: Models, image, checkpoint: str, head_choice: str, workdir: Path) -> dict:
    """Everything the page shows for one image: ``{"domain" (text), "depth", "uncertainty"
    (colour-mapped PNG paths), "chart" (PIL or None), "head", "distances"}``."""
    from data.domains import get_domain
    model = models.get(checkpoint)
    img = image.convert("RGB") if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image)).convert("RGB")
    forced = None if head_choice in (None, AUTO) else head_choices(model).index(head_choice) - 1
    r = model.run(img, head=forced, want_distances=True)
    head = r["head"]
    depth = model.clamp(r["depth"], head)
    workdir.mkdir(parents=True, exist_ok=True)
    fd, depth_png = tempfile.mkstemp(suffix="_depth.png", dir=workdir)
    os.close(fd)
    P.save_colormap(depth_png, depth, "depth [m]", S.DEPTH_CMAP)
    unc_png = None
    if r["uncertainty"] is not None:
        fd, unc_png = tempfile.mkstemp(suffix="_uncertainty.png", dir=workdir)
        os.close(fd)
        P.save_colormap(unc_png, r["uncertainty"], "uncertainty (log-variance)", "viridis")
    letter = model.letters[head]
    how = "forced" if r["how"] == "given" else "nearest prototype"
    text = (f"{get_domain(letter).name} ({letter}), {how}; depth {float(depth.min()):.2f}-"
            f"{float(depth.max()):.2f} m")
    if r["how"] == "given" and r["raw_head"] is not None:
        text += f"; the nearest prototype is {model.letters[r['raw_head']]}"
    dists = None if r["distances"] is None else [float(v) for v in r["distances"]]
    chart = None if dists is None else distance_chart(model.letters, dists, head)
    return {"domain": text, "depth": depth_png, "uncertainty": unc_png, "chart": chart, "head": head,
            "distances": dists}


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
def build_app(args):
    import gradio as gr
    models = Models(args)
    first = models.get(args.checkpoint)  # fail now, with predict.py's message, if it cannot load
    workdir = Path(tempfile.mkdtemp(prefix="lm_demo_"))
    checkpoints = find_checkpoints(args.checkpoint, Path(args.runs_dir))

    def run(image, checkpoint, head_choice):
        if image is None:
            raise gr.Error("upload an image or click one of the examples first")
        try:
            out = infer(models, image, checkpoint, head_choice, workdir)
        except SystemExit as e:  # predict.py's CLIError: a user-facing message
            raise gr.Error(str(e.code)) from None
        return out["domain"], out["depth"], out["uncertainty"], out["chart"]

    def on_checkpoint(checkpoint):
        try:
            model = models.get(checkpoint)
        except SystemExit as e:
            raise gr.Error(str(e.code)) from None
        return gr.update(choices=head_choices(model), value=AUTO)

    with gr.Blocks(title="Lifelong-MonoDepth", analytics_enabled=False) as app:
        gr.Markdown("# Lifelong-MonoDepth\nMetric depth from one image; the head (one per learned "
                    "domain) is chosen by the nearest domain prototype, or forced below. The bundled "
                    "examples and the quickstart model are **synthetic** stand-ins, not NYU-v2, KITTI "
                    "or ScanNet.")
        with gr.Row():
            with gr.Column():
                ckpt = gr.Dropdown(checkpoints, value=args.checkpoint, label="checkpoint", elem_id="checkpoint")
                head = gr.Radio(head_choices(first), value=AUTO, label="head", elem_id="head")
                image = gr.Image(type="pil", label="image", elem_id="input", sources=["upload", "clipboard"])
                button = gr.Button("Predict depth", variant="primary", elem_id="run")
                examples = example_images(Path(args.examples))
                if examples:
                    gr.Examples(examples, inputs=[image], label="synthetic examples", elem_id="examples")
            with gr.Column():
                domain = gr.Textbox(label="chosen domain", interactive=False, elem_id="domain")
                depth = gr.Image(type="filepath", label="depth (metres)", elem_id="depth", interactive=False)
                chart = gr.Image(type="pil", label="distance to each domain prototype", elem_id="distances",
                                 interactive=False)
                unc = gr.Image(type="filepath", label="uncertainty (log-variance)", elem_id="uncertainty",
                               interactive=False)
        outputs = [domain, depth, unc, chart]
        button.click(run, inputs=[image, ckpt, head], outputs=outputs)
        image.upload(run, inputs=[image, ckpt, head], outputs=outputs)
        ckpt.change(on_checkpoint, inputs=[ckpt], outputs=[head])
    return app


def build_parser():
    p = argparse.ArgumentParser(description="A web page (Gradio) to try a Lifelong-MonoDepth checkpoint: "
                                            "depth, uncertainty, the chosen domain and its prototype distances.",
                                formatter_class=HelpFormatter)
    add_checkpoint_arguments(p, "the checkpoint shown first (project format; an authors' file needs --order)",
                             "learning order naming the heads of an authors' --checkpoint, e.g. NKS",
                             default=DEFAULT_CHECKPOINT)
    p.add_argument("--replay-root", default=None,
                   help="compute --checkpoint's prototypes from this data root's replay rows (for files without them)")
    p.add_argument("--runs-dir", default="runs", help="other project checkpoints offered in the menu are found here")
    p.add_argument("--examples", default="docs/examples",
                   help="folder of example images shown under the upload (relative: to the current "
                        "folder, else to this script's)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=7860, help="port to serve on")
    add_device_argument(p)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 < args.port < 65536:
        raise CLIError(f"--port must be 1..65535, got {args.port}")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise CLIError("the demo needs Gradio: pip install -r requirements-demo.txt") from None
    app = build_app(args)
    print(f"serving {args.checkpoint} on http://{args.host}:{args.port} (Ctrl-C stops)", flush=True)
    app.launch(server_name=args.host, server_port=args.port, share=False, inbrowser=False,
               show_error=True, quiet=True, footer_links=[])
    return 0


if __name__ == "__main__":
    sys.exit(main())
