#!/bin/sh
# Install a kit's Pi files on the Pi, as root, from a clone of PopKit:
#   sudo deploy/install-kit.sh FOLDER [--source WHEEL_OR_CLONE] [--find-links WHEELS] [--root DIR]
# FOLDER is the pi/ folder `popkit kit provision` wrote. The same as `sudo popkit kit install FOLDER`,
# for a Pi where PopKit is not installed yet: it runs with Debian's python3 (standard library only),
# makes /opt/popkit/venv with this clone (or --source) when it is missing, and changes nothing
# when run again. docs/pi-install.md
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
command -v python3 >/dev/null 2>&1 || { echo "install-kit: python3 is missing (apt install python3 python3-venv)" >&2; exit 2; }
PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" exec python3 -m popkit.kitinstall --source "$repo" "$@"
