#!/usr/bin/env bash
# Installs what only the tests need, only when missing: Debian's Chromium and chromedriver (browser
# tests), Firefox ESR, WebKitGTK's WebDriver, Xvfb and xauth (the page in Gecko and WebKit), Node.js,
# playwright-core and puppeteer-core (end-to-end tests; neither downloads a browser), TypeScript (the
# examples type-checked against the package's declarations) and Vite (the package in a bundled page).
set -euo pipefail
cd "$(dirname "$0")/.."
apt_pkgs=()
command -v chromium >/dev/null || apt_pkgs+=(chromium)
command -v chromedriver >/dev/null || apt_pkgs+=(chromium-driver)
command -v node >/dev/null || apt_pkgs+=(nodejs)
command -v npm >/dev/null || apt_pkgs+=(npm)
command -v firefox-esr >/dev/null || command -v firefox >/dev/null || apt_pkgs+=(firefox-esr)
command -v WebKitWebDriver >/dev/null || apt_pkgs+=(webkit2gtk-driver)
command -v xvfb-run >/dev/null || apt_pkgs+=(xvfb)
command -v xauth >/dev/null || apt_pkgs+=(xauth)
if [ ${#apt_pkgs[@]} -gt 0 ]; then
  echo "installing ${apt_pkgs[*]} with apt (once)"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${apt_pkgs[@]}"
fi
if [ ! -f node_modules/playwright-core/package.json ] || [ ! -f node_modules/puppeteer-core/package.json ] ||
  [ ! -f node_modules/typescript/package.json ] || [ ! -f node_modules/vite/package.json ] ||
  [ ! -f node_modules/webpack/package.json ] ||
  [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi
