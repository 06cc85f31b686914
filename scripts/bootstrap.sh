#!/usr/bin/env bash
# Set up everything radstream needs on a fresh Debian 12 machine, idempotently:
# Debian packages (PostgreSQL, dcmtk, Orthanc, dicom3tools, Chromium, mricron-data: the Colin27
# T1 brain MR and its brain mask, real images for the brain-extraction tests), a project-local
# virtualenv with radstream installed, and the Kafka jars from Maven Central.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(postgresql dcmtk orthanc dicom3tools chromium chromium-driver mricron-data)
PYTHON=${PYTHON:-python3}

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts a system-wide cluster and Orthanc on install; radstream runs its own.
  for svc in postgresql orthanc; do
    $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || $SUDO service "$svc" stop >/dev/null 2>&1 || true
  done
fi

if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.radstream-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "bootstrap: installing radstream and its dependencies into .venv"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e ".[stream,dev]"
  touch "$stamp"
fi

echo "bootstrap: fetching Kafka jars (Maven Central) if missing"
.venv/bin/python -c "from radstream.devenv.kafka import ensure_jars; print('kafka jars:', ensure_jars())"
