#!/usr/bin/env bash
# The README's install command: on a fresh Debian/Ubuntu machine, installs what lwmkit needs from
# apt (ffmpeg; a C/C++ compiler and cmake for llama.cpp's source build; python3-venv where the
# distribution splits it off), makes the project's virtual environment .venv/ with the first
# Python >= 3.11 it finds, and installs lwmkit (editable) with its test tools and the embedded QA
# model's server from the lock of tested versions (.ci/constraints.txt, made by .ci/lock.sh).
# Running it again is harmless and takes seconds: a venv that already holds this lock and this
# pyproject.toml is left as it is.  Use it with:  bash .ci/install.sh && . .venv/bin/activate
#
# Environment: PYTHON=/path/to/python3.x picks the interpreter; LWMKIT_VENV (default .venv) the
# venv folder; LWMKIT_EXTRAS (default dev,qa) the extras.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${LWMKIT_VENV:-.venv}"
EXTRAS="${LWMKIT_EXTRAS:-dev,qa}"
say() { echo "[install] $*"; }

ok_python() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; }
find_python() {
  local c
  for c in ${PYTHON:-} python3 python3.14 python3.13 python3.12 python3.11; do
    if command -v "$c" >/dev/null 2>&1 && ok_python "$c"; then command -v "$c"; return; fi
  done
  return 1
}
PY="$(find_python)" || { echo "[install] error: no Python >= 3.11 found (on Ubuntu 22.04: apt-get install python3.11 python3.11-venv; or set PYTHON=/path/to/python3.x)" >&2; exit 2; }

# --- system packages: only what is missing, so a machine that has them needs no root ---------------
venv_ok() { "$PY" -c 'import ensurepip, venv' >/dev/null 2>&1; }
missing=()
command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
{ command -v cc >/dev/null 2>&1 && command -v c++ >/dev/null 2>&1 && command -v make >/dev/null 2>&1; } || missing+=(build-essential)
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
[ -x "$VENV/bin/python" ] || venv_ok || missing+=("python3-venv")
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "[install] error: missing ${missing[*]}; install them (apt-get install ${missing[*]}) or run as root" >&2; exit 2; }
    SUDO="sudo"
  fi
  if [[ " ${missing[*]} " == *" python3-venv "* ]]; then
    # Debian/Ubuntu name the versioned package after the interpreter (python3.12-venv on Ubuntu 24.04)
    ver="$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
    missing+=("python${ver}-venv")
  fi
  say "apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- the project venv ------------------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
  say "creating $VENV with $PY ($("$PY" --version 2>&1))"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
stamp="$VENV/.lwmkit-installed"
want="$(cat .ci/constraints.txt pyproject.toml | sha256sum | cut -c1-64) $EXTRAS"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VPY" -c 'import lwmkit' >/dev/null 2>&1; then
  say "$VENV is up to date (lock and pyproject unchanged)"
  exit 0
fi
# The interpreter's bundled pip may be old (pip 23 cannot resolve this set): the lock pins pip too.
export PIP_DISABLE_PIP_VERSION_CHECK=1
"$VPY" -m pip install -q -c .ci/constraints.txt --upgrade pip
# llama-cpp-python (the qa extra) builds llama.cpp from source the first time (~8 min on 2 cores);
# pip caches the wheel, so later installs take seconds.
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}"
say "installing lwmkit[$EXTRAS] from the lock into $VENV"
# (setuptools warns about editable installs of a package whose folders sit in the working directory:
# known and handled, see README "Layout and contracts")
PYTHONWARNINGS="ignore::UserWarning" "$VPY" -m pip install -q -c .ci/constraints.txt -e ".[$EXTRAS]"
echo "$want" > "$stamp"
say "done: activate with  . $VENV/bin/activate"
