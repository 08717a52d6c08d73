# syntax=docker/dockerfile:1
# The fogcharge image: one binary, `fogcharge`, for every fogcharge process of a
# deployment (fog-server, central, setup, sim, probe). See deploy/regions.yml and k8s/.
#   docker build -t fogcharge:latest .

FROM rust:1-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake pkg-config libssl-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p fogcharge --bin fogcharge \
    && strip -o /fogcharge target/release/fogcharge

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends libssl3 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /fogcharge --no-create-home fogcharge \
    && mkdir -p /fogcharge/secrets /fogcharge/state /fogcharge/reports \
    && chown -R 10001:10001 /fogcharge
COPY --from=build /fogcharge /usr/local/bin/fogcharge
USER 10001:10001
WORKDIR /fogcharge
# Fog servers serve HTTP on 9090 and central on 8080 in the deployments; each sets
# HEALTH_PORT or overrides the check.
ENV HEALTH_PORT=8080
HEALTHCHECK --interval=5s --timeout=4s --start-period=5s --retries=3 \
    CMD fogcharge probe "http://127.0.0.1:${HEALTH_PORT}/healthz"
ENTRYPOINT []
CMD ["fogcharge", "--help"]
