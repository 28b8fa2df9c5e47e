#!/usr/bin/env bash
# Installs everything lwmkit needs on a fresh Debian/Ubuntu machine: ffmpeg from apt, then
# lwmkit (editable) with its test tools and the embedded QA model's server.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v ffmpeg >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq ffmpeg >/dev/null
fi
# llama-cpp-python (the qa extra) builds llama.cpp from source the first time (~8 min on
# 2 cores); pip caches the wheel, so later installs take seconds.
python3 -m pip install -q --disable-pip-version-check -e '.[dev,qa]'
