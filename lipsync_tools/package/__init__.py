"""The sanders package format: write, open (memory-mapped), validate, migrate."""

from .manifest import Manifest
from .migrate import MigrationResult, migrate_package
from .reader import Package, open_package
from .spec import FILE_SUFFIX, FORMAT_NAME, FORMAT_VERSION
from .validate import Problem, validate_package
from .writer import PackageWriter, check_output_path

__all__ = [
    "FILE_SUFFIX",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "Manifest",
    "MigrationResult",
    "Package",
    "PackageWriter",
    "Problem",
    "check_output_path",
    "migrate_package",
    "open_package",
    "validate_package",
]
