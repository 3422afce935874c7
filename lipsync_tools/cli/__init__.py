"""The ``lipsync`` command line: thin Typer commands over library calls."""
