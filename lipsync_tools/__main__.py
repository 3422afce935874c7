"""``python -m lipsync_tools`` is the ``lipsync`` command."""

from lipsync_tools.cli.main import main

main()
