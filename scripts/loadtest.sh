#!/usr/bin/env bash
# Load test of /predict on a local distillery serve; see scripts/loadtest.py --help.
set -euo pipefail
exec python3 "$(dirname "$0")/loadtest.py" "$@"
