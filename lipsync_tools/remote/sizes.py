"""Byte sizes as people write them (``512MiB``, ``6GiB``, ``1e9``) and as messages show them.

Used by ``lipsync pull --max-size`` and the server's memory budget. Units are case-insensitive; an ``i``
makes them binary (``KiB`` = 1024) and its absence decimal (``kB`` = 1000), as in IEC 80000-13. The bare
letters ``K``/``M``/``G``/``T`` are refused: tools disagree on whether they mean 1000 or 1024.
"""

from __future__ import annotations

import math
import re
from typing import Final

from ..errors import UsageError

SIZE_UNITS: Final[dict[str, int]] = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}
"""Accepted unit suffixes (lower case) and their multipliers."""

MAX_SIZE: Final = 1 << 62
"""Largest size :func:`parse_size` returns (4 EiB): anything larger is a typo."""

_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)(?:[eE]([+-]?\d{1,3}))?\s*([A-Za-z]*)\s*")


def parse_size(text: str) -> int:
    """The number of bytes ``text`` names: ``"8GiB"``, ``"512 MiB"``, ``"1.5GB"``, ``"1e9"``, ``"4096"``.

    Fractions of a byte are rounded down. Raises :class:`UsageError` for anything else (negative numbers,
    unknown or ambiguous units, more than :data:`MAX_SIZE`).
    """
    match = _SIZE.fullmatch(text)
    unit = match.group(3).lower() if match else ""
    if match is None or unit not in SIZE_UNITS:
        hint = ""
        if match is not None and unit in ("k", "m", "g", "t"):
            hint = f" ({unit.upper()} is ambiguous: write {unit.upper()}iB for 1024-based or {unit.upper()}B "
            hint += "for 1000-based)"
        raise UsageError(
            f"invalid size {text!r}{hint}; expected a number with an optional unit, such as 512MiB, 6GiB, "
            "1.5GB or 1e9"
        )
    value = float(match.group(1) + (f"e{match.group(2)}" if match.group(2) else "")) * SIZE_UNITS[unit]
    if not math.isfinite(value) or value > MAX_SIZE:
        raise UsageError(f"size {text!r} is larger than {format_size(MAX_SIZE)}; check the number and unit")
    return int(value)


def format_size(n: int | float) -> str:
    """``n`` bytes for people: ``"812 B"``, ``"1.5 KiB"``, ``"6.0 GiB"`` (binary units, one decimal)."""
    if n < 1024:
        return f"{int(n)} B"
    value, unit = float(n), "B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):  # noqa: B007  (the unit the loop stops at is the one shown)
        value /= 1024
        if value < 1024:
            break
    return f"{value:.1f} {unit}"
