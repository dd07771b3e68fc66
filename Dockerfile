# The meshrouter image: the 'mesh' command, which 'mesh launch --engine docker'
# runs as 'mesh router ...'.  Build it with scripts/image.sh, which makes the
# wheels first (pinned by deploy/constraints.txt) and then builds with
# 'docker build --network none': nothing is fetched during the build.
#
# BASE must hold python3, python3-venv, iproute2, nftables and util-linux
# (scripts/base-image.sh makes one offline-importable with mmdebstrap).
ARG BASE=meshrouter-base:bookworm

FROM ${BASE} AS build
COPY build/wheels /wheels
RUN python3 -m venv /opt/meshrouter \
    && /opt/meshrouter/bin/pip install --no-index --no-cache-dir --find-links /wheels \
       "$(ls /wheels/meshrouter-*.whl)$(cat /wheels/EXTRAS)" \
    && /opt/meshrouter/bin/pip uninstall -y -q pip setuptools \
    && find /opt/meshrouter -name __pycache__ -prune -exec rm -rf {} +

FROM ${BASE}
COPY --from=build /opt/meshrouter /opt/meshrouter
ENV PATH=/opt/meshrouter/bin:$PATH PYTHONDONTWRITEBYTECODE=1
VOLUME /var/lib/meshrouter
EXPOSE 6783/tcp 6783/udp
ENTRYPOINT ["mesh"]
CMD ["--help"]
