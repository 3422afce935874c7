"""Migrate a package written by an older format version to the version this tool writes.

Readers already read every older version in memory (docs/package-format.md, *Versioning*); migrating writes
that reading back to disk, so tools that only know the current layout can use the file, and ``inspect``
shows the current manifest. Only the manifest changes between 1.0 and 1.2 (every dataset keeps its bytes
and checksum), so a migration copies the file, rewrites its root attributes, validates the copy in full and
renames it into place atomically: the original is untouched until the new file is complete and checked.

* 1.0 -> 1.1: the ``model`` section is written out (``wav2lip``, ``mel`` audio, no audio encoder, no
  features: what a 1.0 package is) and ``crop.box_rule`` (``padded``).
* 1.1 -> 1.2: nothing is required. The ``footage`` section (source range, segments) cannot be recovered
  without the source video; it stays absent, as the spec allows. Rebuild the package to get it.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import msgspec

from .._atomic import atomic_output
from ..errors import InputNotFoundError, OutputExistsError, PackageFormatError
from .manifest import Manifest, ModelMeta
from .reader import open_hdf5, read_manifest
from .spec import FORMAT_VERSION, format_version_string
from .validate import validate_package


@dataclass(frozen=True)
class MigrationResult:
    """What a migration did (or, with ``dry_run``, would do)."""

    source: Path
    output: Path
    from_version: str
    to_version: str
    changes: list[str] = field(default_factory=list)
    written: bool = False

    @property
    def needed(self) -> bool:
        return self.from_version != self.to_version

    def to_dict(self) -> dict[str, object]:
        return {
            "source": str(self.source),
            "output": str(self.output),
            "from_version": self.from_version,
            "to_version": self.to_version,
            "needed": self.needed,
            "changes": self.changes,
            "written": self.written,
        }


def migrated_manifest(manifest: Manifest) -> tuple[Manifest, list[str]]:
    """``manifest`` as the current version writes it, and one line per change (empty when current)."""
    version = manifest.version
    changes: list[str] = []
    if version >= FORMAT_VERSION:
        return manifest, changes
    if version < (1, 1):
        if manifest.model is None:
            manifest = msgspec.structs.replace(
                manifest, model=ModelMeta(family="wav2lip", audio_mode="mel", audio_encoder="none")
            )
            changes.append("model: written out as wav2lip, mel audio, no audio encoder (a 1.0 package's)")
        changes.append("crop.box_rule: written out as 'padded' (the 1.0 rule)")
    if version < (1, 2):
        changes.append(
            "footage: not recorded (it needs the source video; rebuild the package with "
            "`lipsync build-package` to get the source range and segments)"
        )
    current = format_version_string()
    changes.insert(0, f"format_version: {manifest.format_version} -> {current}")
    return msgspec.structs.replace(manifest, format_version=current), changes


def migrate_package(
    path: str | Path,
    output: str | Path | None = None,
    *,
    dry_run: bool = False,
    force: bool = False,
) -> MigrationResult:
    """Rewrite the package at ``path`` in the current format version, to ``output`` (default: in place).

    A package already at the current version (or a newer minor one, which this version reads as it is) is
    left alone. ``dry_run`` reports the changes without writing anything.

    Raises:
        InputNotFoundError: ``path`` does not exist.
        PackageFormatError: ``path`` is not a valid package, or the migrated copy does not validate (the
            message names the first problem; nothing is written).
        PackageVersionError: ``path`` is of a newer major version.
        OutputExistsError: ``output`` exists and is not ``path``, without ``force``.
    """
    source = Path(path)
    if not source.is_file():
        raise InputNotFoundError(f"package {source} does not exist; check the path")
    dest = Path(output) if output is not None else source
    with open_hdf5(source) as f:
        manifest = read_manifest(f, source)
    new, changes = migrated_manifest(manifest)
    result = MigrationResult(
        source=source,
        output=dest,
        from_version=manifest.format_version,
        to_version=new.format_version,
        changes=changes,
    )
    if dry_run or not result.needed:
        return result
    if dest.exists() and dest.resolve() != source.resolve() and not force:
        raise OutputExistsError(f"{dest} already exists; pass --force to overwrite it")
    with atomic_output(dest) as tmp:
        shutil.copyfile(source, tmp)
        with h5py.File(tmp, "r+") as f:
            f.attrs["format_version"] = new.format_version
            f.attrs["manifest"] = new.to_json()
        problems = validate_package(tmp)
        if problems:
            raise PackageFormatError(
                f"{source} does not migrate to a valid {new.format_version} package ({problems[0]}; "
                f"{len(problems)} problem(s) in all): nothing was written. Run `lipsync validate {source}`"
            )
    return dataclasses.replace(result, written=True)
