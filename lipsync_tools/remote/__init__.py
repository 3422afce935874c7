"""Downloads and catalogs: ``pull`` a file over HTTP(S) (size cap, SHA-256, resume, atomic rename) and
``load_catalog`` the packages a server may load on demand.

A leaf package: it imports nothing of lipsync-tools but ``errors`` (httpx only when a download starts), so
the CLI and the server can both use it.

>>> from lipsync_tools.remote import parse_size, format_size
>>> parse_size("6GiB") == 6 << 30, format_size(512 << 20)
(True, '512.0 MiB')
"""

from .catalog import (
    CATALOG_VERSION,
    FRAMES_MODES,
    MAX_CATALOG_BYTES,
    MAX_CATALOG_ENTRIES,
    PACKAGE_ID_PATTERN,
    Catalog,
    CatalogEntry,
    CatalogSource,
    load_catalog,
    parse_catalog,
)
from .pull import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_REDIRECTS,
    DEFAULT_MIN_SPEED_BYTES_S,
    DEFAULT_SPEED_WINDOW_S,
    DEFAULT_TIMEOUT_S,
    META_SUFFIX,
    PART_SUFFIX,
    ProgressCallback,
    PullResult,
    cache_path,
    check_sha256,
    default_cache_dir,
    display_url,
    file_sha256,
    pull,
    url_file_name,
    url_problem,
)
from .sizes import format_size, parse_size

__all__ = [
    "CATALOG_VERSION",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_REDIRECTS",
    "DEFAULT_MIN_SPEED_BYTES_S",
    "DEFAULT_SPEED_WINDOW_S",
    "DEFAULT_TIMEOUT_S",
    "FRAMES_MODES",
    "MAX_CATALOG_BYTES",
    "MAX_CATALOG_ENTRIES",
    "META_SUFFIX",
    "PACKAGE_ID_PATTERN",
    "PART_SUFFIX",
    "Catalog",
    "CatalogEntry",
    "CatalogSource",
    "ProgressCallback",
    "PullResult",
    "cache_path",
    "check_sha256",
    "default_cache_dir",
    "display_url",
    "file_sha256",
    "format_size",
    "load_catalog",
    "parse_catalog",
    "parse_size",
    "pull",
    "url_file_name",
    "url_problem",
]
