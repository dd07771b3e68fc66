#!/bin/sh
# The router image's base, made with mmdebstrap from Debian's packages and
# imported into the engine (no registry needed): Debian bookworm, minbase,
# with what the router runs (python3, iproute2, nftables, util-linux).
# Environment: TAG (default meshrouter-base:bookworm), DOCKER (default docker).
set -eu
TAG=${TAG:-meshrouter-base:bookworm}
DOCKER=${DOCKER:-docker}
mmdebstrap --quiet --variant=minbase \
    --include=python3,python3-venv,iproute2,nftables,util-linux \
    --customize-hook='rm -rf "$1"/usr/share/doc "$1"/usr/share/man "$1"/var/cache/apt' \
    bookworm - | $DOCKER import - "$TAG"
echo "imported $TAG"
