"""``render_video`` and ``lipsync render``: a playable mp4 with the speech, at the package's fps."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from lipsync_tools.cli.main import app
from lipsync_tools.engine import EngineOptions, PackageStore, pingpong_index
from lipsync_tools.errors import OutputExistsError, UsageError
from lipsync_tools.media.audio import load_audio
from lipsync_tools.media.video import iter_frames, probe_video
from lipsync_tools.render import render_video
from tests import samples

runner = CliRunner()


def test_render_identity_follows_the_speech_and_pingpongs(
    head_package: Path, speech_wav: Path, tmp_path: Path
):
    out = tmp_path / "out.mp4"
    speech = load_audio(speech_wav)
    result = render_video(head_package, speech_wav, out, model="identity", backend="torch",
                          options=EngineOptions(max_batch=16))
    fps = 30000 / 1001
    expected = math.ceil(speech.size / 16000 * fps)
    assert result.frames == expected > 120  # longer than the package: the walk turns around
    info = probe_video(out)
    assert (info.width, info.height, info.has_audio) == (176, 144, True)
    assert info.frame_rate == Fraction(30000, 1001)
    assert info.frame_count == expected
    assert info.audio_sample_rate == 16000
    assert abs(load_audio(out).size - speech.size) <= 0.05 * 16000
    assert abs(result.video_seconds - result.audio_seconds) <= 1 / fps
    assert set(result.stage_ms) == {"features", "queue", "inference", "composite", "encode", "total"}
    summary = result.summary()
    assert summary["model"]["name"] == "identity" and summary["frames"] == expected
    # frame 130 of the video shows avatar frame pingpong_index(130, 120) = 108 (identity model: the source)
    frames = list(iter_frames(out))
    assert len(frames) == expected
    store = PackageStore()
    store.load("head", head_package)
    source = store.get("head").frames[pingpong_index(130, 120)]
    assert pingpong_index(130, 120) == 108
    assert np.abs(frames[130].astype(float) - source.astype(float)).mean() < 4.0  # H.264 at crf 20


def test_render_refusals(head_package: Path, speech_wav: Path, tmp_path: Path):
    existing = tmp_path / "exists.mp4"
    existing.write_bytes(b"x")
    with pytest.raises(OutputExistsError):
        render_video(head_package, speech_wav, existing, model="identity")
    with pytest.raises(UsageError, match="renders with its own model"):
        render_video(head_package, speech_wav, tmp_path / "o.mp4", model="identity", server_url="http://x")
    with pytest.raises(UsageError, match=r"cannot reach a lipsync server at http://127\.0\.0\.1:9"):
        render_video(head_package, speech_wav, tmp_path / "o.mp4", server_url="http://127.0.0.1:9")
    short = samples.tone_wav(tmp_path / "short.wav", seconds=0.1)
    with pytest.raises(UsageError, match="at least that long"):
        render_video(head_package, short, tmp_path / "o.mp4", model="identity")
    assert not (tmp_path / "o.mp4").exists()


def test_cli_render_with_random_weights_warns_and_reports(head_package: Path, tmp_path: Path):
    audio = samples.tone_wav(tmp_path / "tone.wav", seconds=0.4)
    out = tmp_path / "cli.mp4"
    args = ["render", str(head_package), "--audio", str(audio), "-o", str(out), "--model", "random",
            "--seed", "1", "--backend", "torch"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["ok"] and summary["frames"] == math.ceil(0.4 * 30000 / 1001) == 12
    assert summary["model"] == {**summary["model"], "name": "random", "is_random": True, "backend": "torch"}
    assert probe_video(out).frame_count == 12
    assert "NOT lip-sync" in result.stderr  # said loudly, on stderr, even with --json
    again = runner.invoke(app, args)
    assert again.exit_code == OutputExistsError.exit_code and "--force" in again.stderr
    server = runner.invoke(app, [*args, "--force", "--server", "http://127.0.0.1:1"])
    assert server.exit_code == UsageError.exit_code



def test_render_through_a_server_matches_local(head_package: Path, speech_wav: Path, tmp_path: Path):
    from lipsync_tools.server import PackageSpec, ServerConfig
    from tests.server.servers import running_server

    config = ServerConfig(packages=(PackageSpec(id="served", path=head_package),), port=0, model="identity",
                          backend="torch")
    local = render_video(head_package, speech_wav, tmp_path / "local.mp4", model="identity", backend="torch")
    with running_server(config) as server:
        by_id = render_video("served", speech_wav, tmp_path / "by_id.mp4", server_url=server.url)
        by_path = render_video(head_package, speech_wav, tmp_path / "by_path.mp4", server_url=server.url)
    assert by_id.server_url == server.url and by_id.model is None
    assert by_id.frames == by_path.frames == local.frames
    assert by_id.fps == pytest.approx(local.fps)
    served = list(iter_frames(tmp_path / "by_id.mp4"))
    mine = list(iter_frames(tmp_path / "local.mp4"))
    assert all(np.array_equal(a, b) for a, b in zip(served, mine, strict=True))  # same pixels, same encoder
    assert probe_video(tmp_path / "by_path.mp4").has_audio


def test_a_session_and_an_offline_render_give_the_model_the_same_mel_windows(
    head_package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Wav2Lip: the session's streaming spectrogram gives frame k exactly render's mel window for frame k,
    whatever the client's chunk size (a fresh spectrogram per 200 ms window would not at its edges)."""
    import soundfile

    from lipsync_tools.client import LipsyncClient
    from lipsync_tools.protocol import ImageFormat, Pacing
    from lipsync_tools.server import PackageSpec, ServerConfig
    from tests.recording import record_model_inputs
    from tests.server.servers import TEST_LIMITS, running_server, speech_like

    rows = record_model_inputs(monkeypatch)
    speech = speech_like(1.1, seed=5)
    wav = tmp_path / "speech.wav"
    soundfile.write(wav, speech, 16000, subtype="PCM_16")
    result = render_video(head_package, wav, tmp_path / "out.mp4", model="identity", backend="torch")
    rendered = list(rows)
    config = ServerConfig(packages=(PackageSpec(id="head", path=head_package),), port=0, model="identity",
                          backend="torch", sessions=TEST_LIMITS, warmup_frames=0)
    with running_server(config) as server, LipsyncClient(server.url) as client:
        rows.clear()  # the model's load-time calls on zeros
        with client.session("head", pacing=Pacing.UNPACED, image=ImageFormat.CROP_ONLY) as session:
            frames = list(session.play(speech, chunk_seconds=0.013))
    assert len(frames) == result.frames == len(rendered) == len(rows)
    for k, (live, offline) in enumerate(zip(rows, rendered, strict=True)):
        np.testing.assert_allclose(live, offline, atol=1e-4, err_msg=f"frame {k}")


def test_render_from_another_host_asks_for_jpeg_at_the_documented_quality(
    head_package: Path, speech_wav: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """docs/engine.md: frames come back raw on loopback, JPEG 95 otherwise (127.0.0.2 is not 127.0.0.1)."""
    import lipsync_tools.render as render_module
    from lipsync_tools.protocol import FrameRequest, ImageFormat
    from lipsync_tools.server import PackageSpec, ServerConfig
    from tests.server.servers import running_server

    asked: list[tuple[ImageFormat, int]] = []

    class Recording(FrameRequest):
        @classmethod
        def from_mel(cls, *args: Any, **kwargs: Any) -> FrameRequest:
            request = FrameRequest.from_mel(*args, **kwargs)
            asked.append((request.image, request.jpeg_quality))
            return request

    monkeypatch.setattr(render_module, "FrameRequest", Recording)
    config = ServerConfig(packages=(PackageSpec(id="served", path=head_package),), host="127.0.0.2", port=0,
                          model="identity", backend="torch")
    with running_server(config) as server:
        assert "127.0.0.2" in server.url
        render_video("served", speech_wav, tmp_path / "remote.mp4", server_url=server.url)
    assert set(asked) == {(ImageFormat.JPEG, 95)} and render_module.RENDER_JPEG_QUALITY == 95
