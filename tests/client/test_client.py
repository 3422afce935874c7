"""The sync and async clients against a real server, and their local input checks."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from lipsync_tools.client import AsyncLipsyncClient, LipsyncClient
from lipsync_tools.client._common import audio_chunks, decode_frame_response, pcm_bytes, ws_url
from lipsync_tools.errors import ProtocolError
from lipsync_tools.protocol import AudioFormat, FrameReply, FrameRequest, ImageFormat, Pacing
from lipsync_tools.server.sessions import pingpong_index
from tests.server.servers import PACKAGE_ID, noise_window


def test_urls_audio_and_answers_are_checked_locally() -> None:
    assert ws_url("http://127.0.0.1:8000") == "ws://127.0.0.1:8000/v1/stream"
    assert ws_url("https://example.org") == "wss://example.org/v1/stream"
    with pytest.raises(ProtocolError, match="http://"):
        LipsyncClient("127.0.0.1:8000")
    with pytest.raises(ProtocolError, match="unknown codec"):
        LipsyncClient("http://127.0.0.1:1", protocol="xml")
    with pytest.raises(ProtocolError, match="int16") as bad:
        pcm_bytes(np.zeros(10, np.float32))
    assert bad.value.code == "bad_audio"
    chunks = list(audio_chunks(bytes(16000 * 2 + 2), chunk_seconds=0.5))
    assert [len(c) for c in chunks] == [16000, 16000, 2]
    with pytest.raises(ProtocolError) as junk:
        decode_frame_response(502, "text/html", b"<html>bad gateway</html>")
    assert junk.value.code == "internal" and "502" in str(junk.value)


def test_a_client_of_nobody_is_not_healthy() -> None:
    with LipsyncClient("http://127.0.0.1:9", timeout=2) as client:
        assert not client.health()
        assert not client.ready(wait_seconds=0.1)


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("protocol", ["binary", "json"])
def test_async_client_covers_the_api(client_server_url: str, protocol: str) -> None:
    async def scenario() -> None:
        async with AsyncLipsyncClient(client_server_url, protocol=protocol) as client:
            assert await client.health() and await client.ready(wait_seconds=10)
            assert [p["id"] for p in await client.packages()] == [PACKAGE_ID]
            reply = await client.frame(FrameRequest.from_pcm(noise_window(), request_id=5,
                                                             package_id=PACKAGE_ID, frame_index=9))
            assert (reply.request_id, reply.frame_index, reply.width, reply.height) == (5, 9, 320, 240)
            with pytest.raises(ProtocolError) as missing:
                await client.frame(FrameRequest(request_id=6, package_id="nobody", frame_index=0,
                                                audio=AudioFormat.REPLAY))
            assert missing.value.code == "unknown_package"
            stream = await client.stream()
            async with stream:
                # pipelined: three requests out, then three replies (any order), each with its id
                for i in range(3):
                    await stream.send(FrameRequest(request_id=10 + i, package_id=PACKAGE_ID, frame_index=i,
                                                   audio=AudioFormat.REPLAY, image=ImageFormat.RAW_BGR))
                replies = [await stream.recv_frame(30) for _ in range(3)]
            assert sorted(r.request_id for r in replies) == [10, 11, 12]
            assert all(r.image_array().shape == (240, 320, 3) for r in replies)
            with pytest.raises(ProtocolError) as refused:
                await client.session("nobody")
            assert refused.value.code == "unknown_package"
            session = await client.session(PACKAGE_ID, start_frame=48, pacing=Pacing.UNPACED)
            async with session:
                assert session.started is not None and session.started.frame_count == 50
                audio = np.concatenate([noise_window(1), np.zeros(6400, np.int16)])  # 0.6 s: 15 frames
                frames: list[FrameReply] = [f async for f in session.play(audio)]
            assert [f.frame_index for f in frames] == [pingpong_index(48 + k, 50) for k in range(15)]
            assert frames[0].silence is False and frames[-1].silence is True
            assert "lipsync_sessions_total" in await client.metrics()

    asyncio.run(scenario())


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sync_session_api_by_hand(client_server_url: str) -> None:
    with LipsyncClient(client_server_url) as client, client.session(
            PACKAGE_ID, pacing=Pacing.UNPACED, image=ImageFormat.CROP_ONLY) as session:
        session.send_audio(np.zeros(3200, np.int16))
        session.send_audio(noise_window().tobytes())
        session.end()
        frames = list(session)
    assert len(frames) == 10  # 6400 samples = 0.4 s at 25 fps
    assert frames[0].silence and frames[0].width == 0 and frames[0].rect is None  # "show your own frame"
    assert not frames[-1].silence and frames[-1].rect is not None
