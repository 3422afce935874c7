"""A SyncTalk_2D-328 avatar end to end, as a new user runs it: build from a real talking-head video with a
checkpoint in the public layout and an AVE encoder, render an mp4, serve it to a live session, export ONNX.

The weights are deterministic random ones saved the way SyncTalk_2D saves its own (a plain state_dict; the
encoder without the ``audio_encoder.`` prefix, like ``audio_visual_encoder.pth``): they move pixels, they do
not lip-sync.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lipsync_tools.cli.main import app
from lipsync_tools.media.video import probe_video
from lipsync_tools.models.ave import random_ave_encoder
from lipsync_tools.models.checkpoint import random_unet
from lipsync_tools.package import open_package, validate_package
from lipsync_tools.protocol.messages import ImageFormat, Pacing
from lipsync_tools.server import PackageSpec, ServerConfig
from tests.server.servers import TEST_LIMITS, running_server, speech_like

pytestmark = pytest.mark.slow
runner = CliRunner()


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("weights")
    unet = folder / "50.pth"
    torch.save(random_unet("synctalk2d-328", "ave", 1).state_dict(), unet)
    encoder = folder / "audio_visual_encoder.pth"
    state = random_ave_encoder(2).state_dict()
    torch.save({k.removeprefix("audio_encoder."): v for k, v in state.items()}, encoder)
    return unet, encoder


@pytest.fixture(scope="module")
def synctalk_package(
    talking_head_mp4: Path, weights: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    unet, encoder = weights
    out = tmp_path_factory.mktemp("synctalk") / "sanders.sanders"
    result = runner.invoke(
        app,
        [
            "build-package",
            str(talking_head_mp4),
            "-o",
            str(out),
            "--checkpoint",
            str(unet),
            "--audio-encoder",
            str(encoder),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["family"], summary["audio_mode"], summary["crop_size"]) == ("synctalk2d-328", "ave", 328)
    return out


def test_build_detects_the_family_from_the_checkpoint_and_stores_ave_rows(
    synctalk_package: Path, weights: tuple[Path, Path]
):
    assert validate_package(synctalk_package) == []
    pkg = open_package(synctalk_package, load_frames=False)
    assert (pkg.family, pkg.audio_mode, pkg.crop_size) == ("synctalk2d-328", "ave", 328)
    assert pkg.manifest.crop.box_rule == "synctalk2d"
    assert pkg.features is not None and pkg.features.shape == (pkg.n_frames + 2, 512)
    # the padded array repeats its first and last rows once, as SyncTalk_2D's aud_ave.npy
    assert np.array_equal(pkg.features[0], pkg.features[1])
    assert np.array_equal(pkg.features[-1], pkg.features[-2])
    assert pkg.read_checkpoint() == weights[0].read_bytes()
    assert pkg.read_checkpoint("model/audio_encoder") == weights[1].read_bytes()
    # the network sees the inner 320 with the reference rectangle hidden
    assert int(pkg.input_mask.sum()) == 320 * 320 - 310 * 305
    rects = np.asarray(pkg.rects)
    assert (rects[:, 2] - rects[:, 0] == rects[:, 3] - rects[:, 1]).all()


def test_render_an_mp4_with_sound(synctalk_package: Path, speech_wav: Path, tmp_path: Path):
    out = tmp_path / "out.mp4"
    result = runner.invoke(
        app, ["render", str(synctalk_package), "--audio", str(speech_wav), "-o", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["model"]["family"] == "synctalk2d-328"
    assert summary["model"]["audio_encoder"].startswith("embedded in")
    info = probe_video(out)
    assert info.has_audio and (info.width, info.height) == (176, 144)
    assert info.frame_count == summary["frames"] > 30


def test_serve_a_live_session_with_streamed_speech(synctalk_package: Path, tmp_path: Path):
    """The server computes AVE rows from streamed audio (look-ahead of 6 frames) and renders every frame."""
    config = ServerConfig(
        packages=(PackageSpec(id="sanders", path=synctalk_package),),
        port=0,
        backend="onnx",
        onnx_cache_dir=tmp_path / "onnx",
        sessions=TEST_LIMITS,
    )
    from lipsync_tools.client import LipsyncClient

    with running_server(config) as server, LipsyncClient(server.url) as client:
        (info,) = client.packages()
        assert (info["family"], info["audio_mode"]) == ("synctalk2d-328", "ave")
        with client.session("sanders", pacing=Pacing.UNPACED, image=ImageFormat.RAW_BGR) as session:
            frames = list(session.play(speech_like(1.0)))
    assert len(frames) == 30  # 1 s at 29.97 fps
    assert all(not f.silence and (f.width, f.height) == (176, 144) for f in frames)
    model = server.state.startup_report.model.to_dict()  # type: ignore[union-attr]
    assert (model["family"], model["audio_mode"], model["is_random"]) == ("synctalk2d-328", "ave", False)


def test_render_through_a_server_uses_a_session_for_ave_packages(
    synctalk_package: Path, speech_wav: Path, tmp_path: Path
):
    """One-shot requests carry 200 ms of audio, but AVE needs 16 frames of it: render streams a session."""
    from lipsync_tools.render import render_video

    config = ServerConfig(
        packages=(PackageSpec(id="sanders", path=synctalk_package),),
        port=0,
        backend="onnx",
        onnx_cache_dir=tmp_path / "onnx",
        sessions=TEST_LIMITS,
    )
    with running_server(config) as server:
        result = render_video("sanders", speech_wav, tmp_path / "out.mp4", server_url=server.url)
        metrics = server.state.metrics.render()
    assert result.frames > 30 and probe_video(tmp_path / "out.mp4").has_audio
    assert "lipsync_sessions_total 1" in metrics


def test_one_server_serves_two_families_each_with_its_own_model(
    synctalk_package: Path, head_package: Path, tmp_path: Path
):
    """A Wav2Lip avatar and a SyncTalk_2D avatar in one process: each package gets its family's model."""
    import httpx

    from lipsync_tools.client import LipsyncClient
    from lipsync_tools.errors import ProtocolError
    from lipsync_tools.protocol.messages import AudioFormat, FrameRequest

    config = ServerConfig(
        packages=(PackageSpec(id="head", path=head_package),), port=0, model="random", backend="onnx",
        onnx_cache_dir=tmp_path / "onnx", sessions=TEST_LIMITS, package_dir=synctalk_package.parent,
    )
    with running_server(config) as server, LipsyncClient(server.url) as client:
        client.load_package("sanders", str(synctalk_package))
        for package in ("head", "sanders"):
            request = FrameRequest(request_id=1, package_id=package, frame_index=5, audio=AudioFormat.REPLAY,
                                   image=ImageFormat.RAW_BGR)
            reply = client.frame(request)
            assert (reply.width, reply.height) == (176, 144)
        models = httpx.get(f"{server.url}/v1/models", timeout=10).json()["models"]
        assert sorted((m["family"], tuple(m["packages"])) for m in models) == [
            ("synctalk2d-328", ("sanders",)), ("wav2lip", ("head",))
        ]
        assert all(m["frames"] >= 1 for m in models)  # the startup warm-up renders a few of head's too
    # without --model, a package that embeds no checkpoint has no model: refused at load, clearly
    bare = ServerConfig(port=0, backend="onnx", onnx_cache_dir=tmp_path / "onnx", package_dir=Path("/"))
    with running_server(bare) as server, LipsyncClient(server.url) as client:
        with pytest.raises(ProtocolError, match="embeds no checkpoint, and this server has no wav2lip model"):
            client.load_package("head", str(head_package))
        client.load_package("sanders", str(synctalk_package))  # it brings its own checkpoint


def test_export_onnx_with_the_original_servers_names(weights: tuple[Path, Path], tmp_path: Path):
    out = tmp_path / "model.onnx"
    result = runner.invoke(app, ["models", "export", str(weights[0]), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["family"] == "synctalk2d-328"
    assert summary["inputs"] == {"input": ["batch", 6, 320, 320], "audio": ["batch", 32, 16, 16]}
    assert summary["outputs"] == {"output": ["batch", 3, 320, 320]}
    assert summary["max_abs_diff"] < 1e-4
    again = runner.invoke(app, ["models", "export", str(weights[0]), "-o", str(out)])
    assert again.exit_code == 9 and "already exists" in again.output


def test_a_session_and_an_offline_render_give_the_model_the_same_input(
    synctalk_package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The session's streaming spectrogram and AVE rows are on render's sample grid: for the same audio,
    frame k of a session and frame k of ``lipsync render`` get the same (16, 512) AVE input."""
    import soundfile

    from lipsync_tools.client import LipsyncClient
    from lipsync_tools.render import render_video
    from tests.recording import record_model_inputs

    rows = record_model_inputs(monkeypatch)
    speech = speech_like(1.3, seed=4)  # loud throughout: every frame runs the model on both paths
    wav = tmp_path / "speech.wav"
    soundfile.write(wav, speech, 16000, subtype="PCM_16")
    result = render_video(synctalk_package, wav, tmp_path / "out.mp4", backend="onnx",
                          cache_dir=tmp_path / "onnx")
    rendered = list(rows)
    rows.clear()
    config = ServerConfig(packages=(PackageSpec(id="sanders", path=synctalk_package),), port=0,
                          backend="onnx", onnx_cache_dir=tmp_path / "onnx", sessions=TEST_LIMITS,
                          warmup_frames=0)
    with running_server(config) as server, LipsyncClient(server.url) as client:
        rows.clear()  # the model's load-time calls on zeros
        with client.session("sanders", pacing=Pacing.UNPACED, image=ImageFormat.CROP_ONLY) as session:
            frames = list(session.play(speech, chunk_seconds=0.037))
    assert len(frames) == result.frames == len(rendered) == len(rows)
    assert [f.session_frame for f in frames] == list(range(result.frames))
    for k, (live, offline) in enumerate(zip(rows, rendered, strict=True)):
        np.testing.assert_allclose(live, offline, atol=1e-4, err_msg=f"frame {k}")


def test_int8_of_the_avatars_own_unet_is_calibrated_on_its_stored_ave_rows(
    synctalk_package: Path, tmp_path: Path
):
    """SyncTalk_2D-328 with its embedded UNet and AVE encoder: ``models quantize`` makes its int8 model
    from the package's own crops and stored AVE rows, and reports its PSNR against fp32."""
    result = runner.invoke(app, ["models", "quantize", str(synctalk_package), "--onnx-cache", str(tmp_path),
                                 "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["family"] == "synctalk2d-328" and summary["source"].startswith("embedded in")
    assert summary["quality"]["frames"] >= 1 and Path(summary["model_path"]).is_file()
