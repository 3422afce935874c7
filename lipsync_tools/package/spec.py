"""The sanders package format, version constants, dataset names and hard limits.

``docs/package-format.md`` is the normative spec; this module is its executable half. Change both together,
and bump :data:`FORMAT_VERSION` following the rule in the spec: a new optional dataset or manifest key is a
minor bump (old readers still read the file), anything an old reader would misread is a major bump.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FORMAT_NAME = "sanders"
FORMAT_VERSION = (1, 2)
"""(major, minor) written by this version of the tool. 1.1 added the manifest's ``model`` section, the
``crop.box_rule`` key and the optional ``audio/features`` and ``model/audio_encoder`` datasets; 1.0 files
read as Wav2Lip packages. 1.2 added the optional manifest section ``footage`` (the source range stored, the
segments found, detection and fill counts, crop jitter)."""

FILE_SUFFIX = ".sanders"

# Hard limits: a reader refuses files beyond them before allocating anything.
MAX_FRAMES = 1_000_000  # 11 hours at 25 fps
MAX_FRAME_SIDE = 8192  # pixels, either dimension of a full frame
MAX_CROP_SIZE = 1024
MAX_LANDMARKS = 1024
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_ENCODED_FRAME_BYTES = 64 * 1024 * 1024
MAX_AUDIO_SAMPLES = 16_000 * 60 * 60 * 12  # 12 hours at 16 kHz
MAX_CHECKPOINT_BYTES = 2 * 1024**3
MAX_FPS = 240.0  # frames per second of the stored video; real footage is 24..60
MAX_SEGMENTS = 1000  # entries of the manifest's footage.segments (the longest, when a video has more)
MAX_FEATURE_DIM = 65_536  # values per audio feature row (AVE: 512, HuBERT: 2 x 1024, WeNet: 16 x 512)

# A package whose share of filled frames (no detected face) is above this carries a warning in every summary.
FILLED_WARNING_SHARE = 0.10

MEL_BANDS = 80
MEL_WINDOW = 16  # mel columns per video frame window (200 ms), as Wav2Lip
AUDIO_SAMPLE_RATE = 16_000


def format_version_string(version: tuple[int, int] = FORMAT_VERSION) -> str:
    """``(1, 0)`` -> ``"1.0"``."""
    return f"{version[0]}.{version[1]}"


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset of the layout: its path, dtype, symbolic shape and storage rule.

    ``shape`` uses the symbols ``N`` (frames), ``S`` (crop size), ``K`` (landmarks per face), ``T`` (mel
    columns), ``A`` (audio samples), ``B`` (checkpoint bytes), ``F`` (audio feature rows), ``D`` (values
    per feature row), ``E`` (audio-encoder checkpoint bytes); integers are literal sizes.
    ``hot`` datasets MUST be stored contiguous and uncompressed so readers can memory-map them.
    """

    path: str
    dtype: str
    shape: tuple[str | int, ...]
    hot: bool
    required: bool = True
    description: str = ""


# The v1 layout, in the order the spec documents it. A golden test pins this table.
DATASETS: tuple[DatasetSpec, ...] = (
    DatasetSpec(
        "frames",
        "vlen-uint8",
        ("N",),
        hot=False,
        description="full frames, each an encoded image (codec in manifest frames.codec)",
    ),
    DatasetSpec("crops", "uint8", ("N", "S", "S", 3), hot=True, description="model-size face crops, BGR"),
    DatasetSpec(
        "rects",
        "int32",
        ("N", 4),
        hot=True,
        description="crop rectangles x0, y0, x1, y1 in frame pixels, half-open",
    ),
    DatasetSpec(
        "masks/input",
        "uint8",
        ("S", "S"),
        hot=True,
        description="model-input mask: 1 where the model sees the crop, 0 where it is hidden",
    ),
    DatasetSpec(
        "masks/blend",
        "uint8",
        ("N", "S", "S"),
        hot=True,
        description="feathered blend mask in crop coordinates, 0..255",
    ),
    DatasetSpec(
        "landmarks", "float32", ("N", "K", 2), hot=True, description="smoothed landmarks x, y in frame pixels"
    ),
    DatasetSpec(
        "boxes",
        "float32",
        ("N", 4),
        hot=True,
        description="tracked face boxes x0, y0, x1, y1 before smoothing",
    ),
    DatasetSpec(
        "filled",
        "uint8",
        ("N",),
        hot=True,
        description="1 where no face was detected and the frame was filled from neighbours",
    ),
    DatasetSpec("audio/pcm", "int16", ("A",), hot=True, description="the package's audio, 16 kHz mono PCM16"),
    DatasetSpec(
        "audio/mel", "float32", (MEL_BANDS, "T"), hot=True, description="Wav2Lip mel spectrogram of audio/pcm"
    ),
    DatasetSpec(
        "audio/mel_index",
        "int32",
        ("N",),
        hot=True,
        description="first mel column of each frame's MEL_WINDOW-column window",
    ),
    DatasetSpec(
        "audio/features",
        "float32",
        ("F", "D"),
        hot=True,
        required=False,
        description="per-frame audio features of the model family (AVE: frames + 2 rows of 512), since 1.1",
    ),
    DatasetSpec(
        "model/checkpoint",
        "uint8",
        ("B",),
        hot=False,
        required=False,
        description="optional embedded model checkpoint (torch.save bytes)",
    ),
    DatasetSpec(
        "model/audio_encoder",
        "uint8",
        ("E",),
        hot=False,
        required=False,
        description="optional embedded audio-encoder checkpoint (AVE; torch.save bytes), since 1.1",
    ),
)

DATASETS_BY_PATH = {spec.path: spec for spec in DATASETS}

FRAME_CODECS = ("jpeg", "png")
NUMPY_DTYPES = {
    "uint8": np.dtype(np.uint8),
    "int16": np.dtype(np.int16),
    "int32": np.dtype(np.int32),
    "float32": np.dtype(np.float32),
}
