// S3Server: a private S3-compatible server for one test (shared/FLEET.md §5): s3rver from npm,
// pinned by tests/support/s3rver/package-lock.json and installed there on first use (`npm ci`,
// offline cache first). It listens on a free loopback port, keeps its objects in a temp dir
// under /tmp and is a child of the test (its own process group, SIGKILL when the thread that
// started it exits: start it from the test's main thread). s3rver accepts any SigV4 signature
// made with the access key S3RVER (it checks the key, not the signature: sigv4_test checks
// ours against AWS's published vectors).
#pragma once

#include <string>

#include "common/child_process.h"
#include "common/status.h"
#include "storage/s3_object_store.h"

namespace moat::test_support {

class S3Server {
 public:
  explicit S3Server(std::string bucket = "moat-test");
  // Kills the server (its process group) and removes the temp dir, whatever state it is in.
  ~S3Server();
  S3Server(const S3Server&) = delete;
  S3Server& operator=(const S3Server&) = delete;

  // The first call installs s3rver if need be, makes the temp dir, starts the server on a free
  // port and creates the bucket (S3ObjectStore::CreateBucket); later calls start it again on
  // the same port and data. Returns once it answers. Fails saying so when node or npm is
  // missing, or the install fails.
  Status Start();
  // SIGKILL: the server is gone at once, as after a crash; its objects stay on disk.
  void Kill();
  bool running();

  // http://127.0.0.1:<port>
  std::string endpoint() const;
  int port() const { return port_; }
  const std::string& bucket() const { return bucket_; }
  // The temp dir: data/ (the objects) and server.log.
  const std::string& dir() const { return dir_; }

  // A config for a store in this server's bucket under `prefix` ("" for none), with s3rver's
  // credentials and short timeouts.
  storage::S3Config Config(const std::string& prefix = "") const;

 private:
  Status StartOnce();

  std::string bucket_;
  std::string dir_;
  int port_ = 0;
  bool bucket_made_ = false;
  ChildProcess server_;
};

// Where s3rver lives in the source tree (tests/support/s3rver), installing it there first
// (npm ci --offline, else npm ci) when node_modules lacks it. Serialised across processes by a
// lock file, so concurrent tests install once. The path of its bin/s3rver.js.
Result<std::string> EnsureS3rverInstalled();

}  // namespace moat::test_support
