"""The README's exit-code table lists every code the CLI uses, each with its error class's number."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from lipsync_tools import errors


def test_every_error_class_exit_code_is_in_the_readme_table() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    table = readme[readme.index("| exit | cause |") :].split("\n\n", 1)[0]
    listed = {int(code) for row in table.splitlines()[2:] for code in re.findall(r"\d+", row.split("|")[1])}
    codes = {
        cls.exit_code
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.LipsyncError)
    }
    assert codes <= listed, f"missing from README: {sorted(codes - listed)}"
    assert listed - codes == {130}, "the table lists codes no error class uses"  # 130: Ctrl-C (cli/main.py)
