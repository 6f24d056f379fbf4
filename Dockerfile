# syntax=docker/dockerfile:1
# Gleaner's image: the one `gleaner` binary, run as a non-root user on Debian slim. Every process
# (api, worker, scheduler, migrate) is this image with another command:
#   docker build -t gleaner .
#   docker run --rm gleaner --help
#
# Dependencies are built in a layer of their own (cargo-chef): a change to Gleaner's code
# rebuilds Gleaner alone, not the ~500 crates under it.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS chef
# cargo-chef computes the dependency "recipe" of the workspace.
RUN cargo install cargo-chef --locked --version ~0.1
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# The dependencies only: cached until Cargo.lock or a Cargo.toml changes.
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin gleaner
COPY . .
RUN cargo build --release --locked --bin gleaner \
    && strip target/release/gleaner \
    && cp target/release/gleaner /gleaner

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="gleaner" \
      org.opencontainers.image.description="Collects cloud inventory, billing data and metrics through plugins" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/gleaner/gleaner"
# CA roots for the clouds' HTTPS endpoints; tini reaps the plugin processes a worker starts
# and forwards SIGTERM, so a worker drains before it stops. Not pinned to versions: the
# release's security updates should reach each rebuild.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 gleaner \
    && useradd --system --uid 10001 --gid gleaner --home-dir /var/lib/gleaner --create-home gleaner \
    && install -d -o gleaner -g gleaner /var/lib/gleaner/keys
COPY --from=builder /gleaner /usr/local/bin/gleaner
USER 10001:10001
WORKDIR /var/lib/gleaner
# Listen on every interface inside the container: the API on 8080, a worker's /metrics and
# /healthz on 9464.
ENV GLEANER_LISTEN=0.0.0.0:8080 \
    GLEANER_WORKER__METRICS_LISTEN=0.0.0.0:9464 \
    GLEANER_LOG__FORMAT=json
EXPOSE 8080 9464
# The API's liveness; a worker's compose service and Kubernetes probes point it at 9464.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/gleaner", "healthcheck"]
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/gleaner"]
CMD ["api"]
