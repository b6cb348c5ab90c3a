#!/usr/bin/env bash
# Set up a fresh machine and run the whole test suite (the README's test command).
set -euo pipefail
cd "$(dirname "$0")/.."

# Headless Chromium for the browser tests (Debian packages; we run as root in CI).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "note: chromium is not installed; browser tests will be skipped" >&2
  fi
fi

# The local CPU wheel of torch first, so that nothing pulls a CUDA build.
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e '.[test]'

python3 -m ruff format --check src tests bench
python3 -m ruff check src tests bench
# Types of src/cnnscope (pyproject: [tool.mypy]).
python3 -m mypy
# tests/ and the docstring examples in src/cnnscope (pyproject: testpaths, --doctest-modules).
python3 -m pytest -q "$@"
