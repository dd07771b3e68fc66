#!/usr/bin/env bash
# A local demo mesh: 3 hosts in network namespaces, containers talking across the encrypted mesh.
# Usage (as root): bash scripts/demo.sh [--keep]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec python3 -m tools.demo "$@"
