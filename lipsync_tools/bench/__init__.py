"""``lipsync bench --compare``: the original, binary and preloaded servers measured side by side;
``lipsync bench --live``: live sessions at the speed of speech, and one long session for drift.

Importing this package does no work and imports nothing heavy: servers, clients, models and matplotlib
are imported by the functions that use them.

>>> from lipsync_tools.bench import CompareOptions, run_compare  # doctest: +SKIP
>>> result = run_compare(CompareOptions.quick())  # doctest: +SKIP
>>> from lipsync_tools.bench import LiveOptions, run_live  # doctest: +SKIP
>>> live = run_live(LiveOptions.quick())  # doctest: +SKIP
"""

from .live import LiveOptions, run_live
from .modes import DEFAULT_MODES, MODES, ModeSpec, parse_modes
from .report import (
    LIVE_SCHEMA,
    RESULT_SCHEMA,
    SchemaError,
    check_result,
    print_report,
    tables,
    to_markdown,
)
from .runner import COMPONENTS, CompareOptions, run_compare

__all__ = [
    "COMPONENTS",
    "DEFAULT_MODES",
    "LIVE_SCHEMA",
    "MODES",
    "RESULT_SCHEMA",
    "CompareOptions",
    "LiveOptions",
    "ModeSpec",
    "SchemaError",
    "check_result",
    "parse_modes",
    "print_report",
    "run_compare",
    "run_live",
    "tables",
    "to_markdown",
]
