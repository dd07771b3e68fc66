#!/usr/bin/env bash
# The whole test suite: installs what it needs, then lint, format, types, tests.
# Usage (as root): bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== ruff check";        ruff check .
echo "== ruff format";       ruff format --check .
echo "== mypy --strict";     mypy meshrouter launcher
echo "== pytest"
export MESH_REQUIRE_ENGINES=1  # setup.sh installed podman and docker.io: their tests must run
set +e
python3 -m pytest -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "test.sh: pytest collected no tests; that is a broken suite, not a pass" >&2
    exit 1
fi
if [ "$#" -eq 0 ]; then  # the whole suite: the C data plane under ASan and UBSan too
    echo "== the C data plane under AddressSanitizer and UBSan"
    bash scripts/asan.sh || rc=1
fi
leftover=$(ip netns list | grep -E '^mt[0-9]+-' || true)
if [ -n "$leftover" ]; then
    echo "test.sh: tests left namespaces behind: $leftover" >&2
    exit 1
fi
exit "$rc"
