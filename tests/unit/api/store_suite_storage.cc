// The store suite's tests of snapshots in the object store (StoredSnapshotRecord) and the chunk
// sweep: run against each Store implementation like the rest of store_suite.cc.
#include <gtest/gtest.h>

#include <atomic>
#include <latch>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "store_suite.h"

namespace moat::api::store {
namespace {

StoredSnapshotRecord Stored(const std::string& key, int64_t created, const std::string& owner = "o",
                            const std::string& kind = "paused",
                            const std::string& state = "local-only",
                            const std::string& host = "h1") {
  StoredSnapshotRecord r;
  r.key = key;
  r.kind = kind;
  r.owner_id = owner;
  r.team_id = "t";
  r.host_id = host;
  r.state = state;
  r.created_at_ms = created;
  return r;
}

// The record's state, or "" when there is none (or it cannot be read).
std::string StateOf(Store& store, const std::string& key) {
  auto r = store.GetStoredSnapshot(key);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() && r->has_value() ? (*r)->state : "";
}

std::vector<std::string> Keys(const Result<std::vector<StoredSnapshotRecord>>& list) {
  std::vector<std::string> out;
  EXPECT_TRUE(list.ok()) << list.status().ToString();
  if (!list.ok()) return out;
  for (const auto& r : list.value()) out.push_back(r.key);
  return out;
}

TEST_F(StoreSuite, KeepsAStoredSnapshotByKeyWithEveryField) {
  StoredSnapshotRecord r = Stored("snap_A-1", 100, "sbx1", "named", "uploaded", "h2");
  r.team_id = "team1";
  r.bytes = 1 << 20;
  r.nonzero_bytes = 4096;
  r.upload_started_at_ms = 110;
  r.uploaded_at_ms = 120;
  r.attempts = 2;
  r.last_error = "timed out";
  ASSERT_TRUE(store_->InsertStoredSnapshot(r).ok());
  auto got = store_->GetStoredSnapshot("snap_A-1");
  ASSERT_TRUE(got.ok() && got->has_value()) << got.status().ToString();
  const StoredSnapshotRecord& g = **got;
  EXPECT_EQ(g.key, "snap_A-1");
  EXPECT_EQ(g.kind, "named");
  EXPECT_EQ(g.owner_id, "sbx1");
  EXPECT_EQ(g.team_id, "team1");
  EXPECT_EQ(g.host_id, "h2");
  EXPECT_EQ(g.state, "uploaded");
  EXPECT_EQ(g.bytes, 1 << 20);
  EXPECT_EQ(g.nonzero_bytes, 4096);
  EXPECT_EQ(g.created_at_ms, 100);
  EXPECT_EQ(g.upload_started_at_ms, 110);
  EXPECT_EQ(g.uploaded_at_ms, 120);
  EXPECT_EQ(g.attempts, 2);
  EXPECT_EQ(g.last_error, "timed out");
  auto none = store_->GetStoredSnapshot("nobody");
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
}

TEST_F(StoreSuite, RefusesAStoredSnapshotWithAKeyInUseOrABadKeyKindOrState) {
  ASSERT_TRUE(store_->InsertStoredSnapshot(Stored("k1", 1)).ok());
  Status again = store_->InsertStoredSnapshot(Stored("k1", 2, "other"));
  EXPECT_EQ(again.code(), ErrorCode::kAlreadyExists) << again.ToString();
  EXPECT_EQ((*store_->GetStoredSnapshot("k1"))->owner_id, "o") << "the first record stays";

  for (const std::string& key : {std::string(), std::string(65, 'a'), std::string("a/b"),
                                 std::string("a.b"), std::string("a b"), std::string("é")}) {
    Status s = store_->InsertStoredSnapshot(Stored(key, 1));
    EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument) << "key \"" << key << "\"";
    EXPECT_NE(s.message().find("key"), std::string::npos) << s.ToString();
  }
  EXPECT_TRUE(store_->InsertStoredSnapshot(Stored(std::string(64, 'z'), 1)).ok())
      << "64 characters is the most";
  Status kind = store_->InsertStoredSnapshot(Stored("k2", 1, "o", "snapshot"));
  EXPECT_EQ(kind.code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(kind.message().find("kind"), std::string::npos) << kind.ToString();
  Status state = store_->InsertStoredSnapshot(Stored("k2", 1, "o", "fork", "gone"));
  EXPECT_EQ(state.code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(state.message().find("state"), std::string::npos) << state.ToString();
  EXPECT_FALSE(store_->GetStoredSnapshot("k2")->has_value()) << "nothing written";
  for (const char* k : {"paused", "named", "fork", "template"}) {
    EXPECT_TRUE(store_->InsertStoredSnapshot(Stored(std::string("kind-") + k, 1, "o", k)).ok())
        << k;
  }
  for (const char* s : {"local-only", "uploading", "uploaded", "deleting"}) {
    EXPECT_TRUE(
        store_->InsertStoredSnapshot(Stored(std::string("state-") + s, 1, "o", "fork", s)).ok())
        << s;
  }
}

TEST_F(StoreSuite, TheLatestStoredSnapshotOfAnOwnerIsItsNewestThatIsNotDeleting) {
  ASSERT_TRUE(store_->InsertStoredSnapshot(Stored("a", 10)).ok());
  ASSERT_TRUE(store_->InsertStoredSnapshot(Stored("c", 20)).ok());
  ASSERT_TRUE(store_->InsertStoredSnapshot(Stored("b", 20, "o", "paused", "uploaded")).ok());
  ASSERT_TRUE(store_->InsertStoredSnapshot(Stored("d", 30, "o", "paused", "deleting")).ok());
  ASSERT_TRUE(store_->InsertStoredSnapshot(Stored("e", 40, "o", "named")).ok());
  ASSERT_TRUE(store_->InsertStoredSnapshot(Stored("f", 50, "p")).ok());
  auto latest = store_->LatestStoredSnapshot("paused", "o");
  ASSERT_TRUE(latest.ok() && latest->has_value()) << latest.status().ToString();
  EXPECT_EQ((*latest)->key, "c") << "created at the same time as b: the greater key";
  ASSERT_EQ(*store_->MarkStoredSnapshotsDeleting("paused", "o", "a"), 2);
  EXPECT_EQ((**store_->LatestStoredSnapshot("paused", "o")).key, "a");
  EXPECT_EQ((**store_->LatestStoredSnapshot("named", "o")).key, "e");
  EXPECT_FALSE(store_->LatestStoredSnapshot("paused", "nobody")->has_value());
  EXPECT_FALSE(store_->LatestStoredSnapshot("fork", "o")->has_value());
}

TEST_F(StoreSuite, ListsStoredSnapshotsOldestFirstByEveryFilterUpToTheLimit) {
  StoredSnapshotRecord other_team = Stored("e", 50, "p", "fork", "uploaded", "h2");
  other_team.team_id = "t2";
  for (const auto& r :
       {Stored("d", 40, "o", "paused", "uploading", "h2"), Stored("a", 10),
        Stored("c", 30, "o", "named", "uploaded"), Stored("b", 30, "p", "paused"), other_team}) {
    ASSERT_TRUE(store_->InsertStoredSnapshot(r).ok()) << r.key;
  }
  EXPECT_EQ(Keys(store_->ListStoredSnapshots({})),
            (std::vector<std::string>{"a", "b", "c", "d", "e"}));
  EXPECT_EQ(Keys(store_->ListStoredSnapshots({.state = "uploaded"})),
            (std::vector<std::string>{"c", "e"}));
  EXPECT_EQ(Keys(store_->ListStoredSnapshots({.kind = "paused"})),
            (std::vector<std::string>{"a", "b", "d"}));
  EXPECT_EQ(Keys(store_->ListStoredSnapshots({.owner_id = "p"})),
            (std::vector<std::string>{"b", "e"}));
  EXPECT_EQ(Keys(store_->ListStoredSnapshots({.host_id = "h2"})),
            (std::vector<std::string>{"d", "e"}));
  EXPECT_EQ(Keys(store_->ListStoredSnapshots({.team_id = "t2"})), (std::vector<std::string>{"e"}));
  EXPECT_EQ(Keys(store_->ListStoredSnapshots({.kind = "paused", .owner_id = "o", .host_id = "h1"})),
            (std::vector<std::string>{"a"}));
  EXPECT_EQ(Keys(store_->ListStoredSnapshots({.limit = 2})), (std::vector<std::string>{"a", "b"}));
  EXPECT_TRUE(Keys(store_->ListStoredSnapshots({.limit = 0})).empty());
  EXPECT_TRUE(Keys(store_->ListStoredSnapshots({.state = "nothing"})).empty());
}

TEST_F(StoreSuite, AnUploadBeginsOnceAndFinishesWithItsSizes) {
  ASSERT_TRUE(store_->InsertStoredSnapshot(Stored("k", 10)).ok());
  auto began = store_->BeginSnapshotUpload("k", 100, 1000);
  ASSERT_TRUE(began.ok()) << began.status().ToString();
  EXPECT_TRUE(*began);
  auto r = **store_->GetStoredSnapshot("k");
  EXPECT_EQ(r.state, "uploading");
  EXPECT_EQ(r.upload_started_at_ms, 100);
  EXPECT_FALSE(*store_->BeginSnapshotUpload("k", 101, 1000)) << "it is uploading already";
  EXPECT_EQ((**store_->GetStoredSnapshot("k")).upload_started_at_ms, 100);
  EXPECT_FALSE(*store_->BeginSnapshotUpload("nobody", 101, 1000));

  auto finished = store_->FinishSnapshotUpload("k", 200, 8192, 4096);
  ASSERT_TRUE(finished.ok()) << finished.status().ToString();
  EXPECT_TRUE(*finished);
  r = **store_->GetStoredSnapshot("k");
  EXPECT_EQ(r.state, "uploaded");
  EXPECT_EQ(r.uploaded_at_ms, 200);
  EXPECT_EQ(r.bytes, 8192);
  EXPECT_EQ(r.nonzero_bytes, 4096);
  EXPECT_EQ(r.upload_started_at_ms, 100);
  EXPECT_FALSE(*store_->FinishSnapshotUpload("k", 300, 1, 1)) << "it is not uploading";
  EXPECT_EQ((**store_->GetStoredSnapshot("k")).uploaded_at_ms, 200);
  EXPECT_FALSE(*store_->BeginSnapshotUpload("k", 400, 1000)) << "an uploaded snapshot";
  EXPECT_FALSE(*store_->FinishSnapshotUpload("nobody", 300, 1, 1));
}

TEST_F(StoreSuite, AFailedUploadCountsAnAttemptKeepsItsErrorAndCanBeTriedAgain) {
  ASSERT_TRUE(store_->InsertStoredSnapshot(Stored("k", 10)).ok());
  ASSERT_TRUE(*store_->BeginSnapshotUpload("k", 100, 1000));
  ASSERT_TRUE(store_->FailSnapshotUpload("k", "PUT chunks/ab: 503").ok());
  auto r = **store_->GetStoredSnapshot("k");
  EXPECT_EQ(r.state, "local-only");
  EXPECT_EQ(r.attempts, 1);
  EXPECT_EQ(r.last_error, "PUT chunks/ab: 503");

  ASSERT_TRUE(*store_->BeginSnapshotUpload("k", 200, 1000)) << "a later try resumes it";
  EXPECT_EQ((**store_->GetStoredSnapshot("k")).upload_started_at_ms, 200);
  ASSERT_TRUE(store_->FailSnapshotUpload("k", std::string("bad \xff byte\0", 11)).ok());
  r = **store_->GetStoredSnapshot("k");
  EXPECT_EQ(r.attempts, 2);
  EXPECT_EQ(r.last_error, "bad \xEF\xBF\xBD byte") << "kept as valid text";

  ASSERT_TRUE(store_->FailSnapshotUpload("k", "late").ok()) << "not uploading: no change";
  r = **store_->GetStoredSnapshot("k");
  EXPECT_EQ(r.state, "local-only");
  EXPECT_EQ(r.attempts, 2);
  EXPECT_TRUE(store_->FailSnapshotUpload("nobody", "x").ok());
}

TEST_F(StoreSuite, ResettingAHostsUploadsReturnsOnlyItsUploadingRecordsToLocalOnly) {
  ASSERT_TRUE(store_->InsertStoredSnapshot(Stored("a", 1)).ok());
  ASSERT_TRUE(store_->InsertStoredSnapshot(Stored("b", 2)).ok());
  ASSERT_TRUE(store_->InsertStoredSnapshot(Stored("c", 3, "o", "paused", "uploaded")).ok());
  ASSERT_TRUE(store_->InsertStoredSnapshot(Stored("d", 4, "o", "paused", "local-only", "h2")).ok());
  for (const char* k : {"a", "b", "d"}) ASSERT_TRUE(*store_->BeginSnapshotUpload(k, 10, 1000));
  auto reset = store_->ResetSnapshotUploads("h1");
  ASSERT_TRUE(reset.ok()) << reset.status().ToString();
  EXPECT_EQ(*reset, 2);
  EXPECT_EQ(StateOf(*store_, "a"), "local-only");
  EXPECT_EQ(StateOf(*store_, "b"), "local-only");
  EXPECT_EQ(StateOf(*store_, "c"), "uploaded");
  EXPECT_EQ(StateOf(*store_, "d"), "uploading") << "another host's upload";
  EXPECT_EQ((**store_->GetStoredSnapshot("a")).attempts, 0) << "not counted as a failure";
  EXPECT_EQ(*store_->ResetSnapshotUploads("h1"), 0);
  EXPECT_EQ(*store_->ResetSnapshotUploads("nowhere"), 0);
}

TEST_F(StoreSuite, MarksAnOwnersStoredSnapshotsDeletingButTheOneSparedAndDeletesThem) {
  ASSERT_TRUE(store_->InsertStoredSnapshot(Stored("a", 1)).ok());
  ASSERT_TRUE(store_->InsertStoredSnapshot(Stored("b", 2, "o", "paused", "uploaded")).ok());
  ASSERT_TRUE(store_->InsertStoredSnapshot(Stored("c", 3)).ok());
  ASSERT_TRUE(store_->InsertStoredSnapshot(Stored("n", 4, "o", "named")).ok());
  ASSERT_TRUE(store_->InsertStoredSnapshot(Stored("x", 5, "p")).ok());
  ASSERT_TRUE(*store_->BeginSnapshotUpload("a", 10, 1000));

  auto marked = store_->MarkStoredSnapshotsDeleting("paused", "o", "c");
  ASSERT_TRUE(marked.ok()) << marked.status().ToString();
  EXPECT_EQ(*marked, 2);
  EXPECT_EQ(StateOf(*store_, "a"), "deleting");
  EXPECT_EQ(StateOf(*store_, "b"), "deleting");
  EXPECT_EQ(StateOf(*store_, "c"), "local-only") << "spared";
  EXPECT_EQ(StateOf(*store_, "n"), "local-only") << "another kind";
  EXPECT_EQ(StateOf(*store_, "x"), "local-only") << "another owner";
  EXPECT_FALSE(*store_->FinishSnapshotUpload("a", 20, 1, 1))
      << "an upload whose record became deleting does not finish";
  EXPECT_EQ(StateOf(*store_, "a"), "deleting");
  ASSERT_TRUE(store_->FailSnapshotUpload("a", "x").ok());
  EXPECT_EQ(StateOf(*store_, "a"), "deleting") << "nor does it fail back to local-only";
  EXPECT_EQ(*store_->MarkStoredSnapshotsDeleting("paused", "o", "c"), 0) << "counted once";
  EXPECT_EQ(*store_->MarkStoredSnapshotsDeleting("paused", "o"), 1) << "none spared";
  EXPECT_EQ(StateOf(*store_, "c"), "deleting");

  ASSERT_TRUE(store_->DeleteStoredSnapshot("a").ok());
  EXPECT_FALSE(store_->GetStoredSnapshot("a")->has_value());
  EXPECT_TRUE(store_->DeleteStoredSnapshot("a").ok()) << "none is no error";
  EXPECT_EQ(Keys(store_->ListStoredSnapshots({})), (std::vector<std::string>{"b", "c", "n", "x"}));
}

TEST_F(StoreSuite, UploadsAndStorageSweepsExcludeEachOtherUntilOneEndsOrGoesStale) {
  constexpr int64_t kStale = 500;
  ASSERT_TRUE(store_->InsertStoredSnapshot(Stored("a", 1)).ok());
  ASSERT_TRUE(store_->InsertStoredSnapshot(Stored("b", 2)).ok());

  auto swept = store_->BeginStorageSweep(1000, kStale);
  ASSERT_TRUE(swept.ok()) << swept.status().ToString();
  EXPECT_TRUE(*swept);
  EXPECT_FALSE(*store_->BeginStorageSweep(1100, kStale)) << "one sweep at a time";
  EXPECT_FALSE(*store_->BeginSnapshotUpload("a", 1100, kStale)) << "no upload during a sweep";
  EXPECT_EQ(StateOf(*store_, "a"), "local-only");
  ASSERT_TRUE(store_->EndStorageSweep().ok());
  EXPECT_TRUE(*store_->BeginSnapshotUpload("a", 1200, kStale)) << "the sweep has ended";
  ASSERT_TRUE(store_->EndStorageSweep().ok()) << "ending again is harmless";

  EXPECT_FALSE(*store_->BeginStorageSweep(1300, kStale)) << "a is uploading";
  EXPECT_TRUE(*store_->BeginStorageSweep(1200 + kStale, kStale))
      << "an upload begun stale_ms ago is taken for dead";
  EXPECT_FALSE(*store_->BeginSnapshotUpload("b", 1800, kStale));
  EXPECT_TRUE(*store_->BeginSnapshotUpload("b", 1700 + kStale, kStale))
      << "a sweep begun sweep_stale_ms ago is taken for dead";
  EXPECT_FALSE(*store_->BeginStorageSweep(2300, kStale)) << "b is uploading";
  ASSERT_TRUE(*store_->FinishSnapshotUpload("b", 2300, 1, 1));
  ASSERT_TRUE(*store_->FinishSnapshotUpload("a", 2300, 1, 1));
  EXPECT_TRUE(*store_->BeginStorageSweep(2400, kStale)) << "the stale sweep is replaced";
  EXPECT_FALSE(*store_->BeginStorageSweep(2401, kStale));
  ASSERT_TRUE(store_->EndStorageSweep().ok());
  EXPECT_TRUE(*store_->BeginStorageSweep(2402, kStale));

  EXPECT_EQ(store_->BeginStorageSweep(0, kStale).status().code(), ErrorCode::kInvalidArgument)
      << "0 marks no sweep";
}

// On PostgreSQL the callers run on separate connections at once: the lock on the sweep's row is
// all that keeps a sweep from starting beside an upload, or beside another sweep.
TEST_F(StoreSuite, RacingSweepsAndUploadsNeverRunTogether) {
  constexpr int kUploads = 6, kSweeps = 3, kRounds = 15;
  constexpr int64_t kStale = 1 << 30;
  for (int i = 0; i < kUploads; ++i) {
    ASSERT_TRUE(store_->InsertStoredSnapshot(Stored("k" + std::to_string(i), i)).ok());
  }
  for (int round = 0; round < kRounds; ++round) {
    const int64_t now = 1000 + round;
    std::atomic<int> sweeps{0}, uploads{0}, errors{0};
    std::latch go(kUploads + kSweeps);
    std::vector<std::thread> threads;
    threads.reserve(kUploads + kSweeps);
    for (int i = 0; i < kUploads + kSweeps; ++i) {
      threads.emplace_back([&, i] {
        go.arrive_and_wait();
        auto r = i < kUploads ? store_->BeginSnapshotUpload("k" + std::to_string(i), now, kStale)
                              : store_->BeginStorageSweep(now, kStale);
        if (!r.ok()) {
          ++errors;
        } else if (*r) {
          ++(i < kUploads ? uploads : sweeps);
        }
      });
    }
    for (auto& th : threads) th.join();
    EXPECT_EQ(errors.load(), 0);
    EXPECT_LE(sweeps.load(), 1) << "round " << round;
    EXPECT_TRUE(sweeps.load() == 0 || uploads.load() == 0)
        << "round " << round << ": a sweep and " << uploads.load() << " uploads";
    EXPECT_GT(sweeps.load() + uploads.load(), 0) << "round " << round << ": nobody won";
    ASSERT_TRUE(store_->EndStorageSweep().ok());
    ASSERT_EQ(*store_->ResetSnapshotUploads("h1"), uploads.load());
  }
}

}  // namespace
}  // namespace moat::api::store
