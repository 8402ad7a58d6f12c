#!/usr/bin/env bash
# Builds the guest kernel (an uncompressed vmlinux with a PVH entry) from Debian's
# linux-source-6.1: tinyconfig + guest/kernel.config. The result is cached under
# $MOAT_CACHE_DIR (default ~/.cache/moat) by a hash of every input, so a second run only copies.
#
# usage: build-kernel.sh OUT_DIR      (writes OUT_DIR/vmlinux and OUT_DIR/kernel.config.full)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=$(realpath -m "${1:?usage: build-kernel.sh OUT_DIR}")  # absolute: the build cd-s away
cache=${MOAT_CACHE_DIR:-$HOME/.cache/moat}
src_tar=/usr/src/linux-source-6.1.tar.xz
fragment=$here/kernel.config

[ -f "$src_tar" ] || { echo "build-kernel: $src_tar missing (apt-get install linux-source-6.1)" >&2; exit 1; }

# Bump when the build steps below change what is built (this file's other edits do not rebuild).
recipe_version=1
key=$({
  cat "$fragment"
  echo "recipe $recipe_version"
  dpkg-query -W -f='${Version}\n' linux-source-6.1
  gcc --version | head -n 1
} | sha256sum | cut -c1-16)
dest=$cache/kernel-$key

if [ -f "$dest/vmlinux" ]; then
  echo "build-kernel: cached $dest"
else
  echo "build-kernel: building kernel $key (takes ~6 min on 2 cores)"
  mkdir -p "$cache"
  work=$(mktemp -d "$cache/.kernel-build.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  tar -xf "$src_tar" -C "$work"
  cd "$work"/linux-source-6.1
  make -s tinyconfig >/dev/null
  KCONFIG_CONFIG=.config scripts/kconfig/merge_config.sh -m -O . .config "$fragment" >/dev/null
  make -s olddefconfig
  # Every option of the fragment must have taken effect; a typo or an unmet dependency
  # would otherwise silently give a kernel without it.
  bad=0
  while IFS= read -r line; do
    case "$line" in ''|'#'*) continue ;; esac
    opt=${line%%=*}; val=${line#*=}
    if [ "$val" = n ]; then
      if grep -q "^$opt=" .config; then echo "build-kernel: $opt should be off" >&2; bad=1; fi
    elif ! grep -qx "$opt=$val" .config; then
      echo "build-kernel: $opt=$val did not take effect (got: $(grep "^$opt=" .config || echo unset))" >&2
      bad=1
    fi
  done < "$fragment"
  [ "$bad" = 0 ] || exit 1
  make -s -j"$(nproc)" vmlinux
  mkdir -p "$dest.tmp"
  cp vmlinux "$dest.tmp/vmlinux"
  cp .config "$dest.tmp/kernel.config.full"
  rm -rf "$dest"
  mv "$dest.tmp" "$dest"
  echo "build-kernel: built $dest ($(du -h "$dest/vmlinux" | cut -f1))"
fi

mkdir -p "$out"
cp "$dest/vmlinux" "$out/vmlinux.tmp" && mv "$out/vmlinux.tmp" "$out/vmlinux"
cp "$dest/kernel.config.full" "$out/kernel.config.full"
echo "$key" > "$out/vmlinux.key"
