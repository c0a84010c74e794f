#!/usr/bin/env bash
# Set up (apt packages, venv) and run the demo: a box, simulated cameras, the web UI.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/edgebox demo "$@"
