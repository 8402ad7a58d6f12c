#!/usr/bin/env bash
# Builds a built-in template's root filesystem: Debian 12 minbase + guest/rootfs.packages, a user
# `user` (uid 1000), and moat-guest as PID 1. The image is made with `mkfs.ext4 -d` and moat-guest
# is written into it with debugfs, so no loop device or mount is needed.
#
# VARIANT `base` (the default) is the `base` template, OUT_DIR/rootfs.ext4. VARIANT
# `code-interpreter` is the `code-interpreter-v1` template, OUT_DIR/code-interpreter.ext4: the
# base plus guest/code-interpreter/packages, with matplotlib's font cache made at build time, and
# the files under guest/code-interpreter/files (the interpreter server, its kernels and IPython
# set-up; docs/code-interpreter.md) written in beside moat-guest.
#
# Two layers, each cached by a hash of its inputs:
#   base  = debootstrap + customisation      -> $MOAT_CACHE_DIR/rootfs-<variant>-<key>/base.ext4
#   final = base + moat-guest (+ the files)  -> OUT_DIR/<image> (rebuilt only when an input changes)
#
# usage: build-rootfs.sh OUT_DIR MOAT_GUEST_BINARY [VARIANT]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=$(realpath -m "${1:?usage: build-rootfs.sh OUT_DIR MOAT_GUEST_BINARY}")
guest_bin=$(realpath -m "${2:?usage: build-rootfs.sh OUT_DIR MOAT_GUEST_BINARY}")
cache=${MOAT_CACHE_DIR:-$HOME/.cache/moat}
suite=bookworm
mirror=${MOAT_DEBIAN_MIRROR:-http://deb.debian.org/debian}
variant=${3:-base}
case $variant in
  base)
    image=rootfs.ext4 size=${MOAT_ROOTFS_SIZE:-2G} extra_packages_file=
    cache_name=rootfs-base files_dir= ;;
  code-interpreter)
    image=code-interpreter.ext4 size=${MOAT_INTERPRETER_ROOTFS_SIZE:-4G}
    extra_packages_file=$here/code-interpreter/packages
    cache_name=rootfs-code-interpreter files_dir=$here/code-interpreter/files ;;
  *) echo "build-rootfs: unknown variant '$variant' (base, code-interpreter)" >&2; exit 2 ;;
esac

[ -x "$guest_bin" ] || { echo "build-rootfs: $guest_bin is not an executable" >&2; exit 1; }
packages=$(grep -v '^#' "$here/rootfs.packages" | grep -v '^$' | paste -sd, -)
extra_packages=
if [ -n "$extra_packages_file" ]; then
  extra_packages=$(grep -v '^#' "$extra_packages_file" | grep -v '^$' | paste -sd' ' -)
fi
# npm comes from the npm registry (see rootfs.packages), pinned here; this file is in the key.
npm_version=10.9.4
npm_integrity=sha512-OnUG836FwboQIbqtefDNlyR0gTHzIfwRfE3DuiNewBvnMnWEpB0VEXwBlFVgqpNzIgYo/MHh3d2Hel/pszapAA==

base_key=$({
  cat "$here/build-rootfs.sh" "$here/rootfs.packages" ${extra_packages_file:+"$extra_packages_file"}
  echo "$suite $mirror $size $variant"
} | sha256sum | cut -c1-16)
base_dir=$cache/$cache_name-$base_key

if [ -f "$base_dir/base.ext4" ]; then
  echo "build-rootfs: cached base $base_dir"
else
  echo "build-rootfs: debootstrap $suite minbase + $packages${extra_packages:+, then $extra_packages} (a few minutes)"
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
  if [ -n "$extra_packages" ]; then
    # By apt in the tree rather than by debootstrap's --include, whose configure order fails on
    # this set (python3-zmq); Debian's own maintainer scripts are all that runs.
    chroot "$tree" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
      sh -c "apt-get update -q && apt-get install -y -q --no-install-recommends $extra_packages" \
      > "$work/apt.log" 2>&1 || { tail -n 30 "$work/apt.log" >&2; exit 1; }
  fi

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
  if [ "$variant" = code-interpreter ]; then
    # matplotlib builds its font list on first import (seconds under TCG, in every sandbox):
    # made once here, by Debian's own matplotlib, where the kernels (root) will look for it.
    chroot "$tree" /usr/bin/env -i HOME=/root MPLBACKEND=Agg MPLCONFIGDIR=/root/.config/matplotlib \
      /usr/bin/python3 -c 'import matplotlib.font_manager' \
      || { echo "build-rootfs: making matplotlib's font cache failed" >&2; exit 1; }
  fi
  # Every SDK command is a login shell (`bash -l -c`), and Debian's /etc/profile runs `$(id -u)`
  # (a fork and exec of id(1), ~12 ms of the ~25 ms a command costs in the guest under TCG).
  # bash knows its effective uid as EUID; sh (dash) does not and still asks id(1).
  sed -i 's/"\$(id -u)"/"${EUID:-$(id -u)}"/g' "$tree/etc/profile"
  if grep -q '"$(id -u)"' "$tree/etc/profile" || ! grep -q 'EUID:-' "$tree/etc/profile"; then
    echo "build-rootfs: /etc/profile does not read as expected (its id -u test)" >&2; exit 1
  fi
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

final_key=$({
  echo "$base_key"
  sha256sum < "$guest_bin"
  if [ -n "$files_dir" ]; then (cd "$files_dir" && find . -type f | LC_ALL=C sort | xargs sha256sum); fi
} | sha256sum | cut -c1-16)
mkdir -p "$out"
key_file=$out/${image%.ext4}.key
if [ -f "$out/$image" ] && [ "$(cat "$key_file" 2>/dev/null)" = "$final_key" ]; then
  echo "build-rootfs: $out/$image is up to date ($final_key)"
  exit 0
fi
tmp=$out/$image.tmp
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
if [ -n "$files_dir" ]; then
  # Every directory and file under files_dir, root-owned: directories 0755, files 0644 (0755
  # where executable here). debugfs's mkdir of a directory the image has already fails harmlessly.
  {
    (cd "$files_dir" && find . -mindepth 1 -type d | LC_ALL=C sort) | while read -r d; do
      echo "mkdir ${d#.}"
      echo "sif ${d#.} uid 0"
      echo "sif ${d#.} gid 0"
    done
    (cd "$files_dir" && find . -type f | LC_ALL=C sort) | while read -r f; do
      mode=0100644
      [ -x "$files_dir/$f" ] && mode=0100755
      echo "rm ${f#.}"
      echo "write $files_dir/${f#./} ${f#.}"
      echo "sif ${f#.} mode $mode"
      echo "sif ${f#.} uid 0"
      echo "sif ${f#.} gid 0"
    done
  } | debugfs -w "$tmp" -f - > /dev/null 2>&1
  (cd "$files_dir" && find . -type f) | while read -r f; do
    want=$(stat -c %s "$files_dir/$f")
    got=$(debugfs -R "stat ${f#.}" "$tmp" 2>/dev/null | sed -n 's/.*Size: \([0-9]*\).*/\1/p' | head -1)
    [ "$got" = "$want" ] || { echo "build-rootfs: writing ${f#.} into the image failed" >&2; rm -f "$tmp"; exit 1; }
  done
fi
mv "$tmp" "$out/$image"
echo "$final_key" > "$key_file"
echo "build-rootfs: wrote $out/$image ($final_key)"
