# syntax=docker/dockerfile:1
#
# pgsplit image: built with the Rust toolchain, run on a minimal base as a non-root user.
#
#   docker build -t pgsplit .
#   docker run -p 6432:6432 -p 9930:9930 \
#     -e PGSPLIT_LISTEN=0.0.0.0:6432 -e PGSPLIT_METRICS_LISTEN=0.0.0.0:9930 \
#     -e PGSPLIT_NODES=pg1@10.0.0.1:5432,pg2@10.0.0.2:5432 -e PGSPLIT_USERS=app:app-password \
#     -e PGSPLIT_MONITOR_PASSWORD=monitor-password pgsplit
#
# Configuration comes from PGSPLIT_* variables (README, "Configuration from the
# environment") or a mounted file: `-v ./pgsplit.toml:/etc/pgsplit/pgsplit.toml:ro` and
# `--config /etc/pgsplit/pgsplit.toml` (or PGSPLIT_CONFIG). pgsplit listens on 127.0.0.1
# by default, which is right for a sidecar sharing its pod's network; a container reached
# through a published port needs PGSPLIT_LISTEN=0.0.0.0:6432, as above.

FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
# The caches keep downloaded crates and compiled dependencies between builds; they are
# not part of any image, so the binary is copied out of the cached target directory.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin pgsplit \
    && install -D -m 0755 target/release/pgsplit /out/pgsplit

# glibc and libgcc only (what a Rust binary links), no shell, no package manager; the
# same Debian release as the build stage, so the glibc versions match.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/pgsplit /usr/local/bin/pgsplit
USER nonroot:nonroot
# 6432: PostgreSQL clients. 9930: /metrics, /healthz and /readyz when
# PGSPLIT_METRICS_LISTEN (metrics.listen) is set.
EXPOSE 6432 9930
ENTRYPOINT ["pgsplit"]
