# The README's set-up commands: `make install`, then `make test`. CI (.ci/run) runs exactly these.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Debian packages the tests use: espeak-ng speaks the test speech; libgl1/libglib2.0-0 are what OpenCV's
# wheels load; chromium runs the demo page's browser tests (Playwright drives it: its own browser download is
# not used). Installed only when missing (needs root or sudo).
APT_PACKAGES := espeak-ng libgl1 libglib2.0-0 chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install system-deps test lint clean

install: system-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: the CPU wheel on this machine's disk. An unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/lipsync --version

system-deps:
	@missing=""; \
	command -v espeak-ng >/dev/null 2>&1 || missing="yes"; \
	command -v chromium >/dev/null 2>&1 || missing="yes"; \
	ldconfig -p | grep -q 'libGL.so.1 ' || missing="yes"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $(APT_PACKAGES)"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(APT_PACKAGES); \
	fi

test:
	$(BIN)/pytest --durations=15

lint:
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
