#!/usr/bin/env bash
# Builds the operator image without a container engine, a registry or a base image: `make image`.
#
# A statically linked glibc binary (the gnu target with +crt-static: no musl target is needed) on
# `scratch`, with Debian's CA bundle where rustls-native-certs reads it, an nsswitch.conf that makes
# name resolution consult /etc/hosts before DNS, user 65532, OCI labels; written with buildah
# (vfs storage, chroot isolation: works as root without a daemon) as an OCI archive.
#
#   hack/build-image.sh                 # -> target/image/ingestion-key-operator-<version>.oci.tar
#   PROFILE=dev hack/build-image.sh     # from a debug build (faster), e.g. for tests
#
# Prints the path of the archive on stdout; everything else goes to stderr. Environment:
#   PROFILE     cargo profile (default release)
#   IMAGE_DIR   output directory and buildah's private storage (default target/image)
#   IMAGE_NAME  name:tag inside the archive (default ingestion-key-operator:<version>)
#   BUILDAH     the buildah command (default: buildah; installed with apt-get when missing)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
log() { echo "build-image: $*" >&2; }

PROFILE=${PROFILE:-release}
IMAGE_DIR=${IMAGE_DIR:-$ROOT/target/image}
TARGET=x86_64-unknown-linux-gnu
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
IMAGE_NAME=${IMAGE_NAME:-ingestion-key-operator:$VERSION}
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
# The compiler flags of the image build. The Dockerfile sets the same (RUSTFLAGS there, with its
# own source paths); tests/packaging/dockerfile.rs checks that both agree.
RUSTFLAGS_IMAGE="-C target-feature=+crt-static --remap-path-prefix=$ROOT=. --remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}=cargo"

# --- Prerequisites: buildah and the CA bundle (Debian packages), installed when missing. ---
[ "$(id -u)" = 0 ] && SUDO= || SUDO=sudo
missing=()
command -v "${BUILDAH:-buildah}" >/dev/null || missing+=(buildah)
[ -s "$CA_BUNDLE" ] || missing+=(ca-certificates)
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || { log "missing ${missing[*]} and no apt-get: install them"; exit 1; }
  log "installing ${missing[*]} with apt-get"
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >&2
fi
BUILDAH=${BUILDAH:-buildah}
mkdir -p "$IMAGE_DIR"
bah() { "$BUILDAH" --root "$IMAGE_DIR/storage" --runroot "$IMAGE_DIR/run" --storage-driver vfs "$@"; }

# --- The binary: static, locked, offline, paths remapped. ---
# --target (even the host's) keeps RUSTFLAGS off build scripts and proc macros, which cannot be
# static.
if [ "$PROFILE" = release ]; then
  log "cargo build --profile $PROFILE --target $TARGET (RUSTFLAGS=$RUSTFLAGS_IMAGE)"
  build=(env RUSTFLAGS="$RUSTFLAGS_IMAGE" cargo build --profile "$PROFILE" --target "$TARGET")
else
  # A test image (PROFILE=dev): the flags go to the binary crate alone (`cargo rustc`), so its
  # dependencies are the ones the test build compiled (one build directory, target/), instead of
  # the whole tree again for another target. The binary lands in target/image-build, never over
  # the one the tests run. What differs from `make image`: the optimisation, and the
  # dependencies' own paths are not remapped.
  log "cargo rustc --profile $PROFILE -- $RUSTFLAGS_IMAGE"
  build=(env CARGO_BUILD_BUILD_DIR="$ROOT/target" CARGO_TARGET_DIR="$ROOT/target/image-build"
    cargo rustc --profile "$PROFILE")
fi
extra=()
[ "$PROFILE" = release ] || read -r -a extra <<<"-- $RUSTFLAGS_IMAGE"
binary=$("${build[@]}" --locked --offline --bin ingestion-key-operator \
  --message-format=json-render-diagnostics "${extra[@]}" \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["executable"])')
[ -x "$binary" ] || { log "cargo produced no binary"; exit 1; }
if readelf -l "$binary" | grep -q 'Requesting program interpreter'; then
  log "$binary is dynamically linked: the image would not run"; exit 1
fi
"$binary" --version >&2

# --- The root filesystem beyond the binary. ---
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/etc/ssl/certs"
cp "$CA_BUNDLE" "$stage/etc/ssl/certs/ca-certificates.crt"
# glibc's default without this file is "dns [!UNAVAIL=return] files": /etc/hosts (which the
# kubelet writes, with localhost) would be read only when DNS is unreachable.
printf 'hosts: files dns\n' >"$stage/etc/nsswitch.conf"

# --- The image. ---
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
archive="$IMAGE_DIR/ingestion-key-operator-$VERSION.oci.tar"
ctr=$(bah from scratch)
cleanup() { bah rm "$ctr" >/dev/null 2>&1 || true; rm -rf "$stage"; }
trap cleanup EXIT
bah copy --chown 0:0 --chmod 0755 "$ctr" "$binary" /ingestion-key-operator >/dev/null
bah copy --chown 0:0 --chmod 0644 "$ctr" "$stage/etc/ssl/certs/ca-certificates.crt" /etc/ssl/certs/ca-certificates.crt >/dev/null
bah copy --chown 0:0 --chmod 0644 "$ctr" "$stage/etc/nsswitch.conf" /etc/nsswitch.conf >/dev/null
bah config \
  --user 65532:65532 \
  --entrypoint '["/ingestion-key-operator"]' \
  --cmd run \
  --port 8080/tcp \
  --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
  --label org.opencontainers.image.title=ingestion-key-operator \
  --label "org.opencontainers.image.description=Keeps IBM Cloud ingestion keys (resource key credentials) in Kubernetes Secrets for log agents" \
  --label org.opencontainers.image.licenses=Apache-2.0 \
  --label "org.opencontainers.image.version=$VERSION" \
  --label "org.opencontainers.image.revision=$revision" \
  "$ctr"
rm -f "$archive.tmp"
bah commit --quiet --timestamp "$epoch" --format oci --disable-compression=false "$ctr" "oci-archive:$archive.tmp:$IMAGE_NAME" >/dev/null
mv "$archive.tmp" "$archive"
log "$IMAGE_NAME: $archive ($(du -h "$archive" | cut -f1); binary $(du -h "$binary" | cut -f1))"
echo "$archive"
