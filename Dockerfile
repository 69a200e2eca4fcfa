# syntax=docker/dockerfile:1
# sidewire container image: release build on Debian bookworm, slim non-root runtime.
#
#   docker build -t sidewire .
#   docker run --rm -p 8080:8080 -v $PWD/my-config.yaml:/etc/sidewire/config.yaml sidewire
#
# docker-compose.yml runs this image with config.docker.yaml in front of the example chat app.
#
# The baked-in /etc/sidewire/config.yaml is the repo's demo config.yaml, which listens on
# 127.0.0.1 (reachable only from inside the container's network namespace, e.g. a pod
# sidecar). To publish the ports, mount a config with `listen: "0.0.0.0:8080"` (and
# `tls.listen` / `admin.listen` with `admin.secret` as needed).

############################ builder
FROM rust:1-bookworm AS builder
WORKDIR /src

# Dependencies first, in their own layer: built against stub sources, so this layer is
# reused until Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src

# The real sources. Drop the stub's own artifacts so cargo cannot mistake them for
# up to date (COPY keeps the sources' older mtimes).
COPY src ./src
RUN rm -rf target/release/.fingerprint/sidewire-* target/release/deps/sidewire-* \
           target/release/deps/libsidewire-* target/release/sidewire* target/release/libsidewire* \
 && touch src/lib.rs src/main.rs \
 && cargo build --release --locked \
 && install -D -m 0755 target/release/sidewire /out/sidewire

############################ runtime
FROM debian:bookworm-slim

RUN groupadd --system --gid 10001 sidewire \
 && useradd --system --uid 10001 --gid sidewire --no-create-home \
            --home-dir /nonexistent --shell /usr/sbin/nologin sidewire

COPY --from=builder /out/sidewire /usr/local/bin/sidewire
COPY config.yaml /etc/sidewire/config.yaml

USER 10001:10001
WORKDIR /etc/sidewire

# public HTTP (h1 + h2c), TLS, admin (health, metrics, publish)
EXPOSE 8080 8443 9090

# SIGTERM (docker stop) starts sidewire's graceful drain; SIGHUP reloads the config.
ENTRYPOINT ["sidewire"]
CMD ["--config", "/etc/sidewire/config.yaml"]
