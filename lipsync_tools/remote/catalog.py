"""Catalogs: the packages a server may load on demand, and where each comes from (``serve --catalog FILE``).

A catalog is JSON, or the same structure in TOML when the file name ends in ``.toml``::

    {
      "version": 1,
      "packages": {
        "alice": {"path": "avatars/alice.sanders"},
        "bob": {
          "url": "https://example.com/avatars/bob.sanders",
          "sha256": "<64 hex digits>",
          "checkpoint": {"url": "https://example.com/models/bob_unet.pth", "sha256": "<64 hex digits>"},
          "frames": "none"
        }
      }
    }

or, in TOML::

    [packages.alice]
    path = "avatars/alice.sanders"

    [packages.bob]
    url = "https://example.com/avatars/bob.sanders"
    sha256 = "<64 hex digits>"
    frames = "none"
    checkpoint = { url = "https://example.com/models/bob_unet.pth", sha256 = "<64 hex digits>" }

Rules, checked in this order; the first one broken is a :class:`CatalogError` of one line that names the
file, the entry and the key:

1. The file MUST be at most :data:`MAX_CATALOG_BYTES`, UTF-8, and valid JSON (no key twice in an object)
   or TOML.
2. The top level MUST be an object with ``packages``; it MAY have ``version``, which MUST be
   :data:`CATALOG_VERSION`; no other key.
3. ``packages`` MUST be an object of at most :data:`MAX_CATALOG_ENTRIES` entries, each id matching
   :data:`~lipsync_tools.ids.PACKAGE_ID_PATTERN` (the package-id rule every layer shares: clients ask
   for packages by these ids).
4. An entry MUST be an object with exactly one of ``path`` and ``url``. A ``url`` MUST be http(s) and come
   with ``sha256`` (64 hex digits): a download is only as trustworthy as its checksum. ``sha256`` is refused
   beside ``path`` (a local file is used as it is). ``checkpoint`` (a model kept outside the package) MAY be
   given, as ``{"path": ...}`` or ``{"url": ..., "sha256": ...}`` under the same rules. ``frames`` MAY be
   ``"all"`` (the default: full frames are served, composited) or ``"none"`` (crop-only serving: the
   server keeps no full frames of this package). No other key.
5. A ``path`` is relative to the catalog file's folder (absolute paths are taken as they are) and MUST name
   an existing file when the catalog is loaded, so a typo fails at startup, not at a client's first request.

Loading a catalog reads no package and downloads nothing: a server pulls URL entries (see
:func:`~lipsync_tools.remote.pull.pull` and :meth:`CatalogSource.local_path`) when a client first asks.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, cast

from ..errors import CatalogError, InputNotFoundError
from ..ids import PACKAGE_ID_PATTERN
from .pull import MAX_URL_LEN, SHA256_PATTERN, cache_path, url_problem

CATALOG_VERSION: Final = 1
MAX_CATALOG_BYTES: Final = 4 << 20
"""Largest catalog file read (4 MiB: ten thousand URL entries with checkpoints fit with room to spare)."""
MAX_CATALOG_ENTRIES: Final = 10_000
MAX_PATH_LEN: Final = 4096

FramesMode = Literal["all", "none"]
FRAMES_MODES: Final[tuple[FramesMode, ...]] = ("all", "none")

_TOP_KEYS: Final = ("version", "packages")
_ENTRY_KEYS: Final = ("path", "url", "sha256", "checkpoint", "frames")
_SOURCE_KEYS: Final = ("path", "url", "sha256")


@dataclass(frozen=True, kw_only=True)
class CatalogSource:
    """Where one file (a package, or a checkpoint) comes from: a local ``path``, or a ``url`` with the
    ``sha256`` (lower-case hex) its download must have. Exactly one of ``path`` and ``url`` is set."""

    path: Path | None = None
    url: str | None = None
    sha256: str | None = None

    def __post_init__(self) -> None:
        if (self.path is None) == (self.url is None):
            raise CatalogError(
                "a catalog source has either a path or a url (with its sha256), not both/neither"
            )
        if self.url is not None:
            problem = url_problem(self.url)
            if problem is not None:
                raise CatalogError(f"catalog URL {problem}")
            if not isinstance(self.sha256, str) or SHA256_PATTERN.fullmatch(self.sha256) is None:
                raise CatalogError(f"a catalog URL needs a sha256 of 64 hex digits, got {self.sha256!r}")
            object.__setattr__(self, "sha256", self.sha256.lower())
        elif self.sha256 is not None:
            raise CatalogError("sha256 goes with a url; a catalog path is used as it is")

    @property
    def is_remote(self) -> bool:
        return self.url is not None

    def local_path(self, cache_dir: Path) -> Path:
        """The file to open: ``path``, or where a URL is cached in ``cache_dir`` (``remote.cache_path``)."""
        if self.path is not None:
            return self.path
        return cache_path(cast(str, self.url), cast(str, self.sha256), cache_dir)


@dataclass(frozen=True, kw_only=True)
class CatalogEntry:
    """One package a server may load: its ``id`` (what clients ask for), where the ``package`` comes from,
    an optional ``checkpoint`` kept outside it, and which ``frames`` are served (``"none"``: crop-only)."""

    id: str
    package: CatalogSource
    checkpoint: CatalogSource | None = None
    frames: FramesMode = "all"

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or PACKAGE_ID_PATTERN.fullmatch(self.id) is None:
            raise CatalogError(f"package id {self.id!r} {_ID_RULE}")
        if self.frames not in FRAMES_MODES:
            raise CatalogError(f"package {self.id!r}: frames must be 'all' or 'none', got {self.frames!r}")


@dataclass(frozen=True, kw_only=True)
class Catalog:
    """The packages of a catalog, in file order; look one up with ``catalog["alice"]`` or ``.get``.

    ``source`` is the file it was read from (not compared: the same entries from a JSON and a TOML file
    are equal catalogs).
    """

    entries: tuple[CatalogEntry, ...]
    version: int = CATALOG_VERSION
    source: Path | None = field(default=None, compare=False)
    _by_id: dict[str, CatalogEntry] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.entries) > MAX_CATALOG_ENTRIES:
            raise CatalogError(
                f"a catalog holds at most {MAX_CATALOG_ENTRIES} packages, got {len(self.entries)}"
            )
        by_id: dict[str, CatalogEntry] = {}
        for entry in self.entries:
            if entry.id in by_id:
                raise CatalogError(f"package id {entry.id!r} appears twice in the catalog")
            by_id[entry.id] = entry
        object.__setattr__(self, "_by_id", by_id)

    def __getitem__(self, package_id: str) -> CatalogEntry:
        return self._by_id[package_id]

    def get(self, package_id: str) -> CatalogEntry | None:
        return self._by_id.get(package_id)

    def __contains__(self, package_id: object) -> bool:
        return package_id in self._by_id

    def __iter__(self) -> Iterator[CatalogEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(self._by_id)


_ID_RULE = (
    "is not a valid package id: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
)


def load_catalog(path: Path) -> Catalog:
    """Read and check the catalog at ``path`` (JSON, or TOML for a ``.toml`` name); see the module docstring.

    Raises :class:`InputNotFoundError` when the file does not exist and :class:`CatalogError` for anything
    wrong inside it.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_CATALOG_BYTES + 1)
    except FileNotFoundError:
        raise InputNotFoundError(f"catalog {path} does not exist") from None
    except IsADirectoryError:
        raise CatalogError(f"catalog {path} is a folder; pass the catalog file (JSON or TOML)") from None
    except OSError as exc:
        raise CatalogError(f"cannot read catalog {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_CATALOG_BYTES:
        raise CatalogError(f"catalog {path} is larger than {MAX_CATALOG_BYTES >> 20} MiB; split it")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CatalogError(f"catalog {path} is not UTF-8 text (byte {exc.start})") from None
    is_toml = path.suffix.lower() == ".toml"
    try:
        data = tomllib.loads(text) if is_toml else json.loads(text, object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as exc:
        kind = "TOML" if is_toml else "JSON"
        detail = exc.args[0] if isinstance(exc, _DuplicateKey) else " ".join(str(exc).split())
        raise CatalogError(f"catalog {path} is not valid {kind}: {detail}") from None
    return parse_catalog(data, base_dir=path.absolute().parent, name=str(path), source=path)


def parse_catalog(
    data: object, *, base_dir: Path, name: str = "catalog", source: Path | None = None
) -> Catalog:
    """Check a parsed catalog (``json.load``/``tomllib`` output) and build it; relative paths are taken
    from ``base_dir``. ``name`` starts every error message. Raises :class:`CatalogError`."""
    where = f"catalog {name}"
    if not isinstance(data, dict):
        raise CatalogError(f"{where}: expected an object with 'packages', got {_kind(data)}")
    version = data.get("version", CATALOG_VERSION)
    if type(version) is not int or version != CATALOG_VERSION:
        raise CatalogError(
            f"{where}: version {version!r} is not supported; this lipsync-tools reads catalog version "
            f"{CATALOG_VERSION} (upgrade lipsync-tools for a newer catalog)"
        )
    _refuse_unknown(data, _TOP_KEYS, where)
    if "packages" not in data:
        raise CatalogError(f"{where}: missing 'packages' (an object of id -> {{path}} or {{url, sha256}})")
    packages = data["packages"]
    if not isinstance(packages, dict):
        raise CatalogError(f"{where}: 'packages' must be an object of id -> entry, got {_kind(packages)}")
    if len(packages) > MAX_CATALOG_ENTRIES:
        raise CatalogError(
            f"{where}: {len(packages)} packages; a catalog holds at most {MAX_CATALOG_ENTRIES}"
        )
    entries = []
    for package_id, entry in packages.items():
        if not isinstance(package_id, str) or PACKAGE_ID_PATTERN.fullmatch(package_id) is None:
            shown = package_id[:80] if isinstance(package_id, str) else package_id
            raise CatalogError(f"{where}: {shown!r} {_ID_RULE}")
        entries.append(_parse_entry(package_id, entry, base_dir, f"{where}: package {package_id!r}"))
    return Catalog(entries=tuple(entries), version=version, source=source)


def _parse_entry(package_id: str, entry: object, base_dir: Path, where: str) -> CatalogEntry:
    if not isinstance(entry, dict):
        raise CatalogError(f"{where}: expected an object with 'path' or 'url' + 'sha256', got {_kind(entry)}")
    _refuse_unknown(entry, _ENTRY_KEYS, where)
    package = _parse_source({k: v for k, v in entry.items() if k in _SOURCE_KEYS}, base_dir, where, "")
    checkpoint = None
    if "checkpoint" in entry:
        raw = entry["checkpoint"]
        if not isinstance(raw, dict):
            raise CatalogError(
                f"{where}: checkpoint: expected an object with 'path' or 'url' + 'sha256', got {_kind(raw)}"
            )
        _refuse_unknown(raw, _SOURCE_KEYS, f"{where}: checkpoint")
        checkpoint = _parse_source(raw, base_dir, where, "checkpoint.")
    frames = entry.get("frames", "all")
    if frames not in FRAMES_MODES:
        raise CatalogError(f'{where}: frames: must be "all" or "none" (crop-only), got {frames!r}')
    return CatalogEntry(id=package_id, package=package, checkpoint=checkpoint, frames=frames)


def _parse_source(raw: dict[str, Any], base_dir: Path, where: str, prefix: str) -> CatalogSource:
    has_path, has_url = "path" in raw, "url" in raw
    if has_path == has_url:
        what = "both 'path' and 'url'" if has_path else "neither 'path' nor 'url'"
        raise CatalogError(f"{where}: {prefix.replace('.', ' ')}has {what}; give exactly one")
    if has_path:
        if "sha256" in raw:
            raise CatalogError(
                f"{where}: {prefix}sha256: only a 'url' takes a sha256; a 'path' is used as it is (remove it)"
            )
        return CatalogSource(path=_parse_path(raw["path"], base_dir, f"{where}: {prefix}path"))
    url = raw["url"]
    problem = url_problem(url) if isinstance(url, str) else f"must be a string, got {_kind(url)}"
    if problem is not None:
        shown = f"{url[:100]!r} " if isinstance(url, str) and len(url) <= MAX_URL_LEN else ""
        raise CatalogError(f"{where}: {prefix}url: {shown}{problem}")
    if "sha256" not in raw:
        raise CatalogError(
            f"{where}: {prefix}sha256: missing; a 'url' needs the file's sha256 (64 hex digits, as "
            "`sha256sum FILE` prints)"
        )
    sha256 = raw["sha256"]
    if not isinstance(sha256, str) or SHA256_PATTERN.fullmatch(sha256) is None:
        shown = repr(sha256[:80]) if isinstance(sha256, str) else _kind(sha256)
        raise CatalogError(f"{where}: {prefix}sha256: {shown} is not 64 hexadecimal digits")
    return CatalogSource(url=url, sha256=sha256.lower())


def _parse_path(value: object, base_dir: Path, where: str) -> Path:
    if not isinstance(value, str):
        raise CatalogError(f"{where}: must be a string, got {_kind(value)}")
    if not value:
        raise CatalogError(f"{where}: must not be empty")
    if len(value) > MAX_PATH_LEN or "\x00" in value:
        raise CatalogError(f"{where}: {value[:80]!r}... is not a usable path (too long or holds a NUL byte)")
    path = base_dir / value  # an absolute value replaces base_dir
    if not path.exists():
        raise CatalogError(f"{where}: {value!r} does not exist (looked for {path})")
    if not path.is_file():
        raise CatalogError(f"{where}: {value!r} is not a file ({path})")
    return path


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads`` hook: an object with a key twice is refused (plain JSON keeps the last silently)."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(f"key {key[:80]!r} appears twice in one object")
        result[key] = value
    return result


def _refuse_unknown(obj: Mapping[str, Any], known: tuple[str, ...], where: str) -> None:
    for key in obj:
        if key not in known:
            raise CatalogError(f"{where}: unknown key {key[:80]!r} (expected: {', '.join(known)})")


def _kind(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number"}
    if value is None:
        return "null"
    return names.get(type(value), f"a {type(value).__name__}")
