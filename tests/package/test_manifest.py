"""The manifest's schema: version first, unknown keys refused (by version), every value's type checked."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from lipsync_tools.errors import PackageFormatError, PackageVersionError
from lipsync_tools.package import open_package
from lipsync_tools.package.manifest import Manifest

DATA = Path(__file__).parents[1] / "data"
SPEC = Path(__file__).parents[2] / "docs" / "package-format.md"
FIX = (
    "The manifest does not follow docs/package-format.md: the package is damaged or was not written by "
    "lipsync-tools; rebuild it"
)

MODEL = {"family": "wav2lip", "audio_mode": "mel", "audio_encoder": "none"}


def _manifest_dict() -> dict[str, Any]:
    data = json.loads(open_package(DATA / "v1.2-synthetic-footage.sanders").manifest.to_json())
    assert isinstance(data, dict)
    return data


def _refusal(change: Callable[[dict[str, Any]], object]) -> str:
    data = _manifest_dict()
    change(data)
    with pytest.raises(PackageFormatError) as raised:
        Manifest.from_dict(data)
    return str(raised.value)


def _set(*path: str | int, value: object) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        for step in path[:-1]:
            data = data[step]  # type: ignore[index]
        data[path[-1]] = value  # type: ignore[index]

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_set("video", "fps", value="fast"), "manifest.video.fps is 'fast'; expected a number"),
        (_set("video", "fps", value=None), "manifest.video.fps is null; expected a number"),
        (_set("video", "fps", value=[25]), "manifest.video.fps is list; expected a number"),
        (_set("video", "width", value=True), "manifest.video.width is True; expected an integer"),
        (_set("video", "frame_count", value=4.5), "manifest.video.frame_count is 4.5; expected an integer"),
        (_set("video", value=None), "manifest.video is null; expected an object"),
        (_set("model", value="wav2lip"), "manifest.model is str; expected an object or null"),
        (_set("tool", "name", value=7), "manifest.tool.name is 7; expected a string"),
        (
            _set("model", value={**MODEL, "feature_row_shape": [512, "x"]}),
            "manifest.model.feature_row_shape[1] is 'x'; expected an integer",
        ),
        (
            _set("footage", "segments", 0, "start", value="1"),
            "manifest.footage.segments[0].start is '1'; expected an integer",
        ),
        (lambda d: d["video"].pop("fps"), "manifest.video lacks the key 'fps'"),
        (lambda d: d.pop("source_audio"), "manifest lacks the key 'source_audio'"),
    ],
)
def test_a_wrong_value_is_named_with_what_was_found_and_expected(
    change: Callable[[dict[str, Any]], object], message: str
) -> None:
    assert _refusal(change) == f"{message}. {FIX}"


def test_a_dict_entry_is_named_by_its_key() -> None:
    # msgspec's own path says "$.datasets[...].shape[0]"; the message names the dataset
    def change(data: dict[str, Any]) -> None:
        data["datasets"]["rects"]["shape"][0] = "4"

    assert _refusal(change) == f"manifest.datasets['rects'].shape[0] is '4'; expected an integer. {FIX}"
    assert _refusal(_set("audio", "mel_params", "hop_size", value="200")) == (
        f"manifest.audio.mel_params['hop_size'] is '200'; expected a number. {FIX}"
    )


def test_a_long_value_is_shortened_in_the_message() -> None:
    message = _refusal(_set("video", "fps", value="x" * 10_000))
    assert message.startswith("manifest.video.fps is 'xxxx") and len(message) < 300


@pytest.mark.parametrize(
    ("where", "change"),
    [
        ("manifest", _set("colour", value="red")),
        ("manifest.video", _set("video", "hdr", value=True)),
        ("manifest.datasets['rects']", _set("datasets", "rects", "hdr", value=True)),
        ("manifest.footage.segments[1]", _set("footage", "segments", 1, "hdr", value=True)),
        ("manifest.model", _set("model", value={**MODEL, "hdr": True})),
    ],
)
def test_an_unknown_key_is_refused_where_it_is(
    where: str, change: Callable[[dict[str, Any]], object]
) -> None:
    message = _refusal(change)
    assert re.match(rf"{re.escape(where)} has unknown keys \['(colour|hdr)'\]; expected only \[", message)
    assert message.endswith(
        "A 1.2 manifest cannot hold other keys (only a newer minor version may add some): remove them if the "
        "manifest was edited, or rebuild the package"
    )


def test_an_unknown_key_is_named_before_the_key_it_replaced_is_missed() -> None:
    # a misspelt key: the message points at the spelling, not only at the key that is now missing
    message = _refusal(lambda d: d["video"].__setitem__("fsp", d["video"].pop("fps")))
    assert message.startswith("manifest.video has unknown keys ['fsp']")


def test_a_newer_minor_version_ignores_unknown_keys_at_every_depth_but_checks_types() -> None:
    data = _manifest_dict()
    data["format_version"] = "1.9"
    data["colour"] = "red"
    data["video"]["hdr"] = True
    data["datasets"]["rects"]["compression"] = "lzf"
    data["footage"]["segments"][0]["confidence"] = 0.9
    manifest = Manifest.from_dict(data)
    assert manifest.version == (1, 9) and manifest.video.fps == data["video"]["fps"]
    assert "hdr" not in manifest.to_dict()["video"]
    data["video"]["fps"] = "fast"
    with pytest.raises(PackageFormatError, match=r"manifest.video.fps is 'fast'; expected a number"):
        Manifest.from_dict(data)


def test_the_version_is_checked_before_anything_else() -> None:
    garbage = {"format": "sanders", "format_version": "2.0", "video": "?", "colour": "red"}
    with pytest.raises(PackageVersionError, match=r"package format 2.0 is newer than this lipsync-tools"):
        Manifest.from_dict(garbage)
    with pytest.raises(PackageFormatError, match=r"format_version is '1'; expected a string 'MAJOR.MINOR'"):
        Manifest.from_dict({**garbage, "format_version": "1"})
    with pytest.raises(PackageVersionError, match=r"predates 1\.0"):
        Manifest.from_dict({**garbage, "format_version": "0.9"})


def test_an_older_version_reads_with_the_defaults_of_its_missing_keys() -> None:
    data = _manifest_dict()
    data["format_version"] = "1.0"
    for key in ("model", "footage"):
        del data[key]
    del data["crop"]["box_rule"]
    manifest = Manifest.from_dict(data)
    assert manifest.model is None and manifest.footage is None and manifest.crop.box_rule == "padded"


def test_values_come_back_with_the_declared_types() -> None:
    data = _manifest_dict()
    data["video"]["fps"] = 25  # an integral float is written as an integer by some JSON writers
    manifest = Manifest.from_dict(copy.deepcopy(data))
    assert type(manifest.video.fps) is float and manifest.video.fps == 25.0
    assert manifest.footage is not None and all(
        type(segment).__name__ == "SegmentMeta" for segment in manifest.footage.segments
    )
    # the writer and migrate do this
    assert msgspec.structs.replace(manifest, format_version="1.2") == manifest


def test_the_spec_lists_every_manifest_key() -> None:
    text = SPEC.read_text(encoding="utf-8")
    table = text[text.index("## Manifest") : text.index("### The `footage` section")]
    keys = set(re.findall(r"^\| `(\w+)` \|", table, flags=re.MULTILINE))
    assert keys == {f.name for f in msgspec.structs.fields(Manifest)}
