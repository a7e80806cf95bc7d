#!/usr/bin/env bash
# make demo: the whole lifecycle on embedded defaults, offline. DVC stage commands call `plantwatch`,
# so the venv's bin goes first on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export BENTOML_DO_NOT_TRACK=true DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_HOME="$PWD/.prefect" BENTOML_HOME="$PWD/.bentoml"
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=${PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS:-120}
exec python scripts/demo.py "$@"
