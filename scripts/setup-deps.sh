#!/usr/bin/env bash
# Installs the Debian packages moat needs to build, test and run, when any is missing.
# Nothing is downloaded from anywhere but Debian's (and, for the compatibility tests, npm's)
# registries. A second run with everything present does nothing and takes well under a second.
set -euo pipefail

packages=(
  # toolchain and analysis
  build-essential cmake ninja-build pkg-config clang libclang-rt-14-dev clang-format clang-tidy
  # libraries
  libgtest-dev libgmock-dev libbenchmark-dev nlohmann-json3-dev libssl-dev libcli11-dev
  libboost-dev libsqlite3-dev zlib1g-dev
  # the compatibility suite and its runner (npm comes with nodejs where nodejs is NodeSource's;
  # on stock Debian add the `npm` package)
  nodejs curl python3
  # the networking tests' HTTPS server makes its self-signed certificate with it
  openssl
  # the VMM and disk tools
  qemu-system-x86 qemu-utils e2fsprogs
  # the guest image: kernel source and its build tools, debootstrap
  linux-source-6.1 bc bison flex libelf-dev cpio xz-utils debootstrap
  # host networking (network slots: ip, nft) and process tools used by tests
  iproute2 nftables procps curl
)

missing=()
for p in "${packages[@]}"; do
  case "$p" in '#'*) continue ;; esac
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "setup-deps: all ${#packages[@]} packages present"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "setup-deps: missing packages (${missing[*]}); run as root or install them with apt-get" >&2
  exit 1
fi
echo "setup-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup-deps: done"
