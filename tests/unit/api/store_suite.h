// The store test suite's fixture (store_suite.cc and store_suite_storage.cc hold the tests). Each
// test binary that runs the suite defines TestBackend(), which makes a fresh, empty, migrated
// store per test.
#pragma once

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <string>

#include "api/store/store.h"

namespace moat::api::store {

class StoreBackend {
 public:
  virtual ~StoreBackend() = default;
  virtual Result<std::unique_ptr<Store>> Fresh() = 0;
};

StoreBackend& TestBackend();

class StoreSuite : public ::testing::Test {
 protected:
  void SetUp() override;
  void TearDown() override;
  static SandboxRecord Sandbox(const std::string& id, const std::string& team, int64_t started,
                               std::map<std::string, std::string> metadata = {});
  std::unique_ptr<Store> store_;
};

}  // namespace moat::api::store
