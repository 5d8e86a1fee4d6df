"""The demo as a server a user stops and misuses (issue 40 item 13 and Low): a port in use is one
line, SIGTERM removes the work folder with the uploads, bodies over the limit on the non-upload
routes are refused, an evicted model is released; and its requests: huge or non-image uploads
refused without server paths, 16-bit PNGs read, a bounded model cache, loopback unless asked."""
from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import weakref
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import error_of, make_checkpoint, png_header_only, torch_threads

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """One NYU head (its pooled prototype random, of the network's descriptor size: one head is
    always the nearest)."""
    path = tmp_path_factory.mktemp("demo") / "N.pth.tar"
    with torch_threads(1):
        make_checkpoint(path, letters="N", scale=0.25, prototypes={"pooled": torch.randn(1, 128)})
    return path


def test_a_port_in_use_is_one_line(ckpt):
    from cli import demo
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(SystemExit) as stop:
            demo.main(["--checkpoint", str(ckpt), "--port", str(port), "--device", "cpu"])
    msg = str(stop.value.code)
    assert msg.startswith(f"error: --port {port}: cannot serve") and "\n" not in msg


def run_asgi(app, body: bytes, path="/gradio_api/queue/join", declare=True):
    sent = []

    async def go():
        chunks = [body[i:i + 65536] for i in range(0, len(body), 65536)] or [b""]

        async def receive():
            chunk = chunks.pop(0) if chunks else b""
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

        async def send(message):
            sent.append(message)
        headers = [(b"content-length", str(len(body)).encode())] if declare else []
        await app({"type": "http", "path": path, "headers": headers}, receive, send)
    asyncio.run(go())
    return sent


async def echo(scope, receive, send):
    total = 0
    while True:
        m = await receive()
        total += len(m.get("body", b""))
        if not m.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(total).encode()})


@pytest.mark.parametrize("declare", [True, False])
def test_a_large_body_outside_the_upload_route_is_refused(declare):
    from cli.demo import BODY_LIMIT, BodyLimit
    app = BodyLimit(echo)
    assert run_asgi(app, b"x" * (BODY_LIMIT + 1), declare=declare)[0]["status"] == 413
    assert run_asgi(app, b"x" * 1000, declare=declare)[0]["status"] == 200
    assert run_asgi(app, b"x" * (BODY_LIMIT + 1), path="/gradio_api/upload")[0]["status"] == 200


def test_an_evicted_model_is_released(ckpt, tmp_path):
    from cli import demo
    other = tmp_path / "other.pth.tar"
    other.write_bytes(Path(ckpt).read_bytes())
    models = demo.Models(Namespace(checkpoint=str(ckpt), order=None, replay_root=None, device="cpu", max_models=1))
    first = weakref.ref(models.get(str(ckpt)))
    models.get(str(other))
    gc.collect()
    assert first() is None


def test_sigterm_removes_the_work_folder_and_the_uploads(ckpt, tmp_path):
    pytest.importorskip("gradio")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(tmp_path))
    env.pop("GRADIO_TEMP_DIR", None)
    log = tmp_path / "log"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, str(ROOT / "demo.py"), "--checkpoint", str(ckpt), "--port",
                                 str(port), "--device", "cpu"], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read(100)
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, log.read_text()[-2000:]
                time.sleep(0.3)
        work = [p for p in tmp_path.iterdir() if p.name.startswith("lm_demo_")]
        assert len(work) == 1
        (work[0] / "uploads").mkdir(exist_ok=True)
        (work[0] / "uploads" / "a user's photo.png").write_bytes(b"x")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        assert not work[0].exists(), log.read_text()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_head_the_chosen_checkpoint_lacks_is_named_on_the_page(ckpt, tmp_path):
    from cli import demo
    models = demo.Models(Namespace(checkpoint=str(ckpt), order=None, replay_root=None, device="cpu", max_models=2))
    image = tmp_path / "a.png"
    from helpers import write_image
    write_image(image, (24, 32))
    with pytest.raises(demo.PageError, match=r"has no head kitti \(K\); its heads are nyu \(N\)"):
        demo.serve_request(models, str(image), str(ckpt), "kitti (K)", tmp_path / "work")


# ---- the demo's requests ------------------------------------------------------
@pytest.fixture
def demo_models(ckpt, tmp_path):
    from cli import demo
    args = demo.build_parser().parse_args(["--checkpoint", str(ckpt), "--device", "cpu",
                                           "--runs-dir", str(tmp_path), "--max-pixels", "100000"])
    return demo, demo.Models(args)


def test_demo_refuses_huge_and_non_image_uploads_without_server_paths(demo_models, ckpt, tmp_path):
    demo, models = demo_models
    work = tmp_path / "work"
    work.mkdir()
    uploads = tmp_path / "gradio_tmp_upload_dir"
    uploads.mkdir()
    bomb = png_header_only(uploads / "bomb.png", 11000, 11000)
    text = uploads / "notes.png"
    text.write_text("not an image")
    for path, word in ((bomb, "above the limit"), (text, "not a readable image")):
        with pytest.raises(demo.PageError) as err:
            demo.serve_request(models, str(path), str(ckpt), demo.AUTO, work)
        assert word in str(err.value) and str(uploads) not in str(err.value), str(err.value)
        assert "the uploaded image" in str(err.value)


def test_demo_reads_16_bit_pngs_and_leaves_no_files(demo_models, ckpt, tmp_path):
    demo, models = demo_models
    work = tmp_path / "work"
    ramp = (np.linspace(0, 4000, 32 * 24).reshape(24, 32)).astype(np.uint16)  # a 16-bit depth-like image
    path = tmp_path / "ramp16.png"
    Image.fromarray(ramp).save(path)
    img = demo.upload_image(str(path), 100000)
    a = np.asarray(img)[..., 0].astype(float)
    assert a.max() < 250 and a.std() > 3  # scaled to 8 bits, not clipped to white
    for head in (demo.AUTO, "nyu (N)"):
        text, depth, unc, chart = demo.serve_request(models, str(path), str(ckpt), head, work)
        assert isinstance(depth, Image.Image) and depth.size[0] > 32
    assert list(work.iterdir()) == []  # result files are deleted once read


def test_demo_keeps_a_bounded_number_of_models(tmp_path):
    from cli import demo
    paths = []
    for i in range(3):
        p = tmp_path / f"m{i}" / "N.pth.tar"
        p.parent.mkdir()
        make_checkpoint(p, "N", scale=0.25, prototypes={"pooled": torch.randn(1, 128)})
        paths.append(str(p))
    models = demo.Models(demo.build_parser().parse_args(["--checkpoint", paths[0], "--device", "cpu",
                                                         "--max-models", "2"]))
    for p in paths + [paths[1]]:
        models.get(p)
    assert list(models.cache) == [paths[2], paths[1]]


def test_demo_serves_beyond_loopback_only_when_asked(capsys):
    from cli import demo
    parse = demo.build_parser().parse_args
    assert demo.check_host(parse([])) is None and demo.check_host(parse(["--host", "::1"])) is None
    assert "--allow-remote" in error_of(demo.check_host, parse(["--host", "0.0.0.0"]))
    assert "no authentication" in demo.check_host(parse(["--host", "0.0.0.0", "--allow-remote"]))
