"""server/translate.py: every engine member has its wire twin, and a message survives the round trip."""

from __future__ import annotations

import numpy as np
import pytest

from lipsync_tools.engine.requests import AudioKind, EngineResult, ImageKind, Reason
from lipsync_tools.errors import ProtocolError, RequestError
from lipsync_tools.protocol import limits
from lipsync_tools.protocol.messages import AudioFormat, ErrorCode, FrameRequest, ImageFormat
from lipsync_tools.server.translate import (
    AUDIO_KINDS,
    IMAGE_FORMATS,
    IMAGE_KINDS,
    WIRE_CODES,
    engine_request,
    frame_reply,
    wire_error,
    wire_errors,
)


def test_every_member_on_either_side_is_mapped():
    assert set(AUDIO_KINDS) == set(AudioFormat) and set(AUDIO_KINDS.values()) == set(AudioKind)
    assert set(IMAGE_KINDS) == set(ImageFormat) and set(IMAGE_FORMATS) == set(ImageKind)
    assert set(WIRE_CODES) == set(Reason)
    assert all(IMAGE_FORMATS[IMAGE_KINDS[wire]] is wire for wire in ImageFormat)
    same_name = [reason for reason in Reason if reason is not Reason.BAD_REQUEST]
    assert all(WIRE_CODES[reason].value == reason.value for reason in same_name)
    assert WIRE_CODES[Reason.BAD_REQUEST] is ErrorCode.BAD_FIELD


def test_a_pcm_request_becomes_an_engine_request_viewing_the_payload():
    pcm = np.arange(3200, dtype=np.int16)
    message = FrameRequest.from_pcm(pcm, request_id=7, package_id="anna", frame_index=3,
                                    image=ImageFormat.CROP_JPEG, jpeg_quality=70)
    request = engine_request(message)
    assert (request.package_id, request.frame_index, request.audio, request.image, request.jpeg_quality) == (
        "anna", 3, AudioKind.PCM16, ImageKind.CROP_JPEG, 70)
    assert np.array_equal(request.pcm, pcm) and not request.pcm.flags.writeable  # a view, not a copy
    replay = engine_request(
        FrameRequest(request_id=1, package_id="anna", frame_index=0, audio=AudioFormat.REPLAY)
    )
    assert replay.audio is AudioKind.REPLAY and replay.samples is None


def test_a_result_becomes_a_reply_with_the_request_id_and_capped_timings():
    result = EngineResult(frame_index=4, image=ImageKind.CROP_ONLY, width=2, height=2, payload=bytes(12),
                          timings={"total": limits.MAX_U32 + 5, "encode": 3}, rect=(0, 0, 2, 2))
    reply = frame_reply(result, 99, session_frame=6, audio_offset=3840)
    assert (reply.request_id, reply.frame_index, reply.image, reply.rect) == (99, 4, ImageFormat.CROP_ONLY,
                                                                           (0, 0, 2, 2))
    assert dict(reply.timings) == {"total": limits.MAX_U32, "encode": 3}
    assert (reply.session_frame, reply.audio_offset, bytes(reply.payload)) == (6, 3840, bytes(12))


@pytest.mark.parametrize(
    ("reason", "code"),
    [("unknown_package", "unknown_package"), ("bad_request", "bad_field"), ("overloaded", "overloaded"),
     ("no_such_reason", "internal")],
)
def test_an_engine_refusal_becomes_the_wire_code_with_its_message(reason, code):
    error = wire_error(RequestError(reason, "why it was refused"))
    assert (error.code, str(error)) == (code, "why it was refused")
    with pytest.raises(ProtocolError) as caught, wire_errors():
        raise RequestError(reason, "again")
    assert caught.value.code == code and isinstance(caught.value.__cause__, RequestError)
