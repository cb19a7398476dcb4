# syntax=docker/dockerfile:1
# Multi-stage build: compile in the Rust image, run on debian-slim as a
# non-root user. librdkafka is built statically by rdkafka (never link
# Debian's librdkafka: too old); the runtime needs only libssl and CA roots.
# BuildKit cache mounts keep the crate registry and the target directory
# (librdkafka and every dependency compiled) between builds, so a code change
# recompiles only this crate.

FROM rust:1.95-bookworm AS build
WORKDIR /src
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl-dev zlib1g-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY schemas ./schemas
COPY tools ./tools
COPY config ./config
COPY .cargo ./.cargo
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin superfone-bridge \
 && cp target/release/superfone-bridge /usr/local/bin/superfone-bridge \
 && strip /usr/local/bin/superfone-bridge

FROM debian:bookworm-slim AS runtime
# Set by the build (docker build --build-arg VERSION=… --build-arg REVISION=$(git rev-parse HEAD)).
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="superfone-bridge" \
      org.opencontainers.image.description="Receives Superfone event notifications and publishes them to Kafka as Avro, one topic per event" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 bridge \
 && useradd --system --uid 10001 --gid bridge --home-dir /var/lib/superfone-bridge bridge \
 && mkdir -p /var/lib/superfone-bridge/spool /var/lib/superfone-bridge/recordings /etc/superfone-bridge \
 && chown -R bridge:bridge /var/lib/superfone-bridge
COPY --from=build /usr/local/bin/superfone-bridge /usr/local/bin/superfone-bridge
# The schemas are compiled into the binary; shipped too for reference and for
# registry.schemas_dir overrides.
COPY schemas /usr/share/superfone-bridge/schemas
COPY config/superfone-bridge.example.toml /etc/superfone-bridge/superfone-bridge.example.toml
USER 10001:10001
WORKDIR /var/lib/superfone-bridge
ENV SUPERFONE_BRIDGE_SERVER__LISTEN=0.0.0.0:8080 \
    SUPERFONE_BRIDGE_ADMIN__LISTEN=0.0.0.0:9090 \
    SUPERFONE_BRIDGE_SPOOL__DIR=/var/lib/superfone-bridge/spool \
    SUPERFONE_BRIDGE_LOG__FORMAT=json
VOLUME ["/var/lib/superfone-bridge/spool"]
# 8080: Superfone's webhooks (public). 9090: /metrics, /healthz, /readyz (internal).
EXPOSE 8080 9090
# `healthcheck` asks this config's admin listener (no curl in the image).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["/usr/local/bin/superfone-bridge", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/superfone-bridge"]
CMD ["serve"]
