#!/usr/bin/env bash
# Build one sanders package per video in a folder, validate them all, and leave a JSON report.
# Used by examples/ci/github-actions.yml; tests/cli/test_ci_example.py runs this same script.
#
#   bash examples/ci/build-packages.sh VIDEOS_DIR PACKAGES_DIR
#
# SEGMENT=fail refuses any video that is not one continuous shot of one face from its first frame to its last
# (exit 21 in the report); the default, SEGMENT=longest, keeps each video's longest such stretch and says in
# the report which source frames it kept and what it dropped.
#
# Exit status: 0 when every package built and validated; non-zero otherwise (the other packages are still
# built, and build-report.json says which failed and why).
set -euo pipefail
videos=${1:?usage: build-packages.sh VIDEOS_DIR PACKAGES_DIR}
packages=${2:?usage: build-packages.sh VIDEOS_DIR PACKAGES_DIR}
mkdir -p "$packages"

status=0
lipsync build-package "$videos" --output "$packages" --segment "${SEGMENT:-longest}" --json --force \
    > "$packages/build-report.json" || status=$?

shopt -s nullglob
built=("$packages"/*.sanders)
if [ ${#built[@]} -gt 0 ]; then
    lipsync validate "${built[@]}" --json > "$packages/validate-report.json" || status=$?
fi
exit "$status"
