"""Per-frame audio features computed by a network: SyncTalk_2D's AVE rows.

SyncTalk_2D's ``aud_ave.npy`` holds one 512-d row per video frame, the AVE encoder's output for that frame's
16-column Wav2Lip mel window, with the first and last rows repeated once: ``[frames + 2, 512]``. Frame ``i``
of the UNet then takes rows ``[i-8, i+8)`` of that *padded* array (zeros beyond its ends). We store and index
the same padded array, so a package built here and one imported from SyncTalk_2D agree row for row.

Where the encoder comes from (:class:`AudioEncoderChoice`): a checkpoint file (``--audio-encoder PATH``,
``audio_visual_encoder.pth``), the bytes embedded in a package, or deterministic random weights
(``--audio-encoder random``: NOT lip-sync, for tests and demos).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lipsync_tools.errors import InputNotFoundError, UsageError

AVE_DIM = 512
AVE_BATCH = 64  # mel windows per encoder call when a whole package is encoded


@dataclass(frozen=True, kw_only=True)
class AudioEncoderChoice:
    """Which AVE encoder to use: ``path`` (a checkpoint file), ``data`` (checkpoint bytes, e.g. embedded in a
    package) or ``random_seed`` (deterministic random weights). Exactly one is set."""

    path: Path | None = None
    data: bytes | None = None
    random_seed: int | None = None
    label: str = ""

    @classmethod
    def parse(cls, value: str | Path | None, seed: int = 0) -> AudioEncoderChoice | None:
        """``None`` -> None; ``"random"`` -> random weights from ``seed``; anything else is a file path.

        Raises :class:`InputNotFoundError` for a path that is not a file.
        """
        if value is None:
            return None
        if str(value) == "random":
            return cls(random_seed=seed, label=f"random AVE encoder (seed {seed})")
        path = Path(value)
        if not path.is_file():
            raise InputNotFoundError(
                f"audio encoder {path} does not exist (or is not a file); pass --audio-encoder with the "
                "path of SyncTalk_2D's audio_visual_encoder.pth, or --audio-encoder random for a demo"
            )
        return cls(path=path, label=str(path))

    @property
    def is_random(self) -> bool:
        return self.random_seed is not None

    def checkpoint_bytes(self) -> bytes | None:
        """The checkpoint's bytes to embed in a package (``None`` for random weights)."""
        if self.data is not None:
            return self.data
        if self.path is not None:
            return self.path.read_bytes()
        return None

    def load(self) -> Any:
        """The :class:`~lipsync_tools.models.ave.AveEncoder` in eval mode (strictly checked)."""
        from lipsync_tools.models.ave import load_ave_encoder, random_ave_encoder

        if self.random_seed is not None:
            return random_ave_encoder(self.random_seed)
        if self.data is not None:
            return load_ave_encoder(self.data, name=self.label or "the embedded audio encoder")
        if self.path is not None:
            return load_ave_encoder(self.path)
        raise UsageError("internal: an AudioEncoderChoice with nothing set")


def ave_rows(encoder: Any, mel_windows: np.ndarray) -> np.ndarray:
    """AVE rows for float32 mel windows ``(B, 80, 16)`` -> float32 ``(B, 512)`` (batched, no grad)."""
    import torch

    windows = np.ascontiguousarray(mel_windows, dtype=np.float32)
    out = np.empty((windows.shape[0], AVE_DIM), np.float32)
    with torch.inference_mode():
        for first in range(0, windows.shape[0], AVE_BATCH):
            chunk = torch.from_numpy(windows[first : first + AVE_BATCH, None])
            out[first : first + chunk.shape[0]] = encoder(chunk).reshape(chunk.shape[0], AVE_DIM).numpy()
    return out


def padded_ave_array(rows: np.ndarray) -> np.ndarray:
    """``(N, 512)`` per-frame rows -> ``(N + 2, 512)`` with the first and last rows repeated once."""
    return np.ascontiguousarray(np.concatenate([rows[:1], rows, rows[-1:]]), dtype=np.float32)


def package_ave_features(encoder: Any, mel: np.ndarray, mel_index: np.ndarray) -> np.ndarray:
    """The padded ``(N + 2, 512)`` AVE array of a package, from its mel ``(80, T)`` and window starts."""
    starts = np.asarray(mel_index, dtype=np.int64)
    windows = np.stack([mel[:, s : s + 16] for s in starts]) if starts.size else np.zeros((0, 80, 16))
    return padded_ave_array(ave_rows(encoder, windows))


def padded_row_frame(row: int, n_frames: int | None) -> int | None:
    """Which video frame's AVE row sits at ``row`` of the padded array of a stream of ``n_frames`` frames.

    Row 0 and row 1 are frame 0, row ``r`` is frame ``r - 1``, row ``n + 1`` repeats frame ``n - 1``; rows
    outside ``[0, n + 1]`` are not in the array (``None``: the network gets zeros there). ``n_frames`` is
    ``None`` while a live stream's length is unknown (every row ``>= 0`` is then in the array).
    """
    if row < 0:
        return None
    if n_frames is None:
        return max(row - 1, 0)
    if row > n_frames + 1 or n_frames == 0:
        return None
    return min(max(row - 1, 0), n_frames - 1)
