#!/usr/bin/env bash
# Build one sanders package per video in a folder, validate them all, and leave a JSON report.
# Used by examples/ci/github-actions.yml; tests/cli/test_ci_example.py runs this same script.
#
#   bash examples/ci/build-packages.sh VIDEOS_DIR PACKAGES_DIR
#
# Exit status: 0 when every package built and validated; non-zero otherwise (the other packages are still
# built, and build-report.json says which failed and why).
set -euo pipefail
videos=${1:?usage: build-packages.sh VIDEOS_DIR PACKAGES_DIR}
packages=${2:?usage: build-packages.sh VIDEOS_DIR PACKAGES_DIR}
mkdir -p "$packages"

status=0
lipsync build-package "$videos" --output "$packages" --json --force > "$packages/build-report.json" || status=$?

shopt -s nullglob
built=("$packages"/*.sanders)
if [ ${#built[@]} -gt 0 ]; then
    lipsync validate "${built[@]}" --json > "$packages/validate-report.json" || status=$?
fi
exit "$status"
