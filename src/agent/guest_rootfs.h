// From a plain root filesystem tree (an unpacked OCI image, oci_image.h) to a guest disk that
// boots as a moat sandbox: moat-guest installed as the kernel's init, what it and the E2B
// clients expect (the `user` account, /home/user, mount points, hostname, resolver), and a raw
// ext4 image made from the tree with `mkfs.ext4 -d` (no mount, no loop device).
#pragma once

#include <cstdint>
#include <string>

#include "common/status.h"

namespace moat::agent {

// Where the guest kernel starts moat-guest (vmm/qemu/command_line.h: init=/usr/sbin/moat-guest).
inline constexpr char kGuestAgentPath[] = "/usr/sbin/moat-guest";

// Makes the tree at `rootfs_dir` bootable, without running anything from it:
// - moat-guest, copied out of `base_rootfs_image` (the base template's ext4 image) with
//   debugfs, at /usr/sbin/moat-guest (0755, root);
// - /proc /sys /dev /run /tmp /root /etc present (moat-guest mounts over the first five);
// - the `user` account when missing: uid and gid 1000 (or the next free ones when an image
//   account holds 1000), home /home/user (0750, its own; /etc/skel's files copied), shell
//   /bin/bash if the image has one, else /bin/sh; in /etc/passwd and /etc/group (created when
//   missing) and /etc/shadow and /etc/gshadow when present; passwordless sudo through
//   /etc/sudoers.d/user, as in E2B's images;
// - /etc/hostname, /etc/hosts and /etc/resolv.conf as the base image has them.
// The tree is hostile: no write follows a symlink in it out of it (rooted_dir.h); a symlink in
// the way of a needed directory is replaced.
Status PrepareGuestRootfs(const std::string& rootfs_dir, const std::string& base_rootfs_image);

// Writes `image_path` (which must not exist; removed again on failure): a sparse raw ext4 file
// system holding the tree, owners, modes, hard links and xattrs as they are, labelled
// moat-root. Its size: the tree's (4 KiB blocks) plus 20 % and 64 MiB of headroom plus
// `min_free_mib` (no blocks reserved for root, so all of it is usable by any user), rounded up
// to a MiB, at least 256 MiB; inodes for every entry of the tree with a quarter to spare.
Status MakeExt4Image(const std::string& rootfs_dir, const std::string& image_path,
                     uint64_t min_free_mib);

}  // namespace moat::agent
