# The meshrouter router image: 'mesh router' in the foreground.
# Run with host networking and privileges (it makes a bridge and a TAP device):
#   docker run -d --name meshrouter --network host --pid host --privileged \
#     -v /var/lib/meshrouter:/var/lib/meshrouter -e MESH_PASSWORD=... meshrouter:0.1.0 PEER...
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY meshrouter meshrouter
COPY launcher launcher
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[kube]"

FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends iproute2 util-linux nftables \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
VOLUME /var/lib/meshrouter
EXPOSE 6783/tcp 6783/udp
ENTRYPOINT ["mesh", "router"]
