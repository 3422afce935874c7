"""``lipsync bench --compare``: the original, binary and preloaded servers measured side by side;
``lipsync bench --live``: live sessions at the speed of speech, and one long session for drift;
``lipsync bench --soak SECONDS``: one server under a long, mixed and partly hostile load;
``lipsync bench --ray --catalog CAT``: frame latency through a Ray Serve cluster against the plain server, and
which replica served each avatar.

Importing this package does no work and imports nothing heavy: servers, clients, models and matplotlib
are imported by the functions that use them.

>>> from lipsync_tools.bench import CompareOptions, run_compare  # doctest: +SKIP
>>> result = run_compare(CompareOptions.quick())  # doctest: +SKIP
>>> from lipsync_tools.bench import LiveOptions, run_live  # doctest: +SKIP
>>> live = run_live(LiveOptions.quick())  # doctest: +SKIP
>>> from lipsync_tools.bench import SoakOptions, run_soak  # doctest: +SKIP
>>> soak = run_soak(SoakOptions(seconds=600))  # doctest: +SKIP
>>> from pathlib import Path  # doctest: +SKIP
>>> from lipsync_tools.bench import run_scaleout  # doctest: +SKIP
>>> scale_out = run_scaleout(Path("catalog.json"), requests_per_avatar=50)  # doctest: +SKIP
"""

from .live import LiveOptions, run_live
from .modes import DEFAULT_MODES, MODES, ModeSpec, parse_modes
from .output import check_outputs, write_outputs
from .report import (
    COMPARE_SCHEMA_VERSION,
    LIVE_SCHEMA_VERSION,
    SCALEOUT_SCHEMA_VERSION,
    SOAK_SCHEMA_VERSION,
    SchemaError,
    check_result,
    load_schema,
    print_report,
    schema_path,
    tables,
    to_markdown,
)
from .runner import COMPONENTS, CompareOptions, run_compare
from .scaleout import run_scaleout
from .soak import SoakOptions, run_soak

__all__ = [
    "COMPARE_SCHEMA_VERSION",
    "COMPONENTS",
    "DEFAULT_MODES",
    "LIVE_SCHEMA_VERSION",
    "MODES",
    "SCALEOUT_SCHEMA_VERSION",
    "SOAK_SCHEMA_VERSION",
    "CompareOptions",
    "LiveOptions",
    "ModeSpec",
    "SchemaError",
    "SoakOptions",
    "check_outputs",
    "check_result",
    "load_schema",
    "parse_modes",
    "print_report",
    "run_compare",
    "run_live",
    "run_scaleout",
    "run_soak",
    "schema_path",
    "tables",
    "to_markdown",
    "write_outputs",
]
