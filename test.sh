#!/usr/bin/env bash
# Set up (apt packages, venv, test tools) and run every test.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh --test
exec .venv/bin/python -m pytest "$@"
