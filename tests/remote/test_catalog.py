"""``remote.catalog``: JSON and TOML catalogs, relative paths, and one exact line for each bad catalog."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lipsync_tools.errors import CatalogError, InputNotFoundError
from lipsync_tools.protocol import limits
from lipsync_tools.remote import (
    MAX_CATALOG_ENTRIES,
    PACKAGE_ID_PATTERN,
    Catalog,
    CatalogEntry,
    CatalogSource,
    load_catalog,
    parse_catalog,
)

SHA_A = "a" * 64
SHA_B = "0123456789abcdef" * 4

JSON_CATALOG = {
    "version": 1,
    "packages": {
        "alice": {"path": "avatars/alice.sanders"},
        "bob.v2": {
            "url": "https://example.com/avatars/bob.sanders",
            "sha256": SHA_A.upper(),
            "checkpoint": {"url": "https://example.com/models/bob_unet.pth", "sha256": SHA_B},
            "frames": "none",
        },
        "carol_1": {"path": "avatars/alice.sanders", "checkpoint": {"path": "models/wav2lip_gan.pth"}},
    },
}

TOML_CATALOG = f"""
version = 1

[packages.alice]
path = "avatars/alice.sanders"

[packages."bob.v2"]
url = "https://example.com/avatars/bob.sanders"
sha256 = "{SHA_A.upper()}"
frames = "none"
checkpoint = {{ url = "https://example.com/models/bob_unet.pth", sha256 = "{SHA_B}" }}

[packages.carol_1]
path = "avatars/alice.sanders"
checkpoint.path = "models/wav2lip_gan.pth"
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A catalog folder with the local files the catalogs above name."""
    (tmp_path / "avatars").mkdir()
    (tmp_path / "avatars" / "alice.sanders").write_bytes(b"package")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "wav2lip_gan.pth").write_bytes(b"weights")
    return tmp_path


def test_json_and_toml_give_the_same_catalog(folder):
    (folder / "catalog.json").write_text(json.dumps(JSON_CATALOG))
    (folder / "catalog.toml").write_text(TOML_CATALOG)
    from_json, from_toml = load_catalog(folder / "catalog.json"), load_catalog(folder / "catalog.toml")
    assert from_json == from_toml and from_json.source == folder / "catalog.json"
    assert from_json.ids == ("alice", "bob.v2", "carol_1") and len(from_json) == 3
    alice, bob, carol = from_json
    assert alice == CatalogEntry(id="alice", package=CatalogSource(path=folder / "avatars" / "alice.sanders"))
    assert bob.package == CatalogSource(url="https://example.com/avatars/bob.sanders", sha256=SHA_A)
    assert bob.checkpoint == CatalogSource(url="https://example.com/models/bob_unet.pth", sha256=SHA_B)
    assert bob.frames == "none" and alice.frames == "all" and alice.checkpoint is None
    assert carol.checkpoint == CatalogSource(path=folder / "models" / "wav2lip_gan.pth")
    assert from_json["bob.v2"] is bob and from_json.get("nobody") is None and "alice" in from_json


def test_relative_paths_resolve_against_the_catalogs_folder(folder, monkeypatch):
    (folder / "conf").mkdir()
    catalog = folder / "conf" / "servers.json"
    catalog.write_text(json.dumps({"packages": {"a": {"path": "../avatars/alice.sanders"}}}))
    monkeypatch.chdir(folder / "avatars")  # the working folder plays no part
    loaded = load_catalog(Path("../conf/servers.json"))
    path = loaded["a"].package.path
    assert path is not None and path.is_absolute()
    assert path.resolve() == (folder / "avatars" / "alice.sanders").resolve()


def test_absolute_paths_are_kept(folder, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("other") / "c.json"
    elsewhere.write_text(json.dumps({"packages": {"a": {"path": str(folder / "avatars" / "alice.sanders")}}}))
    assert load_catalog(elsewhere)["a"].package.path == folder / "avatars" / "alice.sanders"


def test_local_path_of_a_url_is_its_cache_path(folder, tmp_path):
    (folder / "c.json").write_text(json.dumps(JSON_CATALOG))
    catalog = load_catalog(folder / "c.json")
    cache = tmp_path / "cache"
    assert catalog["bob.v2"].package.local_path(cache) == cache / f"{SHA_A}.sanders"
    assert catalog["alice"].package.local_path(cache) == folder / "avatars" / "alice.sanders"
    assert catalog["bob.v2"].package.is_remote and not catalog["alice"].package.is_remote


def test_empty_catalog_is_allowed(tmp_path):
    (tmp_path / "c.json").write_text('{"packages": {}}')
    assert len(load_catalog(tmp_path / "c.json")) == 0


def test_package_id_rule_is_the_protocols():
    assert PACKAGE_ID_PATTERN.pattern == limits.PACKAGE_ID_PATTERN.pattern


URL = {"url": "https://example.com/a.sanders", "sha256": SHA_A}
P = "package 'a'"
BAD_CATALOGS = [
    ([1, 2], "expected an object with 'packages', got a list"),
    ({"packages": {}, "extra": 1}, "unknown key 'extra' (expected: version, packages)"),
    (
        {"version": 2, "packages": {}},
        "version 2 is not supported; this lipsync-tools reads catalog version 1 "
        "(upgrade lipsync-tools for a newer catalog)",
    ),
    (
        {"version": True, "packages": {}},
        "version True is not supported; this lipsync-tools reads catalog "
        "version 1 (upgrade lipsync-tools for a newer catalog)",
    ),
    ({}, "missing 'packages' (an object of id -> {path} or {url, sha256})"),
    ({"packages": []}, "'packages' must be an object of id -> entry, got a list"),
    (
        {"packages": {".hidden": URL}},
        "'.hidden' is not a valid package id: use 1-64 letters, digits, '.', '_' "
        "or '-', starting with a letter or digit",
    ),
    (
        {"packages": {"a/b": URL}},
        "'a/b' is not a valid package id: use 1-64 letters, digits, '.', '_' or '-', "
        "starting with a letter or digit",
    ),
    (
        {"packages": {"x" * 65: URL}},
        f"{'x' * 65!r} is not a valid package id: use 1-64 letters, digits, '.', "
        "'_' or '-', starting with a letter or digit",
    ),
    (
        {"packages": {"a": "a.sanders"}},
        f"{P}: expected an object with 'path' or 'url' + 'sha256', got a string",
    ),
    (
        {"packages": {"a": {**URL, "pth": "x"}}},
        f"{P}: unknown key 'pth' (expected: path, url, sha256, checkpoint, frames)",
    ),
    ({"packages": {"a": {}}}, f"{P}: has neither 'path' nor 'url'; give exactly one"),
    (
        {"packages": {"a": {**URL, "path": "avatars/alice.sanders"}}},
        f"{P}: has both 'path' and 'url'; give exactly one",
    ),
    (
        {"packages": {"a": {"url": "https://example.com/a.sanders"}}},
        f"{P}: sha256: missing; a 'url' needs the file's sha256 (64 hex digits, as `sha256sum FILE` prints)",
    ),
    ({"packages": {"a": {**URL, "sha256": "abc"}}}, f"{P}: sha256: 'abc' is not 64 hexadecimal digits"),
    ({"packages": {"a": {**URL, "sha256": 12}}}, f"{P}: sha256: a number is not 64 hexadecimal digits"),
    (
        {"packages": {"a": {**URL, "url": "file:///etc/passwd"}}},
        f"{P}: url: 'file:///etc/passwd' has scheme 'file'; only http:// and https:// URLs are downloaded",
    ),
    ({"packages": {"a": {**URL, "url": "https:///a"}}}, f"{P}: url: 'https:///a' has no host name"),
    ({"packages": {"a": {**URL, "url": 5}}}, f"{P}: url: must be a string, got a number"),
    (
        {"packages": {"a": {"path": "avatars/alice.sanders", "sha256": SHA_A}}},
        f"{P}: sha256: only a 'url' takes a sha256; a 'path' is used as it is (remove it)",
    ),
    (
        {"packages": {"a": {"path": "avatars/bob.sanders"}}},
        f"{P}: path: 'avatars/bob.sanders' does not exist (looked for {{folder}}/avatars/bob.sanders)",
    ),
    ({"packages": {"a": {"path": "avatars"}}}, f"{P}: path: 'avatars' is not a file ({{folder}}/avatars)"),
    ({"packages": {"a": {"path": ""}}}, f"{P}: path: must not be empty"),
    ({"packages": {"a": {"path": ["x"]}}}, f"{P}: path: must be a string, got a list"),
    (
        {"packages": {"a": {**URL, "frames": "some"}}},
        f'{P}: frames: must be "all" or "none" (crop-only), got \'some\'',
    ),
    (
        {"packages": {"a": {**URL, "checkpoint": "w.pth"}}},
        f"{P}: checkpoint: expected an object with 'path' or 'url' + 'sha256', got a string",
    ),
    (
        {"packages": {"a": {**URL, "checkpoint": {"path": "models/wav2lip_gan.pth", "frames": "all"}}}},
        f"{P}: checkpoint: unknown key 'frames' (expected: path, url, sha256)",
    ),
    (
        {"packages": {"a": {**URL, "checkpoint": {"url": "http://h/w.pth"}}}},
        f"{P}: checkpoint.sha256: missing; "
        "a 'url' needs the file's sha256 (64 hex digits, as `sha256sum FILE` prints)",
    ),
    (
        {"packages": {"a": {**URL, "checkpoint": {}}}},
        f"{P}: checkpoint has neither 'path' nor 'url'; give exactly one",
    ),
    (
        {"packages": {"a": {**URL, "checkpoint": {"path": "models/none.pth"}}}},
        f"{P}: checkpoint.path: 'models/none.pth' does not exist (looked for {{folder}}/models/none.pth)",
    ),
]


@pytest.mark.parametrize(("data", "message"), BAD_CATALOGS)
def test_bad_catalog_gives_one_exact_line(folder, data, message):
    (folder / "c.json").write_text(json.dumps(data))
    with pytest.raises(CatalogError) as info:
        load_catalog(folder / "c.json")
    assert str(info.value) == f"catalog {folder / 'c.json'}: " + message.replace("{folder}", str(folder))
    assert info.value.exit_code == 20


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "c.json",
            '{"packages": {"a": {}, "a": {}}}',
            "is not valid JSON: key 'a' appears twice in one object",
        ),
        ("c.json", '{"packages": ', "is not valid JSON: Expecting value: line 1 column 14"),
        ("c.json", "[" * 100_000, "is not valid JSON: maximum recursion depth exceeded"),
        ("c.toml", "[packages.a]\npath = ", "is not valid TOML: Invalid value"),
        (
            "c.toml",
            "[packages.a]\nx = 1\n[packages.a]\n",
            "is not valid TOML: Cannot declare ('packages', 'a') twice (at line 3",
        ),
        ("c.json", b"\xff\xfe{}", "is not UTF-8 text (byte 0)"),
    ],
)
def test_unreadable_catalog_files(tmp_path, name, text, message):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    # the parsers' own words follow ours; only their start is checked, as Python versions reword them
    assert str(info.value).startswith(f"catalog {path} {message}") and "\n" not in str(info.value)


def test_limits(tmp_path):
    big = tmp_path / "big.json"
    big.write_text('{"packages": {}}' + " " * (4 << 20))
    with pytest.raises(CatalogError, match=r"larger than 4 MiB; split it$"):
        load_catalog(big)
    many = {"packages": {f"p{i}": {"url": f"https://h/{i}", "sha256": SHA_A} for i in range(10_001)}}
    with pytest.raises(CatalogError, match=r": 10001 packages; a catalog holds at most 10000$"):
        parse_catalog(many, base_dir=tmp_path)
    del many["packages"]["p0"]
    assert len(parse_catalog(many, base_dir=tmp_path)) == MAX_CATALOG_ENTRIES


def test_missing_catalog_and_folder(tmp_path):
    with pytest.raises(InputNotFoundError, match="does not exist"):
        load_catalog(tmp_path / "none.json")
    with pytest.raises(CatalogError, match="is a folder"):
        load_catalog(tmp_path)


def test_dataclasses_check_themselves(tmp_path):
    with pytest.raises(CatalogError):
        CatalogSource()
    with pytest.raises(CatalogError):
        CatalogSource(path=tmp_path, url="https://h/a", sha256=SHA_A)
    with pytest.raises(CatalogError):
        CatalogSource(url="https://h/a")
    with pytest.raises(CatalogError):
        CatalogSource(url="ftp://h/a", sha256=SHA_A)
    with pytest.raises(CatalogError):
        CatalogEntry(id="../x", package=CatalogSource(path=tmp_path))
    with pytest.raises(CatalogError):
        CatalogEntry(id="x", package=CatalogSource(path=tmp_path), frames="some")  # type: ignore[arg-type]
    entry = CatalogEntry(id="x", package=CatalogSource(url="https://h/a", sha256=SHA_A.upper()))
    assert entry.package.sha256 == SHA_A
    with pytest.raises(CatalogError, match="appears twice"):
        Catalog(entries=(entry, entry))
