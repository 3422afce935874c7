"""``remote.pull`` against a real HTTP server on 127.0.0.1: resume, restart, caps, errors, leftovers."""

from __future__ import annotations

import hashlib
import json
import random
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lipsync_tools.errors import DownloadError, OutputExistsError, OutputNotWritableError, UsageError
from lipsync_tools.remote import (
    cache_path,
    default_cache_dir,
    file_sha256,
    pull,
    url_file_name,
)
from tests.remote.http_server import LoopbackServer, Reply, loopback_server

BODY = random.Random(0).randbytes(300_000)
OTHER = random.Random(1).randbytes(300_000)
SHA = hashlib.sha256(BODY).hexdigest()
HALF = 120_000


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with loopback_server() as s:
        yield s


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def fail(reason: str, url: str, dest: Path, **kwargs: object) -> DownloadError:
    """Run a pull that must fail with ``reason``; its message is one line."""
    with pytest.raises(DownloadError) as info:
        pull(url, dest, **kwargs)  # type: ignore[arg-type]
    assert info.value.reason == reason, str(info.value)
    assert info.value.exit_code == 19 and "\n" not in str(info.value)
    return info.value


# --- success ----------------------------------------------------------------------------------------------
def test_into_folder_names_file_from_url_and_reports_progress(server, tmp_path):
    url = server.route("/files/avatar.sanders", Reply(BODY))
    seen: list[tuple[int, int | None]] = []
    result = pull(url + "?token=secret", tmp_path, progress=lambda done, total: seen.append((done, total)))
    assert listing(tmp_path) == ["avatar.sanders"]
    assert (tmp_path / "avatar.sanders").read_bytes() == BODY
    assert (result.path, result.bytes, result.sha256) == (tmp_path / "avatar.sanders", len(BODY), SHA)
    assert result.resumed_from == 0 and not result.skipped
    assert seen[0] == (0, len(BODY)) and seen[-1] == (len(BODY), len(BODY))
    summary = result.summary()
    assert summary["ok"] and "secret" not in json.dumps(summary) and summary["bytes"] == len(BODY)


def test_to_file_path_with_sha256_following_redirects(server, tmp_path):
    server.route("/r1", Reply(location="/r2"))
    server.route("/r2", Reply(status=307, location=server.url("/files/a.bin")))
    server.route("/files/a.bin", Reply(BODY))
    result = pull(server.url("/r1"), tmp_path / "mine.sanders", sha256=SHA.upper())
    assert listing(tmp_path) == ["mine.sanders"] and result.sha256 == SHA
    assert result.url.endswith("/files/a.bin")


def test_body_without_length_or_chunked(server, tmp_path):
    for i, length in enumerate(("none", "chunked")):
        url = server.route(f"/f{i}.bin", Reply(BODY, length=length, ranges=False))
        assert pull(url, tmp_path, sha256=SHA).bytes == len(BODY)
    assert listing(tmp_path) == ["f0.bin", "f1.bin"]


# --- resume -----------------------------------------------------------------------------------------------
def test_truncated_transfer_keeps_part_and_rerun_resumes_with_range(server, tmp_path):
    url = server.route("/a.sanders", Reply(BODY, send=HALF), Reply(BODY))
    error = fail("truncated", url, tmp_path, sha256=SHA)
    assert f"after {HALF} of {len(BODY)} bytes" in str(error) and "run again" in str(error)
    assert listing(tmp_path) == ["a.sanders.part", "a.sanders.part.json"]
    assert (tmp_path / "a.sanders.part").stat().st_size == HALF
    result = pull(url, tmp_path, sha256=SHA)
    assert result.resumed_from == HALF and result.bytes == len(BODY)
    assert server.log[-1].range == f"bytes={HALF}-"
    assert listing(tmp_path) == ["a.sanders"] and (tmp_path / "a.sanders").read_bytes() == BODY


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    url = server.route("/a.bin", Reply(BODY, send=HALF, ranges=False), Reply(BODY, ranges=False))
    fail("truncated", url, tmp_path, sha256=SHA)
    result = pull(url, tmp_path, sha256=SHA)
    assert server.log[-1].range == f"bytes={HALF}-"  # asked, got 200
    assert result.resumed_from == 0 and (tmp_path / "a.bin").read_bytes() == BODY
    assert listing(tmp_path) == ["a.bin"]


def test_without_sha256_resume_uses_if_range_and_a_changed_file_comes_whole(server, tmp_path):
    url = server.route("/a.bin", Reply(BODY, send=HALF, etag='"v1"'), Reply(OTHER, etag='"v2"'))
    fail("truncated", url, tmp_path)
    result = pull(url, tmp_path)
    assert (server.log[-1].range, server.log[-1].if_range) == (f"bytes={HALF}-", '"v1"')
    assert result.resumed_from == 0 and (tmp_path / "a.bin").read_bytes() == OTHER


def test_without_sha256_or_validator_a_part_is_not_trusted(server, tmp_path):
    url = server.route("/a.bin", Reply(BODY, send=HALF), Reply(BODY))
    fail("truncated", url, tmp_path)
    result = pull(url, tmp_path)
    assert server.log[-1].range is None and result.resumed_from == 0
    assert (tmp_path / "a.bin").read_bytes() == BODY


def test_resumed_part_of_another_file_is_fetched_whole_once(server, tmp_path):
    url = server.route("/a.bin", Reply(OTHER, send=HALF), Reply(BODY))
    fail("truncated", url, tmp_path, sha256=SHA)
    result = pull(url, tmp_path, sha256=SHA)  # resumes OTHER's prefix, hash fails, starts over
    assert [r.range for r in server.log] == [None, f"bytes={HALF}-", None]
    assert result.resumed_from == 0 and (tmp_path / "a.bin").read_bytes() == BODY


def test_range_not_satisfiable_restarts(server, tmp_path):
    url = server.route("/a.bin", Reply(BODY))
    (tmp_path / "a.bin.part").write_bytes(OTHER + b"longer than the file")
    (tmp_path / "a.bin.part.json").write_text(json.dumps({"url": url, "sha256": SHA, "validator": None}))
    result = pull(url, tmp_path, sha256=SHA)
    assert server.log[0].range == f"bytes={len(OTHER) + 20}-" and server.log[1].range is None
    assert result.resumed_from == 0 and listing(tmp_path) == ["a.bin"]


def test_server_error_while_resuming_keeps_the_part(server, tmp_path):
    url = server.route("/a.bin", Reply(BODY, send=HALF), Reply(status=503))
    fail("truncated", url, tmp_path, sha256=SHA)
    error = fail("server_error", url, tmp_path, sha256=SHA)
    assert "HTTP 503" in str(error)
    assert (tmp_path / "a.bin.part").stat().st_size == HALF


def test_no_resume_leaves_nothing(server, tmp_path):
    url = server.route("/a.bin", Reply(BODY, send=HALF))
    fail("truncated", url, tmp_path, resume=False)
    assert listing(tmp_path) == []


# --- failures: each one line, nothing (or only a resumable part) left ---------------------------------------
def test_wrong_checksum_leaves_nothing(server, tmp_path):
    url = server.route("/a.bin", Reply(OTHER))
    error = fail("checksum", url, tmp_path, sha256=SHA)
    assert SHA in str(error) and hashlib.sha256(OTHER).hexdigest() in str(error)
    assert listing(tmp_path) == []


def test_wrong_checksum_after_resume_leaves_nothing(server, tmp_path):
    url = server.route("/a.bin", Reply(OTHER, send=HALF), Reply(OTHER))
    fail("truncated", url, tmp_path, sha256=SHA)
    fail("checksum", url, tmp_path, sha256=SHA)
    assert listing(tmp_path) == []


@pytest.mark.parametrize(
    ("status", "reason", "words"),
    [
        (404, "http_status", "was not found (HTTP 404"),
        (403, "http_status", "refused access"),
        (500, "server_error", "server error (HTTP 500"),
        (204, "http_status", "HTTP 204"),
    ],
)
def test_http_errors(server, tmp_path, status, reason, words):
    url = server.route("/a.bin", Reply(status=status))
    assert words in str(fail(reason, url, tmp_path))
    assert listing(tmp_path) == []


def test_unknown_path_is_404(server, tmp_path):
    fail("http_status", server.url("/nothing.bin"), tmp_path)
    assert listing(tmp_path) == []


def test_redirect_loop_too_many_and_to_other_schemes(server, tmp_path):
    server.route("/a", Reply(location="/b"))
    server.route("/b", Reply(location="/a"))
    assert "loop" in str(fail("redirect_loop", server.url("/a"), tmp_path))
    for i in range(10):  # a chain that never ends
        server.route(f"/c{i}", Reply(location=f"/c{i + 1}"))
    assert "more than 3 times" in str(
        fail("too_many_redirects", server.url("/c0"), tmp_path, max_redirects=3)
    )
    server.route("/f", Reply(location="file:///etc/passwd"))
    assert "only http:// and https://" in str(fail("bad_redirect", server.url("/f"), tmp_path))
    assert listing(tmp_path) == []


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "ftp://127.0.0.1/a.bin", "http:///a.bin", "127.0.0.1/a.bin", "http://h/a b", ""],
)
def test_only_http_urls(tmp_path, url):
    with pytest.raises(UsageError) as info:
        pull(url, tmp_path)
    assert "\n" not in str(info.value) and info.value.exit_code == 2
    assert listing(tmp_path) == []


def test_too_large_refused_from_content_length_before_reading(server, tmp_path):
    url = server.route("/big.bin", Reply(b"x" * 1000, length=50 << 30))  # claims 50 GiB, sends 1000 bytes
    error = fail("too_large", url, tmp_path)
    assert "50.0 GiB" in str(error) and "8.0 GiB limit" in str(error)
    assert listing(tmp_path) == []


@pytest.mark.parametrize("length", ["none", "chunked"])
def test_too_large_refused_while_streaming_when_no_length(server, tmp_path, length):
    url = server.route("/big.bin", Reply(BODY, length=length, ranges=False))
    fail("too_large", url, tmp_path, max_bytes=100_000)
    assert listing(tmp_path) == []


def test_stalled_server_keeps_what_arrived(server, tmp_path):
    url = server.route("/a.bin", Reply(BODY, send=HALF, stall_s=1.0))
    error = fail("stalled", url, tmp_path, sha256=SHA, timeout_s=0.2)
    assert "no data for 0.2 s" in str(error)
    assert listing(tmp_path) == ["a.bin.part", "a.bin.part.json"]


def test_server_that_never_answers(server, tmp_path):
    url = server.route("/a.bin", Reply(BODY, delay_s=1.0))
    assert "sent no answer within 0.2 s" in str(fail("stalled", url, tmp_path, timeout_s=0.2))
    assert listing(tmp_path) == []


def test_too_slow_server(server, tmp_path):
    url = server.route("/a.bin", Reply(BODY[:10_000], trickle=(50, 0.02)))
    error = fail("too_slow", url, tmp_path, sha256=SHA, min_speed_bytes_s=1e6, speed_window_s=0.2)
    assert "too slow" in str(error) and "minimum" in str(error)
    assert listing(tmp_path) == ["a.bin.part", "a.bin.part.json"]


def test_connection_refused(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert "could not connect to 127.0.0.1" in str(
        fail("connect", f"http://127.0.0.1:{port}/a.bin", tmp_path)
    )
    assert listing(tmp_path) == []


def test_not_enough_disk_space(server, tmp_path, monkeypatch):
    import shutil
    from types import SimpleNamespace

    monkeypatch.setattr(shutil, "disk_usage", lambda _: SimpleNamespace(total=2000, used=1000, free=1000))
    url = server.route("/a.bin", Reply(BODY))
    with pytest.raises(OutputNotWritableError, match="not enough free space"):
        pull(url, tmp_path)
    assert listing(tmp_path) == []


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file locks")
def test_another_download_into_the_same_part_is_refused_and_left_alone(server, tmp_path):
    import fcntl

    url = server.route("/a.bin", Reply(BODY))
    with open(tmp_path / "a.bin.part", "wb") as fh:
        fh.write(b"theirs")
        fh.flush()
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        fail("busy", url, tmp_path)
    assert (tmp_path / "a.bin.part").read_bytes() == b"theirs" and server.log == []


# --- an existing destination ------------------------------------------------------------------------------
def test_existing_file_with_right_hash_is_skipped(server, tmp_path):
    url = server.route("/a.bin", Reply(BODY))
    (tmp_path / "a.bin").write_bytes(BODY)
    result = pull(url, tmp_path, sha256=SHA)
    assert result.skipped and result.bytes == len(BODY) and server.log == []


def test_existing_file_needs_force(server, tmp_path):
    url = server.route("/a.bin", Reply(BODY))
    (tmp_path / "a.bin").write_bytes(OTHER)
    for sha in (None, SHA):
        with pytest.raises(OutputExistsError, match="pass --force"):
            pull(url, tmp_path, sha256=sha)
    assert (tmp_path / "a.bin").read_bytes() == OTHER
    fail("checksum", server.route("/b.bin", Reply(OTHER)), tmp_path / "a.bin", sha256=SHA, force=True)
    assert (tmp_path / "a.bin").read_bytes() == OTHER  # a failed forced download replaces nothing
    assert pull(url, tmp_path, sha256=SHA, force=True).bytes == len(BODY)
    assert listing(tmp_path) == ["a.bin"] and (tmp_path / "a.bin").read_bytes() == BODY


def test_bad_destination_and_arguments(server, tmp_path):
    url = server.route("/a.bin", Reply(BODY))
    with pytest.raises(OutputNotWritableError, match="does not exist"):
        pull(url, tmp_path / "missing" / "a.bin")
    with pytest.raises(UsageError, match="64 hexadecimal"):
        pull(url, tmp_path, sha256="abc")
    with pytest.raises(UsageError, match="names no file"):
        pull(server.url("/"), tmp_path)
    assert listing(tmp_path) == []


# --- names, cache -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("http://h/a/b/avatar.sanders?x=1#f", "avatar.sanders"),
        ("http://h/..%2F..%2Fetc%2Fpasswd", "passwd"),
        ("http://h/x/..%5C..%5Cevil.bin", "evil.bin"),
        ("http://h/.bashrc", "bashrc"),
        ("http://h/-rf", "rf"),
        ("http://h/my%20file(1).pth", "my_file_1_.pth"),
        ("http://h/%00a.bin", "_a.bin"),
        ("http://h/", None),
        ("http://h", None),
        ("http://h/...", None),
        ("http://h/%2E%2E", None),
        ("http://h/a/..%2F", None),
    ],
)
def test_url_file_name(url, name):
    assert url_file_name(url) == name


def test_url_file_name_keeps_suffix_of_long_names():
    name = url_file_name("http://h/" + "a" * 500 + ".sanders")
    assert name is not None and len(name) == 200 and name.endswith("a.sanders")


def test_traversal_in_url_stays_in_the_folder(server, tmp_path):
    dest = tmp_path / "inside"
    dest.mkdir()
    url = server.route("/files/..%2F..%2Fevil.sanders", Reply(BODY))
    result = pull(url, dest)
    assert result.path == dest / "evil.sanders"
    assert listing(tmp_path) == ["inside"] and listing(dest) == ["evil.sanders"]


def test_url_without_a_name_is_saved_under_its_sha256(server, tmp_path):
    url = server.route("/", Reply(BODY))
    assert pull(url, tmp_path, sha256=SHA).path == tmp_path / SHA
    assert file_sha256(tmp_path / SHA) == SHA


def test_cache_path_is_content_addressed(tmp_path):
    assert cache_path("https://h/x/bob.sanders?v=2", SHA.upper(), tmp_path) == tmp_path / f"{SHA}.sanders"
    assert cache_path("https://h/download", SHA, tmp_path) == tmp_path / SHA
    assert cache_path("https://h/a.weird~suffix", SHA, tmp_path) == tmp_path / SHA
    with pytest.raises(UsageError):
        cache_path("https://h/a", "nope", tmp_path)


def test_default_cache_dir():
    assert default_cache_dir({"LIPSYNC_CACHE_DIR": "/c/lip", "XDG_CACHE_HOME": "/x"}) == Path("/c/lip")
    assert default_cache_dir({"XDG_CACHE_HOME": "/x", "HOME": "/home/u"}) == Path("/x/lipsync-tools")
    assert default_cache_dir({"XDG_CACHE_HOME": "rel", "HOME": "/home/u"}) == Path(
        "/home/u/.cache/lipsync-tools"
    )
    assert default_cache_dir({"HOME": "/home/u"}) == Path("/home/u/.cache/lipsync-tools")


def test_error_exit_codes_are_distinct():
    from lipsync_tools import errors

    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.LipsyncError)]
    codes = [c.exit_code for c in classes if c is not errors.LipsyncError]
    assert len(codes) == len(set(codes)), sorted(codes)
    assert (errors.DownloadError.exit_code, errors.CatalogError.exit_code) == (19, 20)
