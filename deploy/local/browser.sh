#!/usr/bin/env bash
# Make sure Debian's headless browser for the dashboard test is installed: chromium and its
# chromedriver (Selenium drives them; it never downloads a browser or a driver of its own).
#
#   deploy/local/browser.sh
#
# Quiet and quick when both are present; otherwise installs them with apt-get (as root, or
# through sudo), running `apt-get update` only when the first install attempt fails.
set -euo pipefail

log() { printf '[browser] %s\n' "$*" >&2; }
die() { printf '[browser] error: %s\n' "$*" >&2; exit 1; }

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
[ ${#missing[@]} -eq 0 ] && exit 0

command -v apt-get >/dev/null 2>&1 \
  || die "missing ${missing[*]} and no apt-get here: install Chromium and its chromedriver"
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || die "missing ${missing[*]}: run as root, or install sudo"
  SUDO=(sudo)
fi

install() {
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

log "installing ${missing[*]} with apt-get"
if ! install; then
  log "apt-get install failed; updating the package lists and trying again"
  "${SUDO[@]}" apt-get update -qq >/dev/null
  install || die "could not install ${missing[*]}"
fi
command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 \
  || die "${missing[*]} installed, but chromium or chromedriver is still not on PATH"
log "installed: $(chromium --version 2>/dev/null | head -n1); $(chromedriver --version | head -n1)"
