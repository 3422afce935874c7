"""Audio features per request, for every model family: Wav2Lip mel windows, AVE rows, imported rows.

Which audio a request may carry, by the family's audio mode:

* ``mel`` (Wav2Lip): a 200 ms PCM window, a client-computed mel window, or ``replay`` (the package's own).
* ``ave`` (SyncTalk_2D): the network takes 16 AVE rows around the frame (rows ``[i-8, i+8)`` of the padded
  array, see :mod:`lipsync_tools.models.audio_features`), so one 200 ms window is not enough:

  - ``replay`` uses the package's own rows (stored by the build, or computed here once per package);
  - a live session hands the engine a :class:`StreamAudio`: the session's PCM windows by frame, read
    ``look_ahead`` frames ahead; each window's AVE row is computed once and reused by the 16 frames that
    need it;
  - a one-shot PCM or mel request gives only its own frame's row; the other 15 rows are zeros, as at the
    ends of a clip. Use a session for speech.
* ``hubert`` / ``wenet`` (Ultralight): lipsync-tools cannot compute these; only ``replay`` of rows the user
  imported works, and audio requests are refused with ``bad_audio``.

Everything here runs in the engine's worker thread except :meth:`StreamAudio.add` (the session's loop).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

from ..audio.mel import mel_from_pcm_window
from ..errors import RequestError
from ..models.audio_features import ave_rows, package_ave_features, padded_row_frame
from ..models.family import AudioMode, ModelFamily
from ..package.reader import Package
from .requests import AudioKind, EngineRequest, Reason
from .store import LoadedPackage

_MAX_STREAM_WINDOWS = 64
"""Most PCM windows and rows a stream keeps (a session keeps ~16 in use); older ones are dropped."""


class StreamAudio:
    """One live session's audio for families whose window spans several frames (AVE).

    The session :meth:`add`\\ s frame ``k``'s int16 PCM window (``PCM_WINDOW_SAMPLES``) before it asks for
    frame ``k - look_ahead``, and calls :meth:`end` with the frame count when the client's audio ended.
    Memory is bounded: windows and rows older than the last :data:`_MAX_STREAM_WINDOWS` frames are dropped.
    """

    def __init__(self, look_ahead: int) -> None:
        self.look_ahead = look_ahead
        self.total: int | None = None
        self._pcm: dict[int, np.ndarray] = {}
        self._rows: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def add(self, k: int, window: np.ndarray) -> None:
        """Frame ``k``'s audio: an int16 PCM window (``PCM_WINDOW_SAMPLES``) or a float32 ``(80, 16)`` mel
        window (an offline render that computed the whole clip's mel)."""
        with self._lock:
            self._pcm[k] = window
            for old in [j for j in self._pcm if j < k - _MAX_STREAM_WINDOWS]:
                del self._pcm[old]

    def end(self, total: int) -> None:
        self.total = total

    def rows(
        self, frames: range, compute: Callable[[list[np.ndarray]], np.ndarray]
    ) -> dict[int, np.ndarray]:
        """The AVE rows of ``frames`` (computing missing ones with ``compute(pcm_windows) -> rows``)."""
        with self._lock:
            missing = [f for f in frames if f not in self._rows and f in self._pcm]
            windows = [self._pcm[f] for f in missing]
        if missing:
            computed = compute(windows)
            with self._lock:
                for f, row in zip(missing, computed, strict=True):
                    self._rows[f] = row
                    self._pcm.pop(f, None)
                newest = max(self._rows)
                for old in [j for j in self._rows if j < newest - _MAX_STREAM_WINDOWS]:
                    del self._rows[old]
        with self._lock:
            return {f: self._rows[f] for f in frames if f in self._rows}


class FeatureComputer:
    """The network audio input of each request, for one family, audio mode and (AVE) encoder."""

    def __init__(self, family: ModelFamily, audio_mode: AudioMode, encoder: Any | None) -> None:
        self.family = family
        self.mode = audio_mode
        self.encoder = encoder
        self._package_rows: weakref.WeakKeyDictionary[LoadedPackage, np.ndarray] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    @property
    def look_ahead(self) -> int:
        """Frames after the current one whose audio a session must send first (0: none)."""
        if self.mode.name != "ave":
            return 0
        # padded rows [k + o, k + o + W) hold frames r - 1: the last is frame k + o + W - 2.
        return self.mode.first_offset + self.mode.window_rows - 2

    def check_package(self, package: LoadedPackage) -> None:
        """``RequestError(bad_request)`` when the package was built for another family or audio."""
        p = package.package
        if p.family != self.family.name or p.audio_mode != self.mode.name:
            raise RequestError(
                Reason.BAD_REQUEST,
                f"package {package.info.id!r} was built for {p.family} with {p.audio_mode} audio, but this "
                f"server runs {self.family.name} with {self.mode.name} audio; serve it from a server with "
                f"--family {p.family}",
            )

    def network_audio(
        self, request: EngineRequest, package: LoadedPackage, stream: StreamAudio | None, stream_frame: int
    ) -> np.ndarray:
        """float32 ``network_shape`` audio input for one request (raises ``RequestError(bad_audio)``)."""
        if self.mode.name == "mel":
            return _mel_window(request, package).reshape(self.mode.network_shape)
        if request.audio is AudioKind.REPLAY:
            return self.mode.window(self._replay_rows(package), request.frame_index)
        if not self.mode.computable:
            raise RequestError(
                Reason.BAD_AUDIO,
                f"the {self.family.name} family takes {self.mode.name} features, which lipsync-tools cannot "
                "compute from audio (they come from the package only); request audio=replay",
            )
        if self.encoder is None:
            raise RequestError(
                Reason.BAD_AUDIO,
                f"the {self.family.name} family takes AVE features and this server has no AVE audio encoder "
                "to compute them from audio; start it with --audio-encoder audio_visual_encoder.pth "
                "(or request audio=replay)",
            )
        if stream is not None:
            return self._stream_window(stream, stream_frame)
        row = self._ave(_mel_window(request, package)[None])[0]
        rows = np.zeros((self.mode.window_rows, *self.mode.row_shape), np.float32)
        rows[-self.mode.first_offset + 1] = row  # padded row i + 1 is frame i
        return rows.reshape(self.mode.network_shape)

    # -- helpers ---------------------------------------------------------------------------------
    def _ave(self, mel_windows: np.ndarray) -> np.ndarray:
        return ave_rows(self.encoder, mel_windows)

    def _replay_rows(self, package: LoadedPackage) -> np.ndarray:
        if package.package.features is not None:
            stored = package_rows(package.package, self.mode, None)
            assert stored is not None
            return stored
        with self._lock:
            rows = self._package_rows.get(package)
            if rows is None:
                rows = package_rows(package.package, self.mode, self.encoder)
                if rows is None:
                    raise RequestError(
                        Reason.BAD_AUDIO,
                        f"package {package.info.id!r} stores no {self.mode.name} features and this server "
                        "has no audio encoder to compute them; start it with --audio-encoder",
                    )
                self._package_rows[package] = rows
        return rows

    def _stream_window(self, stream: StreamAudio, k: int) -> np.ndarray:
        lo = k + self.mode.first_offset
        rows_wanted = range(lo, lo + self.mode.window_rows)
        frames = {r: padded_row_frame(r, stream.total) for r in rows_wanted}
        wanted = sorted({f for f in frames.values() if f is not None})
        have = stream.rows(range(wanted[0], wanted[-1] + 1) if wanted else range(0), self._pcm_rows)
        out = np.zeros((self.mode.window_rows, *self.mode.row_shape), np.float32)
        for i, r in enumerate(rows_wanted):
            f = frames[r]
            if f is not None and f in have:
                out[i] = have[f]
        return out.reshape(self.mode.network_shape)

    def _pcm_rows(self, windows: list[np.ndarray]) -> np.ndarray:
        mels = np.stack(
            [
                w
                if w.dtype == np.float32
                else mel_from_pcm_window(w.astype(np.float32) * np.float32(1.0 / 32768.0))
                for w in windows
            ]
        )
        return self._ave(mels)


def package_rows(package: Package, mode: AudioMode, encoder: Any | None) -> np.ndarray | None:
    """A package's own padded feature rows (``mode``'s row shape): the ones it stores, else AVE rows
    computed from its mel with ``encoder``; ``None`` when it stores none and there is no encoder. Replay
    requests and int8 calibration (:mod:`.precision`) take their audio from here."""
    features = package.features
    if features is not None:
        return features.reshape(features.shape[0], *mode.row_shape)
    if encoder is None:
        return None
    return package_ave_features(encoder, package.mel, np.asarray(package.mel_index))


def _mel_window(request: EngineRequest, package: LoadedPackage) -> np.ndarray:
    """The ``(80, 16)`` float32 mel window of one request (replay: the package's own)."""
    return request_mel_window(request, lambda: package.mel_window(request.frame_index))


def request_mel_window(request: EngineRequest, replay: Callable[[], np.ndarray]) -> np.ndarray:
    """The ``(80, 16)`` float32 mel window a request carries: its mel payload (NaN/inf: ``bad_audio``), the
    mel of its PCM16 window, or ``replay()`` for ``audio=replay``. The engine and the original path share it.
    """
    if request.audio is AudioKind.REPLAY:
        return replay()
    if request.audio is AudioKind.MEL:
        mel = request.mel
        if not np.isfinite(mel).all():
            raise RequestError(Reason.BAD_AUDIO, "mel window holds NaN or infinite values")
        return mel
    pcm = request.pcm.astype(np.float32)
    pcm *= np.float32(1.0 / 32768.0)
    return mel_from_pcm_window(pcm)


__all__ = ["FeatureComputer", "StreamAudio", "package_rows", "request_mel_window"]
