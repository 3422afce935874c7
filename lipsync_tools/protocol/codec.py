"""The one interface both wire encodings implement, and how to pick one.

A codec turns a :data:`~lipsync_tools.protocol.messages.Message` into wire data and back. ``decode`` never
raises anything but :class:`~lipsync_tools.errors.ProtocolError`, whatever the input (see the fuzz tests).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Protocol

from lipsync_tools.errors import ProtocolError
from lipsync_tools.protocol.binary import BinaryCodec
from lipsync_tools.protocol.json_codec import JsonCodec
from lipsync_tools.protocol.messages import ErrorCode, ErrorReply, Message


class Codec(Protocol):
    """Encodes and decodes protocol messages in one wire format.

    ``name`` is how CLIs and configs name it; ``content_type`` is its HTTP ``Content-Type``.
    """

    @property
    def name(self) -> str:
        """Short name: ``"binary"`` or ``"json"``."""
        ...

    @property
    def content_type(self) -> str:
        """HTTP media type of this encoding."""
        ...

    def encode(self, msg: Message) -> bytes | str:
        """The wire form of ``msg`` (``bytes`` for binary, ``str`` for JSON)."""
        ...

    def encode_error(self, reply: ErrorReply, version: int | None) -> bytes | str:
        """``reply`` written with protocol version ``version`` when ``version`` is in ``ERROR_REPLY_VERSIONS``
        (its error_reply layout is this one's), else with ``PROTOCOL_VERSION``.

        Answer an :class:`~lipsync_tools.protocol.UnsupportedVersionError` with ``version=error.version`` so
        a peer of an older protocol version can still read (and show) why it was refused.
        """
        ...

    def decode(self, data: bytes | bytearray | memoryview | str) -> Message:
        """The message in ``data``; raises ProtocolError (and nothing else) when it is not a valid message."""
        ...


CODECS: Final[Mapping[str, Codec]] = {"binary": BinaryCodec(), "json": JsonCodec()}
"""Every codec by name. Codecs are stateless, so these instances can be shared."""


def get_codec(name: str) -> Codec:
    """The codec called ``name`` (``"binary"`` or ``"json"``); raises ProtocolError(bad_field) otherwise."""
    try:
        return CODECS[name]
    except KeyError:
        raise ProtocolError(
            ErrorCode.BAD_FIELD, f"unknown codec {name!r}; choose one of {', '.join(CODECS)}"
        ) from None


def codec_for_content_type(content_type: str | None) -> Codec:
    """The codec for an HTTP ``Content-Type`` header (parameters such as ``; charset=utf-8`` are ignored).

    Raises ProtocolError(bad_field) for a missing or unsupported type; a server answers it with HTTP 415.
    """
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    for codec in CODECS.values():
        if codec.content_type == media_type:
            return codec
    raise ProtocolError(
        ErrorCode.BAD_FIELD,
        f"unsupported Content-Type {content_type!r}; send "
        + " or ".join(codec.content_type for codec in CODECS.values()),
    )
