"""HTTP endpoints end to end over a real socket: one-shot frames, packages, health, readiness, metrics."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from lipsync_tools.client import LipsyncClient
from lipsync_tools.errors import ProtocolError
from lipsync_tools.protocol import AudioFormat, FrameRequest, ImageFormat
from tests.server.servers import PACKAGE_ID, noise_window

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def decode_jpeg(payload: bytes | memoryview) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "reply payload is not a decodable image"
    return image


@pytest.mark.parametrize("protocol", ["binary", "json"])
def test_one_shot_pcm_frame_decodes_to_the_package_size(url: str, protocol: str) -> None:
    with LipsyncClient(url, protocol=protocol) as client:
        request = FrameRequest.from_pcm(noise_window(), request_id=41, package_id=PACKAGE_ID, frame_index=7)
        reply = client.frame(request)
    assert (reply.request_id, reply.frame_index, reply.silence) == (41, 7, False)
    assert decode_jpeg(reply.payload).shape == (240, 320, 3)
    assert (reply.width, reply.height) == (320, 240)
    assert {"inference", "composite", "encode", "total"} <= set(reply.timings)


@pytest.mark.parametrize("protocol", ["binary", "json"])
def test_one_shot_formats_replay_and_silence(url: str, protocol: str) -> None:
    with LipsyncClient(url, protocol=protocol) as client:
        raw = client.frame(FrameRequest(request_id=1, package_id=PACKAGE_ID, frame_index=3,
                                        audio=AudioFormat.REPLAY, image=ImageFormat.RAW_BGR))
        crop = client.frame(FrameRequest(request_id=2, package_id=PACKAGE_ID, frame_index=3,
                                         audio=AudioFormat.REPLAY, image=ImageFormat.CROP_ONLY))
        png = client.frame(FrameRequest.from_pcm(np.zeros(3200, np.int16), request_id=3,
                                                 package_id=PACKAGE_ID, frame_index=0, image=ImageFormat.PNG))
    assert raw.image_array().shape == (240, 320, 3)
    assert crop.rect is not None and crop.image_array().shape[2] == 3
    x0, y0, x1, y1 = crop.rect
    assert 0 <= x0 < x1 <= 320 and 0 <= y0 < y1 <= 240
    assert decode_jpeg(png.payload).shape == (240, 320, 3)


def test_packages_list_load_and_unload_at_run_time(url: str, avatar_package: Path, tmp_path: Path) -> None:
    copy = tmp_path / "second.sanders"
    shutil.copyfile(avatar_package, copy)
    copy.chmod(0o444)  # the server opens packages read-only: a read-only file must load
    with LipsyncClient(url) as client:
        assert [p["id"] for p in client.packages()] == [PACKAGE_ID]
        info = client.load_package("second", str(copy))
        assert (info["id"], info["n_frames"], info["width"], info["height"]) == ("second", 50, 320, 240)
        assert {p["id"] for p in client.packages()} == {PACKAGE_ID, "second"}
        reply = client.frame(FrameRequest.from_pcm(np.zeros(3200, np.int16), request_id=1,
                                                   package_id="second", frame_index=49))
        # one-shot requests always run the model (only sessions skip silence): a render is a render
        assert not reply.silence and reply.frame_index == 49
        with pytest.raises(ProtocolError) as dup:
            client.load_package("second", str(copy))
        assert dup.value.code == "conflict"
        client.unload_package("second")
        assert [p["id"] for p in client.packages()] == [PACKAGE_ID]
        with pytest.raises(ProtocolError) as gone:
            client.frame(FrameRequest(request_id=9, package_id="second", frame_index=0,
                                      audio=AudioFormat.REPLAY))
        assert gone.value.code == "unknown_package"
        with pytest.raises(ProtocolError) as again:
            client.unload_package("second")
        assert again.value.code == "unknown_package"


@pytest.mark.parametrize(
    ("body", "code", "status"),
    [
        ({"id": "../etc", "path": "x"}, "bad_field", 400),
        ({"id": ".hidden", "path": "x"}, "bad_field", 400),
        ({"id": "ok", "path": "/definitely/not/here.sanders"}, "forbidden", 403),  # outside: existence unsaid
        ({"id": "ok", "path": "not/here.sanders"}, "not_found", 404),  # relative to --package-dir
        ({"id": "ok"}, "not_found", 404),  # a catalog id, and this server has no catalog
        ({"id": "ok", "url": "http://127.0.0.1:9/x.sanders", "sha256": "0" * 64}, "forbidden", 403),
        ({"id": "ok", "path": "x", "extra": 1}, "bad_field", 400),
        ({"id": "ok", "path": 5}, "bad_field", 400),
    ],
)
def test_package_api_refuses_bad_ids_and_paths(url: str, body: dict[str, object], code: str,
                                               status: int) -> None:
    r = httpx.post(f"{url}/v1/packages", json=body)
    assert (r.status_code, r.json()["code"]) == (status, code)


def test_package_api_refuses_a_file_that_is_not_a_package(url: str, tmp_path: Path) -> None:
    junk = tmp_path / "junk.sanders"
    junk.write_bytes(b"not hdf5 at all")
    r = httpx.post(f"{url}/v1/packages", json={"id": "junk", "path": str(junk)})
    assert (r.status_code, r.json()["code"]) == (422, "bad_package")
    r = httpx.post(f"{url}/v1/packages", content=b"{not json", headers={"Content-Type": "application/json"})
    assert (r.status_code, r.json()["code"]) == (400, "invalid_json")
    r = httpx.delete(f"{url}/v1/packages/..%2Fx")
    assert r.status_code in (400, 404)


def test_health_ready_and_metrics(url: str) -> None:
    with LipsyncClient(url) as client:
        assert client.health()
        assert client.ready()
        client.frame(FrameRequest.from_pcm(np.zeros(3200, np.int16), request_id=1, package_id=PACKAGE_ID,
                                           frame_index=0))
        text = client.metrics()
    r = httpx.get(f"{url}/readyz")
    body = r.json()
    assert body.pop("sessions") == {"sessions": 0, "max_sessions": 32, "min_session_fps": 20.0, "load": 0.0,
                                    "refused": 0}
    assert body == {"ready": True, "packages": [PACKAGE_ID], "model": "random"}
    for expected in (
        "# TYPE lipsync_frames_total counter",
        'lipsync_frames_total{silence="false",source="http"}',
        "# TYPE lipsync_stage_seconds histogram",
        'lipsync_stage_seconds_bucket{le="+Inf",stage="inference"}',
        "# TYPE lipsync_batch_size histogram",
        "lipsync_queue_depth ",
        "lipsync_active_sessions ",
        "lipsync_ready 1",
        "lipsync_packages_loaded ",
    ):
        assert expected in text, expected
    assert httpx.get(f"{url}/metrics").headers["content-type"].startswith("text/plain; version=0.0.4")
