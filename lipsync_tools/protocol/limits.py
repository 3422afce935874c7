"""Version, sizes and hard limits of the wire protocol (``docs/protocol.md`` is the spec).

Every length a peer sends is checked against one of these constants *before* anything is allocated for it,
so a header that claims a 4 GiB payload fails in microseconds instead of exhausting memory.
"""

from __future__ import annotations

import re
from typing import Final

from lipsync_tools.ids import MAX_PACKAGE_ID_LEN as MAX_PACKAGE_ID_LEN
from lipsync_tools.ids import PACKAGE_ID_PATTERN as PACKAGE_ID_PATTERN

PROTOCOL_VERSION: Final = 2
"""Version written into every message (binary header byte 4, JSON ``"v"``). Bumped on any layout change."""

ERROR_REPLY_VERSIONS: Final = frozenset({1, 2})
"""Versions whose error_reply has the same layout as this one's (binary: the 32-byte header, the code, the
message; JSON: the same five keys), so ``encode_error`` can write an error a peer of that version reads.

Version 2 changed frame_reply, session_started and session_end, not the header or error_reply. A version
that changes either MUST drop the older versions from this set.
"""

MAGIC: Final = b"LSYN"
"""First four bytes of every binary message."""

BINARY_CONTENT_TYPE: Final = "application/x-lipsync"
JSON_CONTENT_TYPE: Final = "application/json"

# --- audio ------------------------------------------------------------------------------------------------
SAMPLE_RATE: Final = 16_000
"""Audio sample rate in Hz: PCM payloads are 16-bit signed little-endian mono at this rate."""

PCM_WINDOW_SAMPLES: Final = 3200
"""Samples of PCM audio one FrameRequest carries: 200 ms at 16 kHz, the span of one Wav2Lip mel window.

The engine owns the exact number; every other size below is derived from it, so change it only here.
"""

PCM_WINDOW_BYTES: Final = PCM_WINDOW_SAMPLES * 2

MEL_BINS: Final = 80
MEL_STEPS: Final = 16
MEL_WINDOW_BYTES: Final = MEL_BINS * MEL_STEPS * 4
"""A precomputed mel window: float32 little-endian, C order, shape ``(MEL_BINS, MEL_STEPS)``."""

MAX_AUDIO_CHUNK_BYTES: Final = 1 << 20
"""Largest PCM payload of one session AudioChunk (1 MiB, about 32 s): clients stream, they do not upload."""

MAX_AUDIO_OFFSET: Final = 2**53 - 1
"""Largest FrameReply ``audio_offset`` (a sample index at 16 kHz): the largest integer a JSON/JavaScript
number holds exactly, so a browser client reads every offset it can be sent (about 17,800 years of audio).
"""

# --- identifiers ------------------------------------------------------------------------------------------
# The package-id rule (MAX_PACKAGE_ID_LEN, PACKAGE_ID_PATTERN: 1-64 of A-Z a-z 0-9 . _ -, starting with a
# letter or digit) is every layer's, imported above from lipsync_tools.ids; the wire format carries ids and
# checks them with it (messages.check_package_id).

MAX_ERROR_CODE_LEN: Final = 32
ERROR_CODE_PATTERN: Final = re.compile(r"[a-z][a-z0-9_]{0,31}")
MAX_ERROR_MESSAGE_BYTES: Final = 4096
"""Longest ErrorReply message, in UTF-8 bytes."""

MAX_TIMINGS: Final = 32
"""Most per-stage timing entries one FrameReply carries."""
MAX_STAGE_NAME_LEN: Final = 32
STAGE_NAME_PATTERN: Final = re.compile(r"[a-z0-9_]{1,32}")

MAX_U16: Final = 0xFFFF
MAX_U32: Final = 0xFFFF_FFFF
MIN_JPEG_QUALITY: Final = 1
MAX_JPEG_QUALITY: Final = 100
DEFAULT_JPEG_QUALITY: Final = 85
MAX_FPS: Final = 1000.0

# --- payloads and whole messages --------------------------------------------------------------------------
MAX_REQUEST_PAYLOAD: Final = 16 << 20
"""Largest payload a client may send in any message (16 MiB); real requests are far smaller."""

MAX_REPLY_PAYLOAD: Final = 64 << 20
"""Largest payload a server may send (64 MiB: a raw 4K BGR frame is 24.9 MB)."""

BINARY_HEADER_SIZE: Final = 32
MAX_FIELDS_LEN: Final = 2048
"""Largest type-specific field block of a binary message (a FrameReply with 32 timings needs <= 1209)."""

MAX_BINARY_MESSAGE_BYTES: Final = BINARY_HEADER_SIZE + MAX_PACKAGE_ID_LEN + MAX_FIELDS_LEN + MAX_REPLY_PAYLOAD
"""Upper bound of any binary message: use it as the WebSocket ``max_size`` / HTTP body limit."""

MAX_JSON_MESSAGE_BYTES: Final = 4 * ((MAX_REPLY_PAYLOAD + 2) // 3) + (64 << 10)
"""Upper bound of any JSON message: base64 of the largest payload plus 64 KiB for the other fields."""

# --- what a client can send -------------------------------------------------------------------------------
MAX_CLIENT_PAYLOAD: Final = max(MAX_AUDIO_CHUNK_BYTES, PCM_WINDOW_BYTES, MEL_WINDOW_BYTES)
"""Largest payload of any *valid* client message: an audio_chunk's 1 MiB (a frame_request's audio is exactly
6400 or 5120 bytes, or none; session_start and session_end carry none)."""

MAX_CLIENT_BINARY_MESSAGE_BYTES: Final = max(
    BINARY_HEADER_SIZE + MAX_AUDIO_CHUNK_BYTES,  # audio_chunk: no package id, no field block
    BINARY_HEADER_SIZE + MAX_PACKAGE_ID_LEN + 1 + max(PCM_WINDOW_BYTES, MEL_WINDOW_BYTES),  # frame_request
)
"""Largest valid binary message a client can send (1 MiB + 32 B: a full audio_chunk). A server MAY refuse
anything longer before decoding it (the reference server does: its WebSocket and HTTP body cap)."""

MAX_CLIENT_JSON_MESSAGE_BYTES: Final = 4 * ((MAX_CLIENT_PAYLOAD + 2) // 3) + (64 << 10)
"""Largest valid JSON message a client can send, in UTF-8 bytes: base64 of :data:`MAX_CLIENT_PAYLOAD`
(1,398,104 B) plus the 64 KiB for the other keys, escapes and whitespace that :data:`MAX_JSON_MESSAGE_BYTES`
allows too (1,463,640 B, about 1.4 MiB)."""
