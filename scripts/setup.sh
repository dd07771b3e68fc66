#!/usr/bin/env bash
# Install what meshrouter, its tests and its demo need on a fresh Debian machine (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "setup: run as root (the mesh makes bridges, veths, TAPs and namespaces)" >&2
    exit 1
fi
need=()
for pair in ip:iproute2 ping:iputils-ping iperf3:iperf3 tcpdump:tcpdump nft:nftables nsenter:util-linux gcc:gcc dig:bind9-dnsutils podman:podman runc:runc mmdebstrap:mmdebstrap dockerd:docker.io ethtool:ethtool; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair##*:}")
done
[ -x /usr/lib/cni/portmap ] || need+=(containernetworking-plugins)  # CNI reference plugins
# The C data plane (meshrouter/dataplane/_dataplane.c) compiles against this Python's headers.
python3 -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
    || need+=(python3-dev)
if [ "${#need[@]}" -gt 0 ]; then
    echo "setup: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi
python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore -e '.[test]'
