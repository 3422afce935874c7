"""Wire messages to engine requests and back: the one place where the server translates.

The engine speaks its own types (:mod:`lipsync_tools.engine.requests`) and knows nothing of the wire format;
the server turns a :class:`~lipsync_tools.protocol.FrameRequest` into an
:class:`~lipsync_tools.engine.requests.EngineRequest`, an
:class:`~lipsync_tools.engine.requests.EngineResult` into a :class:`~lipsync_tools.protocol.FrameReply`, and
a :class:`~lipsync_tools.errors.RequestError` into the :class:`~lipsync_tools.errors.ProtocolError` of the
wire code that says the same (:data:`WIRE_CODES`). Tables, not name matching: renaming a member on either
side fails the test that every member is mapped.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from lipsync_tools.engine.requests import AudioKind, EngineRequest, EngineResult, ImageKind, Reason
from lipsync_tools.errors import ProtocolError, RequestError
from lipsync_tools.protocol import limits
from lipsync_tools.protocol.messages import AudioFormat, ErrorCode, FrameReply, FrameRequest, ImageFormat

AUDIO_KINDS: Final[dict[AudioFormat, AudioKind]] = {
    AudioFormat.PCM16: AudioKind.PCM16,
    AudioFormat.MEL: AudioKind.MEL,
    AudioFormat.REPLAY: AudioKind.REPLAY,
}

IMAGE_KINDS: Final[dict[ImageFormat, ImageKind]] = {
    ImageFormat.JPEG: ImageKind.JPEG,
    ImageFormat.PNG: ImageKind.PNG,
    ImageFormat.RAW_BGR: ImageKind.RAW_BGR,
    ImageFormat.CROP_ONLY: ImageKind.CROP_ONLY,
    ImageFormat.CROP_JPEG: ImageKind.CROP_JPEG,
}
IMAGE_FORMATS: Final[dict[ImageKind, ImageFormat]] = {kind: wire for wire, kind in IMAGE_KINDS.items()}

WIRE_CODES: Final[dict[Reason, ErrorCode]] = {
    Reason.UNKNOWN_PACKAGE: ErrorCode.UNKNOWN_PACKAGE,
    Reason.BAD_PACKAGE: ErrorCode.BAD_PACKAGE,
    Reason.FRAME_OUT_OF_RANGE: ErrorCode.FRAME_OUT_OF_RANGE,
    Reason.BAD_AUDIO: ErrorCode.BAD_AUDIO,
    Reason.BAD_REQUEST: ErrorCode.BAD_FIELD,
    Reason.OVERLOADED: ErrorCode.OVERLOADED,
    Reason.INTERNAL: ErrorCode.INTERNAL,
}
"""The wire error code a client gets for each reason the engine gives."""


def wire_error(error: RequestError) -> ProtocolError:
    """The ProtocolError a client gets for the engine's ``error``: same message; unknown reason: internal."""
    try:
        code = WIRE_CODES[Reason(error.reason)]
    except ValueError:
        code = ErrorCode.INTERNAL
    translated = ProtocolError(code, str(error))
    translated.__cause__ = error
    return translated


@contextmanager
def wire_errors() -> Iterator[None]:
    """Within the block, the engine's RequestErrors become the ProtocolErrors the server answers with."""
    try:
        yield
    except RequestError as exc:
        raise wire_error(exc) from exc


def engine_request(message: FrameRequest) -> EngineRequest:
    """The engine request of a wire FrameRequest (its audio payload viewed as an array, not copied)."""
    samples = None
    if message.audio is AudioFormat.PCM16:
        samples = message.pcm_window()
    elif message.audio is AudioFormat.MEL:
        samples = message.mel_window()
    with wire_errors():
        return EngineRequest(
            package_id=message.package_id,
            frame_index=message.frame_index,
            audio=AUDIO_KINDS[message.audio],
            samples=samples,
            image=IMAGE_KINDS[message.image],
            jpeg_quality=message.jpeg_quality,
        )


def frame_reply(
    result: EngineResult,
    request_id: int,
    *,
    session_frame: int | None = None,
    audio_offset: int | None = None,
) -> FrameReply:
    """The wire FrameReply of the engine's ``result`` (timings capped at the wire's u32 microseconds)."""
    return FrameReply(
        request_id=request_id,
        frame_index=result.frame_index,
        image=IMAGE_FORMATS[result.image],
        width=result.width,
        height=result.height,
        timings={stage: min(us, limits.MAX_U32) for stage, us in result.timings.items()},
        rect=result.rect,
        silence=result.silence,
        session_frame=session_frame,
        audio_offset=audio_offset,
        payload=result.payload,
    )


__all__ = [
    "AUDIO_KINDS",
    "IMAGE_FORMATS",
    "IMAGE_KINDS",
    "WIRE_CODES",
    "engine_request",
    "frame_reply",
    "wire_error",
    "wire_errors",
]
