"""The demo as a server a user stops and misuses (issue 40 item 13 and Low): a port in use is one
line, SIGTERM removes the work folder with the uploads, bodies over the limit on the non-upload
routes are refused, an evicted model is released."""
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

import pytest

from helpers import make_checkpoint, torch_threads

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("demo") / "N.pth.tar"
    with torch_threads(1):
        make_checkpoint(path, letters="N", prototypes={"pooled": __import__("torch").randn(1, 8)})
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
