"""The engine's own request: it validates itself, so every renderer refuses bad audio the same way."""

from __future__ import annotations

import numpy as np
import pytest

from lipsync_tools.engine.requests import (
    MEL_WINDOW_SHAPE,
    PCM_WINDOW_SAMPLES,
    AudioKind,
    EngineRequest,
    ImageKind,
    Reason,
    check_frame_index,
)
from lipsync_tools.errors import LipsyncError, RequestError


def refusal(**fields: object) -> RequestError:
    """The error ``EngineRequest(**fields)`` raises (package "head", frame 0 unless given)."""
    fields = {"package_id": "head", "frame_index": 0, **fields}
    with pytest.raises(RequestError) as err:
        EngineRequest(**fields)  # type: ignore[arg-type]
    return err.value


def test_the_window_constants_are_one_wav2lip_window():
    assert PCM_WINDOW_SAMPLES == 3200  # 200 ms at 16 kHz
    assert MEL_WINDOW_SHAPE == (80, 16)


def test_well_formed_requests_are_accepted():
    pcm = np.zeros(PCM_WINDOW_SAMPLES, np.int16)
    request = EngineRequest(package_id="head", frame_index=3, audio=AudioKind.PCM16, samples=pcm)
    assert request.pcm is pcm and (request.image, request.jpeg_quality) == (ImageKind.JPEG, 90)
    mel = np.zeros(MEL_WINDOW_SHAPE, np.float32)
    mel.flags.writeable = False  # a read-only view of a received buffer is fine
    assert EngineRequest(package_id="a.b_c-1", frame_index=0, audio=AudioKind.MEL, samples=mel).mel is mel
    replay = EngineRequest(package_id="head", frame_index=119, image=ImageKind.CROP_JPEG, jpeg_quality=1)
    assert replay.audio is AudioKind.REPLAY and replay.samples is None
    assert EngineRequest(package_id="x" * 64, frame_index=0, jpeg_quality=100).jpeg_quality == 100


@pytest.mark.parametrize(
    ("audio", "samples", "found"),
    [
        (AudioKind.PCM16, np.zeros(3200, np.float32), "float32 (3200,)"),  # right length, wrong dtype
        (AudioKind.PCM16, np.zeros(3199, np.int16), "int16 (3199,)"),  # the wire's 6398 bytes
        (AudioKind.PCM16, np.zeros((1, 3200), np.int16), "int16 (1, 3200)"),
        (AudioKind.PCM16, np.zeros((80, 16), np.float32), "float32 (80, 16)"),  # a mel window as PCM
        (AudioKind.PCM16, None, "nothing"),
        (AudioKind.PCM16, b"\0" * 6400, "bytes"),  # wire bytes, not an array
        (AudioKind.MEL, np.zeros((80, 16), np.float64), "float64 (80, 16)"),
        (AudioKind.MEL, np.zeros((16, 80), np.float32), "float32 (16, 80)"),
        (AudioKind.MEL, np.zeros(3200, np.int16), "int16 (3200,)"),  # a PCM window as mel
        (AudioKind.MEL, None, "nothing"),
    ],
)
def test_samples_that_do_not_match_the_audio_kind_are_bad_audio(
    audio: AudioKind, samples: object, found: str
):
    expected = "int16 (3200,)" if audio is AudioKind.PCM16 else "float32 (80, 16)"
    error = refusal(audio=audio, samples=samples)
    assert error.reason == Reason.BAD_AUDIO == "bad_audio"
    assert str(error) == f"{audio} audio must be {expected}, got {found}"


def test_replay_with_samples_is_bad_audio():
    error = refusal(audio=AudioKind.REPLAY, samples=np.zeros(3200, np.int16))
    assert error.reason == "bad_audio"
    assert str(error) == "replay requests carry no samples (the package's own audio is used)"


def test_an_audio_kind_that_is_not_an_audio_kind_is_bad_audio():
    error = refusal(audio="pcm16", samples=np.zeros(3200, np.int16))
    assert error.reason == "bad_audio" and str(error) == "audio must be an AudioKind, got 'pcm16'"


@pytest.mark.parametrize(
    ("package_id", "message"),
    [
        ("", "package_id '' is not valid: use 1-64 characters of A-Z a-z 0-9 . _ - starting with a letter or "
             "digit"),
        ("../etc", "package_id '../etc' is not valid: use 1-64 characters of A-Z a-z 0-9 . _ - starting with "
                   "a letter or digit"),
        (".hidden", "package_id '.hidden' is not valid: use 1-64 characters of A-Z a-z 0-9 . _ - starting "
                    "with a letter or digit"),
        ("x" * 65, "package_id is 65 characters, the limit is 64"),
        (7, "package_id must be a string, got int"),
    ],
)
def test_a_bad_package_id_is_bad_request(package_id: object, message: str):
    error = refusal(package_id=package_id)
    assert error.reason == Reason.BAD_REQUEST == "bad_request" and str(error) == message


@pytest.mark.parametrize("frame_index", [-1, 1.0, True, "3", None])
def test_a_bad_frame_index_is_bad_request(frame_index: object):
    error = refusal(frame_index=frame_index)
    assert error.reason == "bad_request"
    assert str(error) == f"frame_index must be an int >= 0, got {frame_index!r}"


@pytest.mark.parametrize("jpeg_quality", [0, 101, -5, 90.0, True])
def test_a_bad_jpeg_quality_is_bad_request(jpeg_quality: object):
    error = refusal(jpeg_quality=jpeg_quality)
    assert error.reason == "bad_request"
    assert str(error) == f"jpeg_quality must be an int in 1..100, got {jpeg_quality!r}"


def test_an_image_kind_that_is_not_an_image_kind_is_bad_request():
    error = refusal(image="jpeg")
    assert error.reason == "bad_request" and str(error) == "image must be an ImageKind, got 'jpeg'"


def test_the_id_is_checked_before_the_audio():
    """A request wrong in several ways is refused for the first check, in the documented order."""
    error = refusal(package_id="../x", frame_index=-1, audio=AudioKind.PCM16, samples=None)
    assert error.reason == "bad_request" and str(error).startswith("package_id '../x'")
    error = refusal(frame_index=-1, audio=AudioKind.PCM16, samples=None)
    assert error.reason == "bad_request" and str(error).startswith("frame_index")


def test_audio_of_the_other_kind_cannot_be_read():
    pcm = EngineRequest(package_id="head", frame_index=0, audio=AudioKind.PCM16,
                        samples=np.zeros(3200, np.int16))
    with pytest.raises(RequestError) as err:
        _ = pcm.mel
    assert err.value.reason == "bad_audio" and str(err.value) == "request carries pcm16 audio, not mel"
    replay = EngineRequest(package_id="head", frame_index=0)
    with pytest.raises(RequestError) as err:
        _ = replay.pcm
    assert err.value.reason == "bad_audio" and str(err.value) == "request carries replay audio, not pcm16"


def test_a_request_error_is_a_lipsync_value_error_with_the_request_exit_code():
    error = refusal(frame_index=-1)
    assert isinstance(error, LipsyncError) and isinstance(error, ValueError) and error.exit_code == 22


def test_requests_are_frozen():
    request = EngineRequest(package_id="head", frame_index=0)
    with pytest.raises(AttributeError):
        request.frame_index = 5  # type: ignore[misc]


def test_crop_kinds_are_the_crop_images():
    assert {kind for kind in ImageKind if kind.is_crop} == {ImageKind.CROP_ONLY, ImageKind.CROP_JPEG}


def test_check_frame_index():
    for index in (0, 119):
        check_frame_index("package", "head", 120, index)
    with pytest.raises(RequestError) as err:
        check_frame_index("package", "head", 120, 120)
    assert err.value.reason == Reason.FRAME_OUT_OF_RANGE == "frame_out_of_range"
    assert str(err.value) == "frame 120 is out of range: package 'head' has frames 0..119"
    with pytest.raises(RequestError) as err:
        check_frame_index("video", "clip", 30, -1)
    assert err.value.reason == "frame_out_of_range"
    assert str(err.value) == "frame -1 is out of range: video 'clip' has frames 0..29"
