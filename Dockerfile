# syntax=docker/dockerfile:1
# mcu-server image: a Rust build stage, then a slim Debian 12 runtime holding only the binary,
# the shared libraries it links (libvpx, FFmpeg 5.1) and the web client.
#
#   docker build -t mcu-server .          (BuildKit: Docker >= 23 uses it by default)
#   docker run --rm mcu-server --help
#
# The build and runtime stages must stay on the same Debian release: the binary links the
# release's libvpx7 / libavcodec59 sonames. scripts/check-deploy.sh checks that the runtime list
# below covers every library the binary needs.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# ---- build ----------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
# cmake: the opus crate's bundled libopus; clang/libclang: ffmpeg-sys-next's bindgen.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        pkg-config cmake clang libclang-dev \
        libvpx-dev libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libswresample-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The registry and target directories are BuildKit caches: a rebuild after a source change
# recompiles only what changed. The binary is copied out of the cache mount.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p server --bin mcu-server \
    && install -D -m 0755 target/release/mcu-server /out/mcu-server

# ---- runtime --------------------------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        libvpx7 libavcodec59 libavformat59 libavutil57 libswscale6 libswresample4 \
        ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 mcu \
    && useradd --system --uid 10001 --gid mcu --home-dir /var/lib/mcu --shell /usr/sbin/nologin mcu \
    && install -d -o mcu -g mcu -m 0750 /var/lib/mcu /var/lib/mcu/recordings
COPY --from=build /out/mcu-server /usr/local/bin/mcu-server
# The web client is served from MCU_WEB_DIR; the migrations are compiled into the binary and
# kept here for reference (operators reading what the server will run against their database).
COPY web /usr/share/mcu/web
COPY migrations /usr/share/mcu/migrations

ENV MCU_LISTEN=0.0.0.0:8080 \
    MCU_WEB_DIR=/usr/share/mcu/web \
    MCU_RECORDINGS_DIR=/var/lib/mcu/recordings \
    DATABASE_URL=sqlite:///var/lib/mcu/mcu.db \
    MCU_LOG_JSON=true
USER mcu
WORKDIR /var/lib/mcu
VOLUME ["/var/lib/mcu"]
# HTTP + signaling WebSocket, and the one media UDP port (MCU_UDP_PORTS, 40000: publish it 1:1).
EXPOSE 8080/tcp 40000/udp
# `--healthcheck` asks GET /healthz on MCU_LISTEN (no curl in the image). It reads the same
# environment (and MCU_CONFIG) as the server.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/mcu-server", "--healthcheck"]
# SIGTERM: participants are told `closed: server_shutdown`, recordings finalized, exit < 10 s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/mcu-server"]
