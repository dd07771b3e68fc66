#!/usr/bin/env bash
# Benchmark meshrouter against the bare underlay, kernel VXLAN, tinc 1.0 and fastd, on one machine.
# Usage (as root): bash bench/run.sh [--quick] [--out DIR]
#                  bash bench/run.sh --wire [--quick] [--loss PCT...]   (a wire: segmenting, lossy)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
need=()
command -v tincd >/dev/null 2>&1 || need+=(tinc)
command -v fastd >/dev/null 2>&1 || need+=(fastd)
command -v ethtool >/dev/null 2>&1 || need+=(ethtool)
if [ "${#need[@]}" -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
python3 -c 'import matplotlib' 2>/dev/null || python3 -m pip install -q --root-user-action=ignore matplotlib
if [ "${1:-}" = "--wire" ]; then
    shift
    exec python3 -m bench.wire "$@"
fi
exec python3 -m bench.run "$@"
