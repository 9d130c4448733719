#!/usr/bin/env bash
# Installs the Debian packages a make target needs, when they are missing.
#
#   scripts/system_deps.sh PACKAGE=WITNESS ...
#
# WITNESS shows that PACKAGE is installed: an absolute path the package ships, or a command it provides.
# As root with apt-get, the missing packages are installed; otherwise this prints the line to run and exits 1.
# APT_GET names the apt client (tests point it elsewhere).
set -euo pipefail
apt_get=${APT_GET:-apt-get}
missing=()
for spec in "$@"; do
    package=${spec%%=*}
    witness=${spec#*=}
    if [[ $witness == /* ]]; then
        [[ -e $witness ]] && continue
    else
        command -v "$witness" >/dev/null 2>&1 && continue
    fi
    missing+=("$package")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

if [[ $(id -u) -eq 0 ]] && command -v "$apt_get" >/dev/null 2>&1; then
    echo "installing Debian packages: ${missing[*]}"
    "$apt_get" update -qq
    DEBIAN_FRONTEND=noninteractive "$apt_get" install -y -qq "${missing[@]}" >/dev/null
    exit 0
fi
echo "missing system packages: ${missing[*]}" >&2
echo "install them, then run make again:  sudo apt-get install ${missing[*]}" >&2
exit 1
