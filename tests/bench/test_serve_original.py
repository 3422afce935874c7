"""The small hooks that let a server run the original path: ``original_components`` and
``lipsync serve --original VIDEO [--audio FILE]``."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from lipsync_tools.baseline.original import ORIGINAL_STAGES
from lipsync_tools.bench.original_server import original_components
from lipsync_tools.cli.main import app
from lipsync_tools.client import LipsyncClient
from lipsync_tools.protocol import AudioFormat, FrameRequest, ImageFormat, Pacing
from lipsync_tools.server import LipsyncServer, PackageSpec, ServerConfig

runner = CliRunner()


@pytest.mark.slow
def test_an_original_server_answers_both_codecs_with_every_stage(talking_head_mp4: Path):
    config = ServerConfig(
        packages=(PackageSpec(id="head", path=talking_head_mp4),), port=0, model="identity", warmup_frames=1
    )
    server = LipsyncServer(config, components=original_components(audio=talking_head_mp4))
    try:
        server.start_in_thread(ready_timeout=120)
        noise = np.random.default_rng(0).integers(-8000, 8000, 3200, dtype=np.int16)
        for protocol in ("json", "binary"):
            with LipsyncClient(server.url, protocol=protocol) as client:
                [info] = client.packages()
                assert info["original"] and info["n_frames"] == 120
                reply = client.frame(
                    FrameRequest.from_pcm(noise, request_id=3, package_id="head", frame_index=5)
                )
                assert list(reply.timings) == list(ORIGINAL_STAGES)
                image = cv2.imdecode(np.frombuffer(reply.payload, np.uint8), cv2.IMREAD_COLOR)
                assert image.shape == (144, 176, 3)
                with client.stream() as stream:
                    replay = stream.frame(
                        FrameRequest(request_id=4, package_id="head", frame_index=6, audio=AudioFormat.REPLAY)
                    )
                    assert replay.frame_index == 6 and replay.timings["detect"] > 0
                # a live session runs on the original path too (every stage per frame, no batching)
                with client.session("head", pacing=Pacing.UNPACED, image=ImageFormat.JPEG) as session:
                    frames = list(session.play(np.tile(noise, 3)))
                expected = math.ceil(0.6 * session.started.fps - 1e-9)  # 0.6 s of audio
                assert [f.session_frame for f in frames] == list(range(expected))
        assert server.state.startup_report is not None
        assert server.state.startup_report.packages[0]["original"] is True
    finally:
        server.stop(join_timeout=15)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "x.sanders", "--original", "v.mp4"], "without package arguments"),
        (["serve", "x.sanders", "--audio", "a.wav"], "--audio goes with --original"),
    ],
)
def test_serve_refuses_mixed_original_options(args: list[str], message: str):
    result = runner.invoke(app, [*args, "--model", "random"])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_serve_original_missing_video_is_input_not_found(tmp_path: Path):
    result = runner.invoke(app, ["serve", "--original", str(tmp_path / "missing.mp4"), "--model", "random"])
    assert result.exit_code != 0 and "does not exist" in result.output
