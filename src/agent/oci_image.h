// Pulling an OCI image (E2B's `fromImage`) into a plain root filesystem tree: skopeo copies it
// from its registry into an OCI layout in a scratch directory, umoci unpacks the layers (as
// root: owners, modes, device nodes and whiteouts as the image has them), and the image's
// config (Env, User, WorkingDir) is read from the layout. guest_rootfs.h turns the tree into a
// bootable guest disk.
#pragma once

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"

namespace moat::agent {

struct RegistryAuth {
  std::string username;
  std::string password;
};

struct OciPullOptions {
  // As Docker takes it: "python:3.12", "ghcr.io/org/app@sha256:…", "127.0.0.1:5000/x:y".
  std::string ref;
  // Absent: the registry is accessed anonymously (never with credentials of this host).
  std::optional<RegistryAuth> auth;
  // Scratch space (the OCI layout, skopeo's temporary files, the auth file); it must exist, and
  // the caller removes it afterwards. It should be private to root (0700): the auth file is 0600
  // but the layout holds the image as pulled.
  std::string work_dir;
  // One line per phase ("pulling …", "copying blob …", "unpacked 12 MB …"); may be empty.
  std::function<void(const std::string& line)> progress;
  // For the pull and the unpack, each.
  std::chrono::milliseconds timeout{std::chrono::minutes(30)};
};

// What the image's config says about how its processes run (Entrypoint and Cmd are not used).
struct OciImageConfig {
  std::vector<std::pair<std::string, std::string>> env;  // Env, in order
  std::string user;                                      // User, as written ("1000:1000", "app")
  std::string workdir;                                   // WorkingDir
  // The manifest digest in the layout ("sha256:…"): the registry's, unless skopeo had to convert
  // a Docker-format manifest to OCI.
  std::string digest;
};

// A reference made explicit, as Docker reads it.
struct ImageReference {
  std::string registry;    // "docker.io", "ghcr.io", "127.0.0.1:5000", "[::1]:5000"
  std::string repository;  // "library/python", "org/app"
  std::string tag;         // "latest" when neither tag nor digest was given
  std::string digest;      // "sha256:…" or empty
  // Loopback registries are reached over plain HTTP (as Docker does by default).
  bool insecure = false;
  // "docker.io/library/python:3.12", "ghcr.io/org/app@sha256:…".
  std::string ToString() const;
};

// Docker's rules: without a registry host (a first component with a '.' or ':', or
// "localhost") the image is on Docker Hub, and a single name there is under "library/".
Result<ImageReference> ParseImageReference(std::string_view ref);

// Reads the config of the image tagged `tag` in the OCI layout at `layout_dir` (index.json →
// manifest → config blob). The layout's files are untrusted input: sizes are bounded, digests
// checked for shape before they name a file, and bad JSON is an error, never an exception.
Result<OciImageConfig> ReadOciImageConfig(const std::string& layout_dir, const std::string& tag);

// Pulls options.ref and unpacks it into `rootfs_dir` (created if missing; it must be empty).
// Errors name the image and carry the tool's message: "pulling image
// 127.0.0.1:5000/x:y: manifest unknown" (NotFound), an unknown registry host (Unavailable),
// refused credentials (PermissionDenied). Needs root (the tree keeps the image's owners). On
// failure `rootfs_dir` may hold part of the tree: the caller removes it with the scratch dir.
Result<OciImageConfig> PullOciImage(const OciPullOptions& options, const std::string& rootfs_dir);

}  // namespace moat::agent
