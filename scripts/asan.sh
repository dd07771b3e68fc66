#!/usr/bin/env bash
# The C data plane under AddressSanitizer and UndefinedBehaviorSanitizer: the
# extension is rebuilt with both in a scratch copy of the package, and its
# tests (forwarders back to back in every pairing, fuzzed forged datagrams,
# the TCP segmenter and coalescer against their model) run against it.
# Any report fails the run.  Part of scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp -r meshrouter tests pyproject.toml "$tmp"/
rm -f "$tmp"/meshrouter/dataplane/_dataplane*.so
inc=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
ext=$(python3 -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
gcc -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=undefined \
    -fno-omit-frame-pointer -fPIC -shared -I"$inc" \
    meshrouter/dataplane/_dataplane.c -o "$tmp/meshrouter/dataplane/_dataplane$ext"
cd "$tmp"
ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)" \
    python3 -m pytest -q -p no:cacheprovider tests/unit/dataplane/test_dataplane.py tests/unit/dataplane/test_forwarder.py \
    tests/unit/dataplane/test_session.py tests/unit/dataplane/test_tso_c.py \
    tests/unit/dataplane/test_e2e.py
