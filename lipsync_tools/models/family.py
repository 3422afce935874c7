"""Model families: everything about a lip-sync network family that is not its weights.

A family fixes how a face crop is cut (the box rule and the crop size), which part of the crop the network
sees (the *inner region*), what it hides from the network (the input mask), which audio feature it takes and
over how many video frames, and how the prediction goes back into the crop. Builders, importers, the engine
and the exporters ask the family instead of hard-coding Wav2Lip's numbers.

The table of families lives in :mod:`lipsync_tools.models.families`; a family names its network factory as
a ``"module:function"`` string, imported only when a network is built, so reading the table costs no torch
import.

Array conventions (all NumPy, BGR, uint8 pixels):

* crops: ``(B, S, S, 3)`` at the family's ``crop_size`` ``S`` (96, 328 or 168), as packages store them;
* network image input: float32 ``(B, 6, n, n)``, ``n = S - 2 * inner_margin`` (96, 320, 160), in ``[0, 1]``;
* network audio input: float32 ``(B, *audio.network_shape)``;
* prediction: float32 ``(B, 3, n, n)`` in ``[0, 1]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lipsync_tools.errors import UsageError

BOX_RULES = ("padded", "synctalk2d")
"""``padded``: a square around the landmarks' extent plus padding (Wav2Lip's crops). ``synctalk2d``: width =
the face width at eye level, top at the middle of the nose bridge, height = width (SyncTalk_2D/Ultralight)."""


@dataclass(frozen=True, kw_only=True)
class AudioMode:
    """One audio feature a family's network can take.

    ``row_shape`` is the feature of one video frame (``mel``: the frame's ``(80, 16)`` mel window; ``ave``:
    512 values; ``hubert``: two 1024-d HuBERT frames; ``wenet``: 16 x 512). The network takes
    ``window_rows`` consecutive rows centred on the frame, reshaped to ``network_shape``. ``computable``:
    lipsync-tools can compute the rows from audio (mel always; ave with an AVE encoder); HuBERT and WeNet
    features come only from arrays the user precomputed (we never download an encoder).
    ``look_ahead_frames``: how many frames after the current one the window reaches.
    """

    name: str
    row_shape: tuple[int, ...]
    network_shape: tuple[int, ...]
    computable: bool
    description: str = ""

    @property
    def window_rows(self) -> int:
        rows = math.prod(self.network_shape) // math.prod(self.row_shape)
        return max(1, rows)

    @property
    def first_offset(self) -> int:
        """Row ``index + first_offset`` is the window's first row (``-window_rows // 2``; 0 for one row)."""
        return -(self.window_rows // 2)

    def window(self, rows: np.ndarray, index: int) -> np.ndarray:
        """Frame ``index``'s network audio input from per-frame ``rows`` ``(R, *row_shape)``.

        Rows ``[index + first_offset, index + first_offset + window_rows)``; rows beyond the array's ends
        are zeros (SyncTalk_2D's and Ultralight's ``get_audio_features``). Returns a new float32 array of
        ``network_shape``.
        """
        n = self.window_rows
        lo = index + self.first_offset
        out = np.zeros((n, *self.row_shape), np.float32)
        a, b = max(lo, 0), min(lo + n, rows.shape[0])
        if a < b:
            out[a - lo : b - lo] = rows[a:b]
        return out.reshape(self.network_shape)


@dataclass(frozen=True, kw_only=True)
class ModelFamily:
    """A lip-sync network family; see the module docstring for the array conventions.

    ``inner_margin``: the network sees ``crop[m:S-m, m:S-m]`` and its prediction replaces exactly that
    region. ``hidden_rect``: ``(x, y, w, h)`` in network-input pixels blacked out in the masked copy
    (``cv2.rectangle`` semantics: columns ``x..x+w-1``, rows ``y..y+h-1``); ``None`` hides the lower half
    (rows ``n // 2`` and below), as Wav2Lip. ``reference_first``: channel order of the 6-channel input,
    ``[reference, masked]`` (SyncTalk_2D, Ultralight) or ``[masked, reference]`` (Wav2Lip).
    ``network``: ``"module:function"`` building the torch module from ``(audio_mode)``. ``image_first``: its
    forward takes ``(image, audio)`` (else ``(audio, image)``, as Wav2Lip's ``forward(mel, face)``).
    ``onnx_names``: input image, input audio and output names of an ONNX export.
    """

    name: str
    title: str
    source: str
    crop_size: int
    inner_margin: int
    box_rule: str
    hidden_rect: tuple[int, int, int, int] | None
    reference_first: bool
    audio_modes: tuple[AudioMode, ...]
    default_audio_mode: str
    per_avatar: bool
    network: str
    image_first: bool = True
    onnx_names: tuple[str, str, str] = ("input", "audio", "output")

    def __post_init__(self) -> None:
        if self.box_rule not in BOX_RULES:
            raise UsageError(f"internal: family {self.name} has box rule {self.box_rule!r}")
        self.audio_mode(self.default_audio_mode)

    # -- geometry -----------------------------------------------------------------------------------
    @property
    def network_size(self) -> int:
        """Side of the square the network sees (96, 320, 160)."""
        return self.crop_size - 2 * self.inner_margin

    def visible_mask(self) -> np.ndarray:
        """uint8 ``(n, n)``: 1 where the masked input copy keeps the crop, 0 where it is blacked out."""
        n = self.network_size
        mask = np.ones((n, n), np.uint8)
        if self.hidden_rect is None:
            mask[n // 2 :] = 0
        else:
            x, y, w, h = self.hidden_rect
            mask[y : y + h, x : x + w] = 0
        return mask

    def input_mask(self) -> np.ndarray:
        """The package's ``masks/input``: uint8 ``(S, S)``, 1 where the network sees the crop unmasked.

        Outside the inner region the network sees nothing, so it is 0 there too.
        """
        s, m = self.crop_size, self.inner_margin
        mask = np.zeros((s, s), np.uint8)
        mask[m : s - m, m : s - m] = self.visible_mask()
        return mask

    # -- network input / output ---------------------------------------------------------------------
    def network_input(self, crops: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """uint8 ``(B, S, S, 3)`` crops -> float32 ``(B, 6, n, n)`` in ``[0, 1]`` (see class docstring).

        ``out``: a float32 ``(B, 6, n, n)`` array (any strides) to fill and return instead of a new one; the
        backends pass a buffer they reuse across calls. The values are the same bits either way. Raises
        :class:`UsageError` for an ``out`` of another shape or dtype.
        """
        s, m = self.crop_size, self.inner_margin
        inner = crops[:, m : s - m, m : s - m]
        b, n = inner.shape[0], self.network_size
        if out is None:
            out = np.empty((b, 6, n, n), np.float32)
        elif not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != (b, 6, n, n):
            raise UsageError(
                f"network_input's out must be a float32 ({b}, 6, {n}, {n}) array, got {_describe(out)}"
            )
        ref, masked = (out[:, 0:3], out[:, 3:6]) if self.reference_first else (out[:, 3:6], out[:, 0:3])
        np.multiply(inner.transpose(0, 3, 1, 2), np.float32(1.0 / 255.0), out=ref, dtype=np.float32)
        # The masked copy is the reference with one rectangle blacked out. Copying the visible strips and
        # zeroing the rectangle gives the same bits as multiplying by the 0/1 mask (x * 1 == x, and
        # x * 0 == +0 for the x >= 0 here) at a fraction of the cost.
        x, y, w, h = self.hidden_rect if self.hidden_rect is not None else (0, n // 2, n, n - n // 2)
        x0, y0, x1, y1 = min(x, n), min(y, n), min(x + w, n), min(y + h, n)
        masked[:, :, :y0] = ref[:, :, :y0]
        masked[:, :, y1:] = ref[:, :, y1:]
        masked[:, :, y0:y1, :x0] = ref[:, :, y0:y1, :x0]
        masked[:, :, y0:y1, x1:] = ref[:, :, y0:y1, x1:]
        masked[:, :, y0:y1, x0:x1] = 0.0
        return out

    def paste(self, crops: np.ndarray, predicted: np.ndarray) -> np.ndarray:
        """Put uint8 ``(B, n, n, 3)`` predictions into copies of ``crops`` ``(B, S, S, 3)``.

        Returns a new C-contiguous uint8 ``(B, S, S, 3)`` array: the crop with its inner region replaced.
        For a family without margin that is the prediction itself.
        """
        if self.inner_margin == 0:
            return np.ascontiguousarray(predicted, dtype=np.uint8)
        s, m = self.crop_size, self.inner_margin
        out = np.array(crops, dtype=np.uint8, copy=True, order="C")
        out[:, m : s - m, m : s - m] = predicted
        return out

    # -- audio --------------------------------------------------------------------------------------
    def audio_mode(self, name: str | None) -> AudioMode:
        """The audio mode called ``name`` (``None``: the default); :class:`UsageError` for another name."""
        wanted = name or self.default_audio_mode
        for mode in self.audio_modes:
            if mode.name == wanted:
                return mode
        known = ", ".join(m.name for m in self.audio_modes)
        raise UsageError(f"the {self.name} family takes audio features {known}; got {wanted!r}")


def pixels_from_prediction(predicted: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """float32 ``(B, 3, n, n)`` in ``[0, 1]`` -> uint8 ``(B, n, n, 3)``, rounded to nearest (ties to even),
    clipped to ``0..255``.

    ``predicted`` may have any strides (a channels_last network's output is NHWC in memory, which makes the
    final transpose a plain copy). ``out``: a uint8 ``(B, n, n, 3)`` array, of any strides, to write into and
    return instead of a new C-contiguous one: a backend passes the inner region of the crops it returns, so
    the pixels land in place. One float temporary of ``predicted``'s size remains. Raises
    :class:`UsageError` for an ``out`` of another shape or dtype.

    The public scripts truncate (``np.array(x * 255, dtype=np.uint8)``); rounding is closer to the network's
    output and keeps runtimes within one grey level of each other.
    """
    b, _, n, _ = predicted.shape
    if out is None:
        out = np.empty((b, n, n, 3), np.uint8)
    elif not isinstance(out, np.ndarray) or out.dtype != np.uint8 or out.shape != (b, n, n, 3):
        raise UsageError(
            f"pixels_from_prediction's out must be a uint8 ({b}, {n}, {n}, 3) array, got {_describe(out)}"
        )
    pixels = np.multiply(predicted, np.float32(255.0))  # keeps predicted's memory order
    np.rint(pixels, out=pixels)
    np.clip(pixels, 0.0, 255.0, out=pixels)
    np.copyto(out, pixels.transpose(0, 2, 3, 1), casting="unsafe")
    return out


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {value.shape}"
    return type(value).__name__
