# Weir's image for anyone with Docker or BuildKit:
#   docker build -t registry.example.com/weir:0.1.0 .
# Without a Docker engine, script/image builds the same contents as an OCI layout.
#
# Build stage: the release binaries. The toolchain matches rust-version in Cargo.toml;
# cmake builds Pingora's zlib-ng.
FROM docker.io/library/rust:1.92-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=weir-target \
    cargo build --locked --release --bin weir-gateway --bin weir-controller --bin weir-sidecar \
 && mkdir -p /out \
 && cp target/release/weir-gateway target/release/weir-controller target/release/weir-sidecar /out/

# Run stage: glibc, libgcc and the CA bundle (BackendTLSPolicy's System trust), a non-root
# user (65532) and no shell: distroless cc is what the binaries load, and nothing more.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
ENV PATH=/usr/local/bin
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/weir-gateway"]
