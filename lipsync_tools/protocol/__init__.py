"""The lipsync wire protocol: message types, limits, and the binary and JSON codecs (spec: docs/protocol.md).

Pure Python (stdlib + NumPy); shared by the server and the client, imports nothing above ``errors``.

>>> from lipsync_tools.protocol import CODECS, FrameRequest, AudioFormat
>>> codec = CODECS["binary"]
>>> msg = FrameRequest(request_id=1, package_id="alice", frame_index=0, audio=AudioFormat.REPLAY)
>>> codec.decode(codec.encode(msg)) == msg
True
"""

from lipsync_tools.protocol.binary import BinaryCodec
from lipsync_tools.protocol.codec import CODECS, Codec, codec_for_content_type, get_codec
from lipsync_tools.protocol.json_codec import JsonCodec
from lipsync_tools.protocol.limits import (
    BINARY_CONTENT_TYPE,
    BINARY_HEADER_SIZE,
    DEFAULT_JPEG_QUALITY,
    ERROR_REPLY_VERSIONS,
    JSON_CONTENT_TYPE,
    MAGIC,
    MAX_AUDIO_CHUNK_BYTES,
    MAX_AUDIO_OFFSET,
    MAX_BINARY_MESSAGE_BYTES,
    MAX_ERROR_MESSAGE_BYTES,
    MAX_JSON_MESSAGE_BYTES,
    MAX_PACKAGE_ID_LEN,
    MAX_REPLY_PAYLOAD,
    MAX_REQUEST_PAYLOAD,
    MAX_TIMINGS,
    MEL_BINS,
    MEL_STEPS,
    MEL_WINDOW_BYTES,
    PCM_WINDOW_BYTES,
    PCM_WINDOW_SAMPLES,
    PROTOCOL_VERSION,
    SAMPLE_RATE,
)
from lipsync_tools.protocol.messages import (
    CLOSING_ERROR_CODES,
    FLAG_SILENCE,
    FLAG_TIMELINE,
    HTTP_STATUS,
    AudioChunk,
    AudioFormat,
    ErrorCode,
    ErrorReply,
    FrameReply,
    FrameRequest,
    ImageFormat,
    Message,
    MessageType,
    Pacing,
    SessionEnd,
    SessionStart,
    SessionStarted,
    UnsupportedVersionError,
    check_package_id,
)

__all__ = [
    "BINARY_CONTENT_TYPE",
    "BINARY_HEADER_SIZE",
    "CLOSING_ERROR_CODES",
    "CODECS",
    "DEFAULT_JPEG_QUALITY",
    "ERROR_REPLY_VERSIONS",
    "FLAG_SILENCE",
    "FLAG_TIMELINE",
    "HTTP_STATUS",
    "JSON_CONTENT_TYPE",
    "MAGIC",
    "MAX_AUDIO_CHUNK_BYTES",
    "MAX_AUDIO_OFFSET",
    "MAX_BINARY_MESSAGE_BYTES",
    "MAX_ERROR_MESSAGE_BYTES",
    "MAX_JSON_MESSAGE_BYTES",
    "MAX_PACKAGE_ID_LEN",
    "MAX_REPLY_PAYLOAD",
    "MAX_REQUEST_PAYLOAD",
    "MAX_TIMINGS",
    "MEL_BINS",
    "MEL_STEPS",
    "MEL_WINDOW_BYTES",
    "PCM_WINDOW_BYTES",
    "PCM_WINDOW_SAMPLES",
    "PROTOCOL_VERSION",
    "SAMPLE_RATE",
    "AudioChunk",
    "AudioFormat",
    "BinaryCodec",
    "Codec",
    "ErrorCode",
    "ErrorReply",
    "FrameReply",
    "FrameRequest",
    "ImageFormat",
    "JsonCodec",
    "Message",
    "MessageType",
    "Pacing",
    "SessionEnd",
    "SessionStart",
    "SessionStarted",
    "UnsupportedVersionError",
    "check_package_id",
    "codec_for_content_type",
    "get_codec",
]
