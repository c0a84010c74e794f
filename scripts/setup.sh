#!/usr/bin/env bash
# Install everything EdgeBox and its tests need on a Debian machine (as root), then the venv.
# Idempotent: packages already present are not fetched again.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(mosquitto ffmpeg fonts-dejavu-core python3 python3-venv python3-dev gcc openssl
  ca-certificates systemd hostapd dnsmasq-base nftables openssh-client chromium util-linux e2fsprogs
  postgresql gstreamer1.0-rtsp python3-gst-1.0 gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base
  gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly gstreamer1.0-plugins-bad)
VENV=${EDGEBOX_VENV:-.venv}

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get -o DPkg::Lock::Timeout=900 update -qq
  $SUDO apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Node and npm run tus-js-client in tests/test_tus_js_client.py; a Node already on PATH (any
# source) is used as it is.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  echo "setup: installing nodejs npm" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get -o DPkg::Lock::Timeout=900 update -qq
  $SUDO apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
if [ ! -f tests/js/node_modules/.package-lock.json ] \
  || ! cmp -s tests/js/package-lock.json tests/js/node_modules/.edgebox-lock; then
  (cd tests/js && npm ci --no-audit --no-fund --loglevel=error >&2 && cp package-lock.json node_modules/.edgebox-lock)
fi
# The broker is started by the tests on free ports; a packaged instance on 1883 is not needed.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet mosquitto 2>/dev/null; then
  systemctl stop mosquitto || true
fi

PYTHON=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
set +o pipefail  # pip's status is read from PIPESTATUS; grep only drops a noisy line
"$VENV/bin/python" -m pip install -q -e ".[test,bench${EDGEBOX_EXTRAS:+,$EDGEBOX_EXTRAS}]" 2>&1 \
  | { grep -v "^WARNING: Location" >&2 || true; }
pip_status=${PIPESTATUS[0]}
set -o pipefail
[ "$pip_status" -eq 0 ] || { echo "setup: pip install failed ($pip_status)" >&2; exit 1; }
"$VENV/bin/python" -c "import edgebox, flask, flask_babel, cryptography, paho.mqtt, playwright, \
swiftclient, boto3, psycopg, hypothesis, schemathesis" \
  || { echo "setup: the venv is incomplete" >&2; exit 1; }
# The UI message catalogs, compiled for the editable install (the wheel build compiles its own).
PYBABEL="$VENV/bin/pybabel" bash scripts/translations.sh compile
