#!/usr/bin/env bash
# Fresh machine -> test results. torch and torchvision are installed together first (a CPU torch wheel
# beside PyPI's torchvision fails to import), then the package with its test extra.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1
.venv/bin/pip install -q -e ".[test]"
# Browser proof of the PLY export (skipped with a reason when these are unavailable).
if command -v apt-get >/dev/null && ! command -v chromium >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || echo "chromium not installed: web-viewer test will skip"
fi
if command -v npm >/dev/null; then
  npm ci --prefix tests/web_viewer --no-audit --no-fund >/dev/null || echo "npm install failed: web-viewer test will skip"
  # PlayCanvas splat-transform for the format interop test (tests/gaussians/test_splat_transform_interop.py).
  npm ci --prefix tests/splat_transform --no-audit --no-fund >/dev/null || echo "npm install failed: splat-transform interop test will skip"
fi
set +e
.venv/bin/python -m pytest -q tests
status=$?
[ $status -eq 5 ] && { echo "no tests collected"; exit 1; }
exit $status
