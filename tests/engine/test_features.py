"""Audio features per family in the engine: AVE windows for streams, replay, one-shot; refusals."""

from __future__ import annotations

import numpy as np
import pytest

from lipsync_tools.engine.features import FeatureComputer, StreamAudio
from lipsync_tools.engine.requests import AudioKind, EngineRequest
from lipsync_tools.errors import RequestError
from lipsync_tools.models.audio_features import (
    ave_rows,
    package_ave_features,
    padded_ave_array,
    padded_row_frame,
)
from lipsync_tools.models.ave import random_ave_encoder
from lipsync_tools.models.families import get_family

N_FRAMES = 30


@pytest.fixture(scope="module")
def encoder():
    return random_ave_encoder(0)


@pytest.fixture(scope="module")
def mel_windows():
    rng = np.random.default_rng(3)
    return rng.uniform(-4, 4, (N_FRAMES, 80, 16)).astype(np.float32)


def test_padded_row_frame_follows_the_reference_array():
    # aud_ave.npy = [row(0), row(0), row(1), ..., row(n-1), row(n-1)]
    n = 5
    assert [padded_row_frame(r, n) for r in range(-1, n + 3)] == [None, 0, 0, 1, 2, 3, 4, 4, None]
    assert padded_row_frame(40, None) == 39  # a live stream's length is not known yet


def test_look_ahead_of_ave_is_six_frames(encoder):
    family = get_family("synctalk2d-328")
    computer = FeatureComputer(family, family.audio_mode("ave"), encoder)
    assert computer.look_ahead == 6  # rows [k-8, k+8) of the padded array are frames k-9 .. k+6
    wav2lip = get_family("wav2lip")
    assert FeatureComputer(wav2lip, wav2lip.audio_mode(None), None).look_ahead == 0


def test_stream_windows_equal_the_offline_padded_array_windows(encoder, mel_windows):
    """Frame k's network audio from a stream equals rows [k-8, k+8) of the build's padded AVE array."""
    family = get_family("synctalk2d-328")
    mode = family.audio_mode("ave")
    computer = FeatureComputer(family, mode, encoder)
    offline = padded_ave_array(ave_rows(encoder, mel_windows))
    assert offline.shape == (N_FRAMES + 2, 512)
    stream = StreamAudio(computer.look_ahead)
    added = 0
    for k in range(N_FRAMES):
        while added <= min(k + stream.look_ahead, N_FRAMES - 1):
            stream.add(added, mel_windows[added])
            added += 1
        if added == N_FRAMES:
            stream.end(N_FRAMES)
        got = computer.network_audio(_pcm_request(), None, stream, k)  # type: ignore[arg-type]
        # batch sizes differ (1..16 rows per call vs 30), so float32 sums differ in the last bits
        np.testing.assert_allclose(got, mode.window(offline, k), rtol=1e-4, atol=1e-4)


def _pcm_request() -> EngineRequest:
    pcm = np.zeros(3200, np.int16)
    return EngineRequest(package_id="p", frame_index=0, audio=AudioKind.PCM16, samples=pcm)


def test_package_features_are_the_padded_array_of_the_mel_windows(encoder, mel_windows):
    mel = np.concatenate(list(mel_windows), axis=1)  # windows side by side: starts 0, 16, 32, ...
    starts = np.arange(N_FRAMES) * 16
    features = package_ave_features(encoder, mel, starts)
    np.testing.assert_allclose(features, padded_ave_array(ave_rows(encoder, mel_windows)), atol=1e-6)


def test_stream_memory_is_bounded(encoder):
    stream = StreamAudio(6)
    for k in range(500):
        stream.add(k, np.zeros(3200, np.int16))
    assert len(stream._pcm) <= 65


def test_imported_only_features_refuse_audio_requests():
    family = get_family("ultralight-160")
    computer = FeatureComputer(family, family.audio_mode("hubert"), None)
    with pytest.raises(RequestError) as err:
        computer.network_audio(_pcm_request(), None, None, 0)  # type: ignore[arg-type]
    assert err.value.reason == "bad_audio" and "audio=replay" in str(err.value)
