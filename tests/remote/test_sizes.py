"""``remote.sizes``: sizes as people write them."""

from __future__ import annotations

import pytest

from lipsync_tools.errors import UsageError
from lipsync_tools.remote import format_size, parse_size


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512MiB", 512 << 20),
        ("6GiB", 6 << 30),
        ("6 gib", 6 << 30),
        ("1e9", 10**9),
        ("1.5GB", 1_500_000_000),
        ("4096", 4096),
        ("100 B", 100),
        ("2kB", 2000),
        ("2KiB", 2048),
        ("1TiB", 1 << 40),
        (".5MiB", 1 << 19),
        ("2.5e3KB", 2_500_000),
        ("0", 0),
    ],
)
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "text", ["", "GiB", "-1GiB", "8 GiBs", "1e999", "8 G", "1,000", "nan", "inf", "1e9999GiB"]
)
def test_parse_size_refuses(text):
    with pytest.raises(UsageError) as info:
        parse_size(text)
    assert "\n" not in str(info.value)


def test_ambiguous_units_say_why():
    with pytest.raises(UsageError, match=r"G is ambiguous: write GiB for 1024-based or GB for 1000-based"):
        parse_size("8G")


def test_format_size():
    assert [format_size(n) for n in (0, 1023, 1536, 512 << 20, 6 << 30, 3 << 40)] == [
        "0 B",
        "1023 B",
        "1.5 KiB",
        "512.0 MiB",
        "6.0 GiB",
        "3.0 TiB",
    ]
