"""What the engine is asked and what it answers: its own request, result and failure types.

The engine knows nothing of the wire format. The server turns each wire message into a
:class:`EngineRequest`, the engine answers with a :class:`EngineResult` or raises
:class:`~lipsync_tools.errors.RequestError` with a :class:`Reason`, and the server turns those back into
wire replies and error codes (``server/translate.py``). A protocol version therefore changes ``protocol/``,
``server/`` and ``client/``, never the engine. ``lipsync render`` and Python callers build requests directly.

A request validates itself on construction (like the wire messages do for theirs), so every renderer that
takes one (the engine, the benchmark's original path) checks audio the same way. The checks every renderer
makes against what it holds (frame range) are :func:`check_frame_index`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, NoReturn

import numpy as np

from ..audio.mel import MEL_WINDOW_FRAMES, MelOptions, pcm_window_samples
from ..errors import RequestError
from ..ids import package_id_problem
from .pacing import is_silent

PCM_WINDOW_SAMPLES: Final = pcm_window_samples()
"""int16 samples of one PCM request: 200 ms at 16 kHz, the span of one Wav2Lip mel window."""

MEL_WINDOW_SHAPE: Final = (MelOptions().n_mels, MEL_WINDOW_FRAMES)
"""Shape of one mel window a request may carry instead: ``(80, 16)`` float32."""


class Reason(StrEnum):
    """Why a request was refused or failed (``RequestError.reason``); the server maps each to a wire code."""

    UNKNOWN_PACKAGE = "unknown_package"  # no package (or video) is loaded under this id
    BAD_PACKAGE = "bad_package"  # no model can serve the package, or its model does not load
    FRAME_OUT_OF_RANGE = "frame_out_of_range"  # frame index >= the package's frame count
    BAD_AUDIO = "bad_audio"  # audio of the wrong shape, non-finite, or a kind this model cannot take
    BAD_REQUEST = "bad_request"  # a request this package cannot answer (e.g. full frames of a crop-only one)
    OVERLOADED = "overloaded"  # the queue is full or the engine is not running: retry later
    INTERNAL = "internal"  # the model or the compositor failed: a bug or a broken checkpoint


class AudioKind(StrEnum):
    """The audio a request carries."""

    PCM16 = "pcm16"  # int16 mono 16 kHz, PCM_WINDOW_SAMPLES samples: the 200 ms window of this frame
    MEL = "mel"  # float32 MEL_WINDOW_SHAPE: a mel window the caller computed
    REPLAY = "replay"  # none: the package's own audio features for this frame


class ImageKind(StrEnum):
    """What the engine renders and encodes."""

    JPEG = "jpeg"  # the whole frame, JPEG bytes
    PNG = "png"  # the whole frame, PNG bytes
    RAW_BGR = "raw_bgr"  # the whole frame, uint8 (height, width, 3) bytes
    CROP_ONLY = "crop_only"  # the generated crop, uint8 (side, side, 3) bytes, and where it goes
    CROP_JPEG = "crop_jpeg"  # the generated crop as JPEG bytes, and where it goes

    @property
    def is_crop(self) -> bool:
        """The result holds only the generated crop and the rectangle it goes into (the caller composites)."""
        return self in (ImageKind.CROP_ONLY, ImageKind.CROP_JPEG)


def fail(reason: Reason, message: str) -> NoReturn:
    raise RequestError(reason, message)


@dataclass(frozen=True, kw_only=True, slots=True)
class EngineRequest:
    """Render frame ``frame_index`` of package ``package_id`` with this audio.

    ``samples``: int16 ``(PCM_WINDOW_SAMPLES,)`` for ``PCM16``, float32 ``MEL_WINDOW_SHAPE`` for ``MEL``
    (read-only views of a received buffer are fine: the engine never writes to them), ``None`` for
    ``REPLAY``. ``jpeg_quality`` (1-100) is used for JPEG images only. Raises ``RequestError``:
    ``bad_audio`` for samples that do not match ``audio``, ``bad_request`` for a bad id, index or quality.
    """

    package_id: str
    frame_index: int
    audio: AudioKind = AudioKind.REPLAY
    samples: np.ndarray | None = field(default=None, repr=False)
    image: ImageKind = ImageKind.JPEG
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        problem = package_id_problem(self.package_id)
        if problem is not None:
            fail(Reason.BAD_REQUEST, problem)
        if type(self.frame_index) is not int or self.frame_index < 0:
            fail(Reason.BAD_REQUEST, f"frame_index must be an int >= 0, got {self.frame_index!r}")
        if not isinstance(self.audio, AudioKind):
            fail(Reason.BAD_AUDIO, f"audio must be an AudioKind, got {self.audio!r}")
        if not isinstance(self.image, ImageKind):
            fail(Reason.BAD_REQUEST, f"image must be an ImageKind, got {self.image!r}")
        if type(self.jpeg_quality) is not int or not 1 <= self.jpeg_quality <= 100:
            fail(Reason.BAD_REQUEST, f"jpeg_quality must be an int in 1..100, got {self.jpeg_quality!r}")
        expected = _EXPECTED_SAMPLES[self.audio]
        samples = self.samples
        if expected is None:
            if samples is not None:
                fail(Reason.BAD_AUDIO, "replay requests carry no samples (the package's own audio is used)")
            return
        dtype, shape = expected
        if not isinstance(samples, np.ndarray) or samples.dtype != dtype or samples.shape != shape:
            if isinstance(samples, np.ndarray):
                found = f"{samples.dtype} {samples.shape}"
            else:
                found = "nothing" if samples is None else type(samples).__name__
            fail(Reason.BAD_AUDIO, f"{self.audio} audio must be {np.dtype(dtype)} {shape}, got {found}")

    @property
    def pcm(self) -> np.ndarray:
        """The int16 PCM window of a ``PCM16`` request."""
        if self.audio is not AudioKind.PCM16 or self.samples is None:
            fail(Reason.BAD_AUDIO, f"request carries {self.audio} audio, not pcm16")
        return self.samples

    def is_silent(self, dbfs_threshold: float) -> bool:
        """A PCM16 window quieter than ``dbfs_threshold`` (renderers answer it with the frame as it is)."""
        return self.audio is AudioKind.PCM16 and is_silent(self.pcm, dbfs_threshold)

    @property
    def mel(self) -> np.ndarray:
        """The float32 mel window of a ``MEL`` request."""
        if self.audio is not AudioKind.MEL or self.samples is None:
            fail(Reason.BAD_AUDIO, f"request carries {self.audio} audio, not mel")
        return self.samples


_EXPECTED_SAMPLES: Final[Mapping[AudioKind, tuple[type, tuple[int, ...]] | None]] = {
    AudioKind.PCM16: (np.int16, (PCM_WINDOW_SAMPLES,)),
    AudioKind.MEL: (np.float32, MEL_WINDOW_SHAPE),
    AudioKind.REPLAY: None,
}


@dataclass(frozen=True, kw_only=True, slots=True)
class EngineResult:
    """One rendered frame.

    ``payload``: the encoded image (``image`` says how; raw images are views of a frame no one writes to).
    ``width``/``height``: the image's size (0x0 for a silent frame of a crop request: "show your own frame").
    ``rect``: where a crop goes in the frame (crop images only). ``silence``: the package's own frame, no
    model call. ``timings``: microseconds per stage, in the renderer's stage order.
    """

    frame_index: int
    image: ImageKind
    width: int
    height: int
    payload: bytes | memoryview = field(default=b"", repr=False)
    timings: Mapping[str, int] = field(default_factory=dict)
    rect: tuple[int, int, int, int] | None = None
    silence: bool = False


def check_frame_index(what: str, package_id: str, n_frames: int, frame_index: int) -> None:
    """``frame_out_of_range`` unless ``0 <= frame_index < n_frames`` (``what``: "package" or "video")."""
    if not 0 <= frame_index < n_frames:
        fail(
            Reason.FRAME_OUT_OF_RANGE,
            f"frame {frame_index} is out of range: {what} {package_id!r} has frames 0..{n_frames - 1}",
        )


def micros(seconds: float) -> int:
    """``seconds`` as whole microseconds, never negative (a timing of a result)."""
    return max(0, round(seconds * 1e6))


__all__ = [
    "MEL_WINDOW_SHAPE",
    "PCM_WINDOW_SAMPLES",
    "AudioKind",
    "EngineRequest",
    "EngineResult",
    "ImageKind",
    "Reason",
    "check_frame_index",
    "micros",
]
