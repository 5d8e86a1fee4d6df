"""Every advertised video extension is read (issue 40, round three's remainder: imageio's FFMPEG
format refused .ts, .mts, .m2ts, .m4v, .flv, .3gp, .3g2, .ogv, which ffmpeg reads), and each is
known as a video (inference.stream.is_video)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from inference.stream import VIDEO_EXTENSIONS, open_stream


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    import imageio.v2 as iio
    path = tmp_path_factory.mktemp("v") / "clip.mp4"
    with iio.get_writer(str(path), format="FFMPEG", fps=5, codec="libx264", pixelformat="yuv420p",
                        macro_block_size=1, ffmpeg_log_level="error") as w:
        for k in range(3):
            w.append_data(np.full((32, 48, 3), 40 * k, np.uint8))
    return path


@pytest.mark.parametrize("ext", VIDEO_EXTENSIONS)
def test_every_advertised_extension_is_read(clip, tmp_path, ext):
    path = tmp_path / f"clip{ext}"
    shutil.copy(clip, path)  # ffmpeg probes the content, whatever the name says
    with open_stream(path, tmp_path / "out") as source:
        frames = list(source.frames)
    assert source.fps == pytest.approx(5.0) and len(frames) == 3 and frames[0][1].shape == (32, 48, 3)


# ---- more video containers ------------------------------------------------------------------
def test_transport_streams_and_phone_videos_are_videos():
    from inference import stream
    assert all(stream.is_video(f"clip{ext}") for ext in (".ts", ".m2ts", ".mts", ".3gp", ".TS"))
