# syntax=docker/dockerfile:1
# Fulcrum container image: build with the locked dependencies, run as a
# non-root user from a slim Debian image.
#
#   docker build -t fulcrum .
#   docker run --rm -p 8080:8080 -p 9901:9901 \
#     -v "$PWD/fulcrum.toml:/etc/fulcrum/fulcrum.toml:ro" fulcrum
#
# The config inside the container must listen on 0.0.0.0. Checked with
# hadolint (see README, "Running in production"). Built and run without
# Docker, and checked, by examples/container/build-and-smoke.sh; see
# docs/container.md.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm
# The two base images. Override them to build from a registry mirror or from
# local images: examples/container/build-and-smoke.sh builds both from
# Debian packages and passes them here, to build without Docker or a registry.
ARG BUILD_IMAGE=rust:${RUST_VERSION}-${DEBIAN_RELEASE}
ARG RUNTIME_IMAGE=debian:${DEBIAN_RELEASE}-slim

FROM ${BUILD_IMAGE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
# Cache mounts keep the registry and target directory between builds
# (BuildKit); the binary is copied out of the cached target directory.
# Without the debug info Cargo.toml's release profile keeps for profiling
# the binary is 11 MB instead of 72 MB; its symbols stay, so backtraces and
# perf still name functions.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    CARGO_PROFILE_RELEASE_DEBUG=0 cargo build --release --locked --bin fulcrum \
    && cp target/release/fulcrum /usr/local/bin/fulcrum

FROM ${RUNTIME_IMAGE}
# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can verify it.
RUN groupadd --system --gid 10001 fulcrum \
    && useradd --system --uid 10001 --gid fulcrum --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin fulcrum
COPY --from=build /usr/local/bin/fulcrum /usr/local/bin/fulcrum
COPY examples/fulcrum.toml /etc/fulcrum/fulcrum.toml
USER 10001:10001

# Listener ports of the default config (plain, TLS) and the admin port.
EXPOSE 8080 8443 9901
# The admin port the HEALTHCHECK probes; change it with the config.
ENV FULCRUM_ADMIN_PORT=9901

# No curl in the image: bash's /dev/tcp speaks just enough HTTP to ask
# /health (200 while the process serves) and check the status line.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${FULCRUM_ADMIN_PORT} && printf 'GET /health HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]

# SIGTERM: stop accepting, /ready turns 503, drain for shutdown_timeout, exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/fulcrum"]
CMD ["run", "--config", "/etc/fulcrum/fulcrum.toml"]
