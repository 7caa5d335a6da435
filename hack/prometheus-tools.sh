#!/usr/bin/env bash
# Provides a directory with Debian's `prometheus` and `promtool` binaries and prints its path on
# stdout. The package is downloaded (apt-get download) and unpacked (dpkg-deb -x), never
# installed: no service starts. Cached outside the repository. Progress goes to stderr.
set -euo pipefail

CACHE_DIR=${IKO_PROMETHEUS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ingestion-key-operator/prometheus}
log() { echo "prometheus-tools: $*" >&2; }

if [ -x "$CACHE_DIR/prometheus" ] && [ -x "$CACHE_DIR/promtool" ]; then
  echo "$CACHE_DIR"; exit 0
fi
mkdir -p "$(dirname "$CACHE_DIR")"
exec 9>"$CACHE_DIR.lock"
flock 9
if [ -x "$CACHE_DIR/prometheus" ] && [ -x "$CACHE_DIR/promtool" ]; then
  echo "$CACHE_DIR"; exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
log "downloading Debian's prometheus package"
(cd "$work" && apt-get download prometheus >&2) || {
  log "apt-get download failed; refreshing the package lists once"
  apt-get update >&2
  (cd "$work" && apt-get download prometheus >&2)
}
dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
mkdir -p "$CACHE_DIR.tmp"
cp "$work/root/usr/bin/prometheus" "$work/root/usr/bin/promtool" "$CACHE_DIR.tmp/"
rm -rf "$CACHE_DIR" && mv "$CACHE_DIR.tmp" "$CACHE_DIR"
log "prometheus $("$CACHE_DIR/prometheus" --version 2>&1 | head -1 | awk '{print $3}') in $CACHE_DIR"
echo "$CACHE_DIR"
