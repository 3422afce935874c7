"""The avatar (package) id rule, shared by every layer that names packages.

Clients ask for packages by id on the wire (``protocol/``), the engine's stores hold them by id, catalogs and
server configs list them by id (``remote/``, ``server/``). One rule, here, so the layers agree; each layer
raises its own error (a wire ``bad_field``, an engine request error, a catalog error) with
:func:`package_id_problem`'s text. Imports nothing of lipsync_tools (a leaf, like ``errors``).
"""

from __future__ import annotations

import re
from typing import Final

MAX_PACKAGE_ID_LEN: Final = 64
PACKAGE_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""A package id: 1-64 ASCII letters, digits, ``.``, ``_``, ``-``, starting with a letter or digit.

The first-character rule rules out ``.``, ``..`` and hidden names; no ``/`` or ``\\`` can appear at all, so an
id can never name a path outside a server's package table.
"""


def package_id_problem(package_id: object) -> str | None:
    """What is wrong with ``package_id`` as a package id (a sentence for an error message), or ``None``."""
    if not isinstance(package_id, str):
        return f"package_id must be a string, got {type(package_id).__name__}"
    if len(package_id) > MAX_PACKAGE_ID_LEN:
        return f"package_id is {len(package_id)} characters, the limit is {MAX_PACKAGE_ID_LEN}"
    if PACKAGE_ID_PATTERN.fullmatch(package_id) is None:
        return (
            f"package_id {package_id[:64]!r} is not valid: use 1-64 characters of A-Z a-z 0-9 . _ - "
            "starting with a letter or digit"
        )
    return None


__all__ = ["MAX_PACKAGE_ID_LEN", "PACKAGE_ID_PATTERN", "package_id_problem"]
