#!/usr/bin/env bash
# Refreshes .ci/constraints.txt, the lock of tested versions that .ci/install.sh installs from.
# Run it on purpose (a new dependency, a security release), then run the tests and commit the
# lock with the change: never edit the lock by hand.
#
# It resolves lwmkit's dependencies with all extras the install uses in a throwaway venv with a
# current pip (`pip install --dry-run --report`: nothing is built or installed), and writes every
# resolved distribution pinned with ==. Markers (decord on x86_64 only) stay in pyproject.toml:
# a constraint for a package that a platform does not need is simply unused there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
EXTRAS="${LWMKIT_LOCK_EXTRAS:-dev,qa,hf}"  # every extra a user may install, so each resolves from the lock
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
"$PY" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$tmp/venv/bin/python" -m pip install -q --disable-pip-version-check --dry-run --ignore-installed \
  -c .ci/lock-inputs.txt --report "$tmp/report.json" ".[$EXTRAS]"
"$tmp/venv/bin/python" - "$tmp/report.json" "$EXTRAS" "$("$PY" -c 'import platform; print(platform.python_version(), platform.machine())')" <<'PYEOF'
import json, sys
report = json.load(open(sys.argv[1]))
# a local label (torch's "+cpu") is dropped: "==2.13.0" admits the local build and PyPI's release alike
pins = sorted({(i["metadata"]["name"].lower(), i["metadata"]["version"].split("+")[0]) for i in report["install"]
               if i["metadata"]["name"].lower() != "lwmkit"})
header = [
    "# The lock of tested versions: .ci/install.sh installs lwmkit with `-c .ci/constraints.txt`.",
    f"# Made by .ci/lock.sh (extras: {sys.argv[2]}; resolved on Python {sys.argv[3]}); do not edit by hand.",
]
with open(".ci/constraints.txt", "w") as f:
    f.write("\n".join(header + [f"{n}=={v}" for n, v in pins]) + "\n")
print(f"wrote .ci/constraints.txt: {len(pins)} pins")
PYEOF
