#include "agent/sandbox_state.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

namespace moat::agent {
namespace {

using nlohmann::json;

constexpr char kId[] = "abcdefghij0123456789";

// What agents wrote before sandboxes could be re-adopted.
json OlderRecord() {
  return {{"id", kId},
          {"template", "base"},
          {"createdUnixMs", 1700000000000},
          {"vmmPid", 4242},
          {"vmmStartTime", 987},
          {"jailId", 900003},
          {"accel", "tcg"},
          {"vmName", std::string("moat-") + kId}};
}

SandboxState FullRecord() {
  auto s = ParseSandboxState(OlderRecord().dump());
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  SandboxState state = *s;
  state.ready = true;
  state.origin = SnapshotManifest{.kind = "template",
                                  .name = "base",
                                  .source = "base",
                                  .vcpus = 2,
                                  .memory_mib = 256,
                                  .accel = "tcg",
                                  .base_disk = "/data/templates/base/1/rootfs.ext4",
                                  .network = true,
                                  .egress = {{"allowInternetAccess", false}}};
  state.identity =
      GuestIdentity{.env = {{"A", "1"}, {"B", "two words"}}, .user = "root", .workdir = "/srv"};
  state.netns = "moat-10.200.0.20";
  return state;
}

TEST(SandboxState, TheFullRecordRoundTripsAndIsAdoptable) {
  SandboxState in = FullRecord();
  auto out = ParseSandboxState(SerializeSandboxState(in));
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_TRUE(out->adoptable());
  EXPECT_EQ(out->vmm_pid, 4242);
  EXPECT_EQ(out->vmm_start_time, 987u);
  EXPECT_EQ(out->jail_id, 900003u);
  EXPECT_EQ(out->netns, "moat-10.200.0.20");
  ASSERT_TRUE(out->origin.has_value());
  EXPECT_EQ(out->origin->kind, "template");
  EXPECT_EQ(out->origin->vcpus, 2u);
  EXPECT_EQ(out->origin->base_disk, in.origin->base_disk);
  EXPECT_TRUE(out->origin->network);
  EXPECT_EQ(out->origin->egress, in.origin->egress);
  ASSERT_TRUE(out->identity.has_value());
  EXPECT_EQ(out->identity->env, in.identity->env);
  EXPECT_EQ(out->identity->user, "root");
  EXPECT_EQ(out->identity->workdir, "/srv");
}

TEST(SandboxState, AnOlderRecordParsesButIsNotAdoptable) {
  auto s = ParseSandboxState(OlderRecord().dump());
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->vmm_pid, 4242);
  EXPECT_FALSE(s->adoptable());
  // The record written while a sandbox starts (before it is ready) has only those keys.
  EXPECT_EQ(SerializeSandboxState(*s), OlderRecord().dump(2) + "\n");
}

TEST(SandboxState, AClaimedWarmCloneRecordsItsPublicIdBesideTheVmOfItsLocalId) {
  // Started under a local id of its own (its directory and VM), claimed under the create's id.
  SandboxState in = FullRecord();
  in.id = "publicid000000000001";
  in.vm_name = "moat-localid000000000001";
  std::string text = SerializeSandboxState(in);
  json j = json::parse(text);
  EXPECT_EQ(j["id"], "publicid000000000001");
  EXPECT_EQ(j["vmName"], "moat-localid000000000001");
  // No key of its own for the local id: the directory and vmName name it, and older agents'
  // files (where id named the directory) read the same.
  EXPECT_FALSE(j.contains("localId"));
  auto out = ParseSandboxState(text);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ(out->id, "publicid000000000001");
  EXPECT_EQ(out->vm_name, "moat-localid000000000001");
  EXPECT_TRUE(out->adoptable());
}

TEST(SandboxState, ARecordWhosePublicIdIsNotASandboxIdIsRejected) {
  json j = json::parse(SerializeSandboxState(FullRecord()));
  j["id"] = "../../etc";
  auto s = ParseSandboxState(j.dump());
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), ErrorCode::kInvalidArgument);
}

TEST(SandboxState, ANotReadyRecordIsNotAdoptable) {
  SandboxState state = FullRecord();
  state.ready = false;
  auto s = ParseSandboxState(SerializeSandboxState(state));
  ASSERT_TRUE(s.ok());
  EXPECT_FALSE(s->adoptable());
}

TEST(SandboxState, UnknownKeysAndWrongTypesAreRejectedByName) {
  json full = json::parse(SerializeSandboxState(FullRecord()));
  struct Case {
    const char* key;
    json value;
    const char* expect;
  };
  const Case cases[] = {
      {"ready", "yes", "\"ready\" must be a bool"},
      {"netns", 5, "\"netns\" must be a non-empty string"},
      {"netns", "", "\"netns\" must be a non-empty string"},
      {"identity", "root", "\"identity\" must be an object"},
      {"identity", {{"shell", "bash"}}, "unknown key \"identity.shell\""},
      {"identity", {{"env", {{"A", 1}}}}, "\"identity.env.A\" must be a string"},
      {"identity", {{"user", 0}}, "\"identity.user\" must be a string"},
      {"origin", "base", "\"origin\""},
      {"origin", {{"kind", "template"}}, "\"origin\""},
      {"slot", "moat-10.200.0.20", "unknown key \"slot\""},
  };
  for (const auto& c : cases) {
    json j = full;
    j[c.key] = c.value;
    auto s = ParseSandboxState(j.dump());
    ASSERT_FALSE(s.ok()) << c.key << " = " << c.value.dump();
    EXPECT_EQ(s.status().code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(s.status().message().find(c.expect), std::string::npos) << s.status().message();
  }
}

TEST(SnapshotManifest, MemoryFileRoundTripsAndIsAbsentInOlderManifests) {
  SnapshotManifest m{.kind = "paused", .name = kId, .source = "base", .sandbox_id = kId};
  m.memory_file = true;
  auto back = ParseManifest(SerializeManifest(m));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_TRUE(back->memory_file);
  // Written before memory files: the RAM is in the state stream.
  json older = json::parse(SerializeManifest(m));
  older.erase("memoryFile");
  back = ParseManifest(older.dump());
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_FALSE(back->memory_file);
  older["memoryFile"] = "yes";
  EXPECT_NE(ParseManifest(older.dump()).status().message().find("\"memoryFile\" must be a bool"),
            std::string::npos);
}

}  // namespace
}  // namespace moat::agent
