#!/usr/bin/env bash
# Installs keygate's build, test and benchmark dependencies from Debian 12 packages.
# Skips apt entirely when everything is already installed (fast repeat runs).
set -euo pipefail

packages=(
  build-essential cmake pkg-config
  liburing-dev libsimdjson-dev librocksdb-dev libxxhash-dev libssl-dev
  libbenchmark-dev libgtest-dev libgmock-dev
  node-llhttp libtomlplusplus-dev
  curl python3 wrk nginx-light procps iproute2
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update
$sudo apt-get install -y --no-install-recommends "${packages[@]}"
