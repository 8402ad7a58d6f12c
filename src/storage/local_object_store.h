// LocalObjectStore: ObjectStore over a directory (each key a file under it, written to a
// temporary name and renamed, so a reader never sees half an object). For tests that need a
// store without a server, and for a store on a filesystem every host mounts.
#pragma once

#include <memory>
#include <string>

#include "storage/object_store.h"

namespace moat::storage {

class LocalObjectStore : public ObjectStore {
 public:
  // Creates `dir` if it does not exist.
  static Result<std::unique_ptr<LocalObjectStore>> Make(const std::string& dir);

  Status Put(const std::string& key, std::string_view body) override;
  Result<std::string> Get(const std::string& key) override;
  Result<std::string> GetRange(const std::string& key, uint64_t offset, uint64_t length) override;
  Result<std::optional<uint64_t>> Head(const std::string& key) override;
  Status Delete(const std::string& key) override;
  Result<std::vector<ObjectInfo>> List(const std::string& prefix) override;
  std::string Describe() const override;

 private:
  explicit LocalObjectStore(std::string dir) : dir_(std::move(dir)) {}
  std::string dir_;
};

}  // namespace moat::storage
