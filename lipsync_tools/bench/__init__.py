"""``lipsync bench --compare``: the original, binary and preloaded servers measured side by side.

Importing this package does no work and imports nothing heavy: servers, clients, models and matplotlib
are imported by the functions that use them.

>>> from lipsync_tools.bench import CompareOptions, run_compare  # doctest: +SKIP
>>> result = run_compare(CompareOptions.quick())  # doctest: +SKIP
"""

from .modes import DEFAULT_MODES, MODES, ModeSpec, parse_modes
from .report import RESULT_SCHEMA, SchemaError, check_result, print_report, tables, to_markdown
from .runner import COMPONENTS, CompareOptions, run_compare

__all__ = [
    "COMPONENTS",
    "DEFAULT_MODES",
    "MODES",
    "RESULT_SCHEMA",
    "CompareOptions",
    "ModeSpec",
    "SchemaError",
    "check_result",
    "parse_modes",
    "print_report",
    "run_compare",
    "tables",
    "to_markdown",
]
