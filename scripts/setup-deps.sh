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
  # the snapshot store's S3 client (libcurl) and `moatd memfs` (FUSE 3)
  libcurl4-openssl-dev libfuse3-dev fuse3
  # the compatibility suite and its runner (npm comes with nodejs where nodejs is NodeSource's;
  # on stock Debian add the `npm` package)
  nodejs curl python3 chromium
  # the networking tests' HTTPS server makes its self-signed certificate with it
  openssl
  # the VMM and disk tools
  qemu-system-x86 qemu-utils e2fsprogs
  # the guest image: kernel source and its build tools, debootstrap
  linux-source-6.1 bc bison flex libelf-dev cpio xz-utils debootstrap
  # host networking (network slots: ip, nft) and process tools used by tests
  iproute2 nftables procps curl
  # PostgreSQL: libpq for the fleet's store; the server for the tests, which start private
  # instances of their own (tests/support/postgres_server.h) on free loopback ports. The `main`
  # cluster the package may create and start is never used.
  postgresql-15 libpq-dev
  # custom templates from OCI images (docs/templates.md): pull, unpack; the tests' local
  # registry holds an image they make themselves (a static busybox is its whole userland)
  skopeo umoci docker-registry busybox-static
)

# QEMU: moat needs 8.2 or later (memory files shared by many VMs are opened read-only:
# docs/jail.md); 10.0 is the tested version. Debian 13 ships it; on Debian 12 it comes from
# bookworm-backports, with an apt pin that takes only QEMU's own packages (and the seabios they
# need) from there — no library comes from backports.
qemu_packages=(qemu-system-x86 qemu-system-common qemu-system-data qemu-system-gui qemu-utils
  qemu-block-extra seabios)
qemu_min=1:8.2
codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
qemu_ok() {
  local v
  v=$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null) || return 1
  [ -n "$v" ] && dpkg --compare-versions "$v" ge "$qemu_min"
}
backports_source=/etc/apt/sources.list.d/moat-backports.sources
backports_pin=/etc/apt/preferences.d/moat-qemu
if [ "$codename" = bookworm ] && ! qemu_ok; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup-deps: QEMU >= 8.2 is needed (Debian 12 has 7.2); run as root to install 10.0 from bookworm-backports" >&2
    exit 1
  fi
  if [ ! -f "$backports_source" ] && ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    cat >"$backports_source" <<'SRC'
# Added by moat's scripts/setup-deps.sh: QEMU 10.0 for Debian 12 (pinned in
# /etc/apt/preferences.d/moat-qemu; nothing else is taken from backports).
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  fi
  cat >"$backports_pin" <<PIN
# Added by moat's scripts/setup-deps.sh: QEMU (and the seabios it needs) from bookworm-backports.
Package: ${qemu_packages[*]}
Pin: release n=bookworm-backports
Pin-Priority: 990
PIN
fi

missing=()
for p in "${packages[@]}"; do
  case "$p" in '#'*) continue ;; esac
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$p")
  fi
done

# An installed QEMU older than the minimum counts as missing (an upgrade, through the pin).
if ! qemu_ok; then
  for q in qemu-system-x86 qemu-utils; do
    case " ${missing[*]} " in *" $q "*) ;; *) missing+=("$q") ;; esac
  done
fi

if [ "${#missing[@]}" -eq 0 ]; then
  echo "setup-deps: all ${#packages[@]} packages present ($(dpkg-query -W -f='qemu ${Version}' qemu-system-x86))"
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
if ! qemu_ok; then
  echo "setup-deps: QEMU is still older than 8.2 ($(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null)); moat needs 8.2 or later" >&2
  exit 1
fi
echo "setup-deps: done ($(dpkg-query -W -f='qemu ${Version}' qemu-system-x86))"
