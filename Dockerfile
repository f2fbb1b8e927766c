# syntax=docker/dockerfile:1.7
# The ficus image: every ficus binary on a minimal, non-root base. The Helm chart runs
# `ficus-<service>` in each Deployment; Compose runs them as separate containers.

ARG RUST_VERSION=1.95.0

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and the target directory between builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
      -p ficus -p ficus-planner -p ficus-analysis -p ficus-traffic -p ficus-sessions \
 && mkdir -p /out \
 && cp target/release/ficus target/release/ficus-planner target/release/ficus-analysis \
       target/release/ficus-traffic target/release/ficus-sessions /out/

# glibc and libgcc, CA certificates, a nonroot user (65532), no shell.
FROM gcr.io/distroless/cc-debian12:nonroot

ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="ficus" \
      org.opencontainers.image.description="Moves production traffic from an old environment to a new one in observed, reversible stages." \
      org.opencontainers.image.url="https://github.com/ficus-dev/ficus" \
      org.opencontainers.image.source="https://github.com/ficus-dev/ficus" \
      org.opencontainers.image.documentation="https://github.com/ficus-dev/ficus#readme" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="ficus" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"

COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
WORKDIR /home/nonroot

# gRPC 7001-7004 (planner, analysis, traffic, sessions), admin 9001-9004, proxy 8080.
EXPOSE 7001 7002 7003 7004 8080 9001 9002 9003 9004

# The gRPC health protocol, in exec form: no shell in the image. Containers running one
# service point it at their own port (Compose does).
HEALTHCHECK --interval=10s --timeout=4s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/ficus", "health", "--addr", "127.0.0.1:7001"]

ENTRYPOINT ["/usr/local/bin/ficus"]
CMD ["up", "--data-dir", "/home/nonroot/data"]
