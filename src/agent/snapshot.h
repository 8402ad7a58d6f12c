// Snapshots a sandbox is restored from, and their manifests on disk.
//
// Two kinds, one shape:
//  - a template snapshot (DATA_DIR/templates/<name>/<build>/): guest RAM in a memory file that
//    every clone maps privately (clean pages shared across sandboxes), ~50 KB of device state;
//  - a sandbox's snapshot (a paused sandbox, DATA_DIR/snapshots/<id>/, a named snapshot, a fork's
//    transient one): the same shape — RAM in a memory file (`memoryFile`), written by
//    SaveMemorySnapshot, mapped privately by whatever restores from it. Snapshots written before
//    memory files (no `memoryFile`) carry the RAM inside the state stream and restore into fresh
//    private memory.
// Both carry the disk as a raw read-only base plus a qcow2 overlay that each restore copies.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "agent/guest_identity.h"
#include "common/status.h"

namespace moat::agent {

struct SnapshotManifest {
  std::string kind;    // "template" | "paused" | "named"
  std::string name;    // template name, sandbox id (paused) or snapshot id (named)
  std::string source;  // the template a sandbox came from (for reporting)
  unsigned vcpus = 1;
  uint64_t memory_mib = 256;
  std::string accel;      // a snapshot restores only under the accelerator that made it
  std::string base_disk;  // absolute path of the raw base image
  int64_t created_unix_ms = 0;
  // Paused sandboxes: what the sandbox had, so that resume gives it back.
  std::string sandbox_id;
  // Does the VM have a NIC? The device state holds it: a snapshot with one restores only
  // with a network slot, one without only without.
  bool network = false;
  // The egress policy in force when a sandbox was paused or snapshotted (src/net/
  // egress_policy.h ToJson); null: the default. A resumed sandbox gets it back, a fork inherits it.
  nlohmann::json egress = nullptr;
  // The guest `network` op the platform last applied to the snapshotted guest
  // (net::NetworkSlot::GuestConfigJson): the bake's, or the slot's of the sandbox snapshotted.
  // Every slot presents the same guest config, so a VM restored into a slot whose config equals
  // this finds its network exactly as it needs it and skips the op. (Whatever a user changed
  // inside the guest stays changed, like everything else a resumed guest had.) Null (no NIC,
  // older snapshots) or different (the agent's --dns changed since): the op is sent.
  nlohmann::json guest_network = nullptr;
  // Paused and named snapshots: guest RAM is in the `mem` file (not in the state stream).
  // Templates always have one.
  bool memory_file = false;
  // Where the RAM file is when it is not the snapshot directory's `mem`: a snapshot restored from
  // the object store on another host maps its RAM from `moatd memfs` (absolute path; only in
  // manifests a host writes for itself, never uploaded). Empty: `mem`.
  std::string memory_path;
  // The QEMU that saved it ("10.0.2"); empty in manifests written before moat recorded it (QEMU
  // 7.2). Device state moves between QEMU versions only as far as QEMU allows (microvm is not
  // a versioned machine type): a restore that fails across versions says so, and keeps it.
  std::string qemu_version;
  // Paused sandboxes: only the disk was kept (E2B's pause with `memory: false`); there is no
  // device state or RAM, and a resume boots the VM afresh from the disk.
  bool filesystem_only = false;
  // Paused sandboxes: the identity the sandbox was given, for a resume that boots.
  std::optional<GuestIdentity> identity;
};

// Files inside a snapshot directory.
struct SnapshotFiles {
  explicit SnapshotFiles(const std::string& dir)
      : dir(dir),
        manifest(dir + "/manifest.json"),
        state(dir + "/state"),
        memory(dir + "/mem"),
        overlay(dir + "/disk.qcow2") {}
  std::string dir, manifest, state, memory, overlay;
};

std::string SerializeManifest(const SnapshotManifest& m);
Result<SnapshotManifest> ParseManifest(const std::string& text);
// The same as a JSON object (state.json keeps a sandbox's origin this way).
nlohmann::json ManifestToJson(const SnapshotManifest& m);
Result<SnapshotManifest> ManifestFromJson(const nlohmann::json& j);
Result<SnapshotManifest> ReadManifest(const std::string& dir);
// A snapshot is complete only once its manifest exists: it is written last, atomically.
Status WriteManifest(const std::string& dir, const SnapshotManifest& m);

// Copies `from` to `to` (a new file), sharing blocks where the filesystem can (reflink), else a
// sparse-aware copy. For qcow2 overlays: a few hundred KB to a few MB.
Status CopyFile(const std::string& from, const std::string& to);

}  // namespace moat::agent
