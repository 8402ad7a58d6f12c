#!/usr/bin/env bash
# Builds the `base` template's root filesystem: Debian 12 minbase + guest/rootfs.packages, a user
# `user` (uid 1000), and moat-guest as PID 1. The image is made with `mkfs.ext4 -d` and moat-guest
# is written into it with debugfs, so no loop device or mount is needed.
#
# Two layers, each cached by a hash of its inputs:
#   base  = debootstrap + customisation    -> $MOAT_CACHE_DIR/rootfs-base-<key>/base.ext4
#   final = base + the moat-guest binary   -> OUT_DIR/rootfs.ext4 (rebuilt only when either changes)
#
# usage: build-rootfs.sh OUT_DIR MOAT_GUEST_BINARY
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=$(realpath -m "${1:?usage: build-rootfs.sh OUT_DIR MOAT_GUEST_BINARY}")
guest_bin=$(realpath -m "${2:?usage: build-rootfs.sh OUT_DIR MOAT_GUEST_BINARY}")
cache=${MOAT_CACHE_DIR:-$HOME/.cache/moat}
suite=bookworm
mirror=${MOAT_DEBIAN_MIRROR:-http://deb.debian.org/debian}
size=${MOAT_ROOTFS_SIZE:-2G}

[ -x "$guest_bin" ] || { echo "build-rootfs: $guest_bin is not an executable" >&2; exit 1; }
packages=$(grep -v '^#' "$here/rootfs.packages" | grep -v '^$' | paste -sd, -)
# npm comes from the npm registry (see rootfs.packages), pinned here; this file is in the key.
npm_version=10.9.4
npm_integrity=sha512-OnUG836FwboQIbqtefDNlyR0gTHzIfwRfE3DuiNewBvnMnWEpB0VEXwBlFVgqpNzIgYo/MHh3d2Hel/pszapAA==

base_key=$({
  cat "$here/build-rootfs.sh" "$here/rootfs.packages"
  echo "$suite $mirror $size"
} | sha256sum | cut -c1-16)
base_dir=$cache/rootfs-base-$base_key

if [ -f "$base_dir/base.ext4" ]; then
  echo "build-rootfs: cached base $base_dir"
else
  echo "build-rootfs: debootstrap $suite minbase + $packages (a few minutes)"
  started=$(date +%s)
  mkdir -p "$cache"
  work=$(mktemp -d "$cache/.rootfs-build.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  npm_tgz=$cache/npm-$npm_version.tgz
  if [ ! -f "$npm_tgz" ]; then
    (cd "$work" && npm pack --silent "npm@$npm_version" > /dev/null) \
      || { echo "build-rootfs: npm pack npm@$npm_version failed" >&2; exit 1; }
    mv "$work/npm-$npm_version.tgz" "$npm_tgz"
  fi
  got="sha512-$(openssl dgst -sha512 -binary "$npm_tgz" | base64 -w0)"
  [ "$got" = "$npm_integrity" ] \
    || { echo "build-rootfs: $npm_tgz has integrity $got, want $npm_integrity" >&2; rm -f "$npm_tgz"; exit 1; }
  tree=$work/tree
  debootstrap --variant=minbase --include="$packages" "$suite" "$tree" "$mirror" \
    > "$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }

  # Customise with chroot only: no /proc or /dev is mounted into the tree.
  chroot "$tree" /usr/sbin/useradd --create-home --uid 1000 --user-group --shell /bin/bash user
  echo moat > "$tree/etc/hostname"
  printf '127.0.0.1\tlocalhost\n127.0.1.1\tmoat\n::1\tlocalhost ip6-localhost ip6-loopback\n' \
    > "$tree/etc/hosts"
  : > "$tree/etc/machine-id"
  printf 'nameserver 169.254.0.22\n' > "$tree/etc/resolv.conf"
  printf '/dev/vda / ext4 rw,relatime 0 1\n' > "$tree/etc/fstab"
  # As in E2B's base: `user` may sudo without a password, and pip installs without a venv (Debian
  # marks its python "externally managed"; agents `pip install` as a matter of course).
  printf 'user ALL=(ALL:ALL) NOPASSWD: ALL\n' > "$tree/etc/sudoers.d/user"
  chmod 0440 "$tree/etc/sudoers.d/user"
  printf '[global]\nbreak-system-packages = true\n' > "$tree/etc/pip.conf"
  mkdir -p "$tree/usr/lib/node_modules/npm"
  tar -xzf "$npm_tgz" -C "$tree/usr/lib/node_modules/npm" --strip-components=1 --no-same-owner
  ln -sf ../lib/node_modules/npm/bin/npm-cli.js "$tree/usr/bin/npm"
  ln -sf ../lib/node_modules/npm/bin/npx-cli.js "$tree/usr/bin/npx"
  # moat-guest is PID 1; the binary itself is written into the final image below.
  ln -sf /usr/sbin/moat-guest "$tree/sbin/init"
  # Caches and documentation only make the image (and every sandbox's page cache) bigger.
  rm -rf "$tree"/var/cache/apt/archives/*.deb "$tree"/var/lib/apt/lists/* \
    "$tree"/usr/share/doc/* "$tree"/usr/share/man/* "$tree"/usr/share/info/* \
    "$tree"/var/log/*.log "$tree"/var/cache/debconf/*-old

  mkdir -p "$base_dir.tmp"
  mkfs.ext4 -q -F -L moat-root -E root_owner=0:0 -d "$tree" "$base_dir.tmp/base.ext4" "$size"
  du -sh "$tree" | cut -f1 > "$base_dir.tmp/tree-size"
  echo $(($(date +%s) - started)) > "$base_dir.tmp/bake-seconds"
  rm -rf "$base_dir"
  mv "$base_dir.tmp" "$base_dir"
  echo "build-rootfs: built base $base_dir (content $(cat "$base_dir/tree-size"), $(cat "$base_dir/bake-seconds") s)"
fi

final_key=$({ echo "$base_key"; sha256sum < "$guest_bin"; } | sha256sum | cut -c1-16)
mkdir -p "$out"
if [ -f "$out/rootfs.ext4" ] && [ "$(cat "$out/rootfs.key" 2>/dev/null)" = "$final_key" ]; then
  echo "build-rootfs: $out/rootfs.ext4 is up to date ($final_key)"
  exit 0
fi
tmp=$out/rootfs.ext4.tmp
cp --sparse=always "$base_dir/base.ext4" "$tmp"
debugfs -w "$tmp" -f - > /dev/null <<DEBUGFS
cd /usr/sbin
write $guest_bin moat-guest
sif moat-guest mode 0100755
sif moat-guest uid 0
sif moat-guest gid 0
DEBUGFS
# debugfs reports errors on stdout and still exits 0: check the result instead.
debugfs -R 'stat /usr/sbin/moat-guest' "$tmp" 2>/dev/null | grep -q 'Mode:  0755' \
  || { echo "build-rootfs: writing moat-guest into the image failed" >&2; rm -f "$tmp"; exit 1; }
mv "$tmp" "$out/rootfs.ext4"
echo "$final_key" > "$out/rootfs.key"
echo "build-rootfs: wrote $out/rootfs.ext4 ($final_key)"
