# syntax=docker/dockerfile:1
#
# ingestion-key-operator: a static (musl) release binary in an image with nothing else but CA
# certificates, running as a non-root user.
#
#   docker build -t ingestion-key-operator:0.1.0 .
#   docker buildx build --platform linux/amd64 -t <registry>/ingestion-key-operator:0.1.0 --push .
#
# Reproducible build stage: a pinned toolchain image (pin it by digest too, RUST_IMAGE=rust:1.89-alpine@sha256:...,
# when your policy requires it), Cargo.lock enforced (--locked), no network access after the
# dependency fetch (--offline), paths remapped out of the binary, and SOURCE_DATE_EPOCH for the
# image timestamps (docker buildx build --build-arg SOURCE_DATE_EPOCH=$(git log -1 --format=%ct)).

ARG RUST_IMAGE=rust:1.89-alpine

FROM ${RUST_IMAGE} AS build
ARG SOURCE_DATE_EPOCH=0
ENV SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH} \
    CARGO_INCREMENTAL=0 \
    CARGO_NET_RETRY=5 \
    CARGO_TERM_COLOR=never \
    RUSTFLAGS="-C target-feature=+crt-static --remap-path-prefix=/src=. --remap-path-prefix=/usr/local/cargo=cargo"
# musl-dev: the C runtime that ring's assembly and the static link need; ca-certificates: copied
# into the runtime image. Not version-pinned (hadolint DL3018): Alpine drops old package versions
# from its index, so pins break rebuilds; pin the builder image by digest instead (see above).
# hadolint ignore=DL3018
RUN apk add --no-cache musl-dev ca-certificates \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src

# Dependencies first, in their own layer: only the manifests and Cargo.lock refetch them. The
# workspace members crates/ibm-cloud-sim (the test simulator) and crates/test-support (the test
# harness), both dev-dependencies only, and the bench target must exist for cargo to load the
# workspace; none is built into the image.
COPY Cargo.toml Cargo.lock ./
COPY crates/ibm-cloud-sim/Cargo.toml crates/ibm-cloud-sim/
COPY crates/test-support/Cargo.toml crates/test-support/
RUN mkdir -p src benches crates/ibm-cloud-sim/src crates/test-support/src \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs && echo 'fn main() {}' > benches/scale.rs \
 && echo 'fn main() {}' > crates/ibm-cloud-sim/src/main.rs && touch crates/ibm-cloud-sim/src/lib.rs \
 && touch crates/test-support/src/lib.rs \
 && cargo fetch --locked --target x86_64-unknown-linux-musl \
 && rm -rf src crates/ibm-cloud-sim/src crates/test-support/src

COPY src ./src
COPY crates ./crates
RUN cargo build --release --locked --offline --target x86_64-unknown-linux-musl --bin ingestion-key-operator \
 && cp target/x86_64-unknown-linux-musl/release/ingestion-key-operator /ingestion-key-operator \
 && /ingestion-key-operator --version

# Runtime: no shell, no package manager, no libc (the binary is static); CA certificates for
# IAM and Resource Controller over TLS (rustls reads /etc/ssl/certs/ca-certificates.crt).
FROM scratch
LABEL org.opencontainers.image.title="ingestion-key-operator" \
      org.opencontainers.image.description="Keeps IBM Cloud ingestion keys (resource key credentials) in Kubernetes Secrets for log agents" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /ingestion-key-operator /ingestion-key-operator
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/ingestion-key-operator"]
CMD ["run"]
