#!/usr/bin/env bash
# Provides a directory with kube-apiserver, etcd and kube-controller-manager for the test harness
# (the layout setup-envtest produces) and prints its path on stdout. Progress goes to stderr.
#
# Order of preference:
#   1. $KUBEBUILDER_ASSETS, if it holds usable binaries (the apiserver must carry the reflect2 fix).
#   2. The cache directory ($IKO_ASSETS_CACHE, default ~/.cache/ingestion-key-operator/envtest-1.20.2).
#   3. A build from Debian's kubernetes source package (1.20.2) and the etcd binary unpacked from
#      Debian's etcd-server package (never installed, so no service starts): about
#      10 minutes on 2 cores the first time, then cached outside the repository.
set -euo pipefail

K8S_VERSION=v1.20.2
CACHE_DIR=${IKO_ASSETS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ingestion-key-operator/envtest-1.20.2}
REFLECT2_MARK=modern-go/reflect2/go_above_118.go

log() { echo "envtest-assets: $*" >&2; }

# Kubernetes 1.20 vendors reflect2 1.0.1, which crashes the apiserver on the first custom resource
# when built with Go >= 1.18. A binary without the 1.0.2 sources is refused.
usable() {
  local dir=$1
  [ -x "$dir/kube-apiserver" ] && [ -x "$dir/etcd" ] || return 1
  grep -qaF "$REFLECT2_MARK" "$dir/kube-apiserver" || { log "$dir/kube-apiserver lacks the reflect2 fix; refusing it"; return 1; }
}

if [ -n "${KUBEBUILDER_ASSETS:-}" ] && usable "$KUBEBUILDER_ASSETS"; then
  echo "$KUBEBUILDER_ASSETS"; exit 0
fi
if usable "$CACHE_DIR" && [ -x "$CACHE_DIR/kube-controller-manager" ]; then
  echo "$CACHE_DIR"; exit 0
fi

# One build at a time (several test binaries or make runs may ask at once); whoever waited finds
# the cache filled.
mkdir -p "$(dirname "$CACHE_DIR")"
if command -v flock >/dev/null; then
  exec 9>"$CACHE_DIR.lock"
  flock 9
  if usable "$CACHE_DIR" && [ -x "$CACHE_DIR/kube-controller-manager" ]; then
    echo "$CACHE_DIR"; exit 0
  fi
fi

[ "$(id -u)" = 0 ] && SUDO= || SUDO=sudo
command -v apt-get >/dev/null || { log "no apt-get: set KUBEBUILDER_ASSETS to a directory with kube-apiserver, etcd and kube-controller-manager"; exit 1; }

# A deb-src entry derived from the machine's own Debian sources (no host name written anywhere).
if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources | $SUDO tee /etc/apt/sources.list.d/iko-deb-src.sources >/dev/null
  elif [ -f /etc/apt/sources.list ]; then
    sed -n 's/^deb /deb-src /p' /etc/apt/sources.list | $SUDO tee /etc/apt/sources.list.d/iko-deb-src.list >/dev/null
  fi
fi
log "installing build prerequisites (golang-go, reflect2 1.0.2 sources)"
$SUDO apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq golang-go rsync jq openssl golang-github-modern-go-reflect2-dev dpkg-dev >&2

WORK=$CACHE_DIR.build
mkdir -p "$WORK"
cd "$WORK"
# etcd: only the binary is needed, so the package is downloaded and unpacked, never installed
# (installing it would start Debian's etcd service).
if [ ! -x etcd-pkg/usr/bin/etcd ]; then
  log "unpacking etcd from Debian's etcd-server package"
  rm -rf etcd-pkg etcd-server_*.deb
  apt-get download etcd-server >&2
  dpkg-deb -x etcd-server_*.deb etcd-pkg
fi
ETCD_BIN=$WORK/etcd-pkg/usr/bin/etcd
if ! ls kubernetes_*.orig.tar.* >/dev/null 2>&1; then
  log "downloading Debian's kubernetes source package"
  apt-get source --download-only kubernetes >&2
fi
SRC=$WORK/src
if [ ! -f "$SRC/Makefile" ]; then
  rm -rf "$SRC"; mkdir -p "$SRC"
  tar -xf "$(ls kubernetes_*.orig.tar.* | head -n1)" -C "$SRC" --strip-components=1
fi
# 1.0.2 dropped files that 1.0.1 had (go_above_17.go, ...): replace the directory's Go files wholesale.
rm -f "$SRC/vendor/github.com/modern-go/reflect2/"*.go
cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.go "$SRC/vendor/github.com/modern-go/reflect2/"
rm -f "$SRC/vendor/github.com/modern-go/reflect2/"*_test.go

cd "$SRC"
export GOPATH=$SRC/.go CGO_ENABLED=0 KUBE_GIT_VERSION=$K8S_VERSION GOFLAGS=-mod=vendor GO111MODULE=on GOTOOLCHAIN=local
mkdir -p .go/src/k8s.io
ln -sfn ../../.. .go/src/k8s.io/kubernetes
for what in kube-apiserver kube-controller-manager; do
  log "building $what $K8S_VERSION (a few minutes)"
  make WHAT=cmd/$what >&2
done
OUT=$(dirname "$(find _output -type f -name kube-apiserver -path '*bin*' | head -n1)")
mkdir -p "$CACHE_DIR"
cp "$OUT/kube-apiserver" "$OUT/kube-controller-manager" "$CACHE_DIR/"
cp "$ETCD_BIN" "$CACHE_DIR/etcd"
usable "$CACHE_DIR" || { log "built apiserver failed the reflect2 check"; exit 1; }
log "assets ready in $CACHE_DIR after ${SECONDS}s"
echo "$CACHE_DIR"
