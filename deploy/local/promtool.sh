#!/usr/bin/env bash
# Make sure `promtool` (Prometheus's checker, from Debian's `prometheus` package) is at
# ~/.cache/streamer/prometheus/promtool, where the tests of deploy/prometheus look for it.
#
#   deploy/local/promtool.sh
#
# Only the binary is extracted from the package (`apt-get download`, no root needed, no service
# installed or started); `apt-get update` runs only when the download fails.
set -euo pipefail

DIR="${STREAMER_CACHE:-$HOME/.cache/streamer}/prometheus"
TOOL="$DIR/promtool"
log() { printf '[promtool] %s\n' "$*" >&2; }
die() { printf '[promtool] error: %s\n' "$*" >&2; exit 1; }

[ -x "$TOOL" ] && exit 0
command -v apt-get >/dev/null 2>&1 || die "no apt-get here: put promtool on PATH or set PROMTOOL"
mkdir -p "$DIR"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
log "extracting promtool from Debian's prometheus package"
if ! apt-get download prometheus >/dev/null 2>&1; then
  log "apt-get download failed; updating the package lists and trying again"
  SUDO=()
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO=(sudo)
  "${SUDO[@]}" apt-get update -qq >/dev/null
  apt-get download prometheus >/dev/null || die "could not download Debian's prometheus package"
fi
dpkg-deb --fsys-tarfile prometheus_*.deb | tar -xO ./usr/bin/promtool > "$TOOL.part"
chmod +x "$TOOL.part"
mv "$TOOL.part" "$TOOL"
log "installed: $("$TOOL" --version 2>&1 | head -n1)"
