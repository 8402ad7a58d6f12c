// The remote manifest: a round trip, and strict decoding of what another host (or anyone who can
// write to the bucket) wrote: each kind of bad input is refused with the field named.
#include "storage/remote_manifest.h"

#include <gtest/gtest.h>

#include <functional>
#include <string>

namespace moat::storage {
namespace {

using json = nlohmann::json;

const std::string kHashA(64, 'a');
const std::string kHashB = std::string(63, '0') + "1";

RemoteManifest Sample() {
  RemoteManifest m;
  m.snapshot_id = "snap_01-X";
  m.kind = "paused";
  m.origin_host = "host-a";
  m.created_unix_ms = 1700000000123;
  m.meta = {{"id", "snap_01-X"}, {"vcpus", 2}, {"env", {{"A", "b"}}}, {"ratio", 0.5}};
  m.files["mem"] = {.size = 3 * kChunkSize, .chunks = {kHashA, std::nullopt, kHashB}};
  m.files["state"] = {.size = 50000, .chunks = {kHashB}};
  m.files["disk.qcow2"] = {.size = 0, .chunks = {}};
  m.files["disk.raw"] = {.size = kChunkSize + 1, .chunks = {std::nullopt, std::nullopt}};
  m.prefetch = {2, 0};
  return m;
}

// The sample's JSON with `edit` applied.
std::string Edited(const std::function<void(json&)>& edit) {
  json doc = json::parse(EncodeRemoteManifest(Sample()));
  edit(doc);
  return doc.dump();
}

// Decoding `text` fails with invalid_argument, and the message names `field`.
void ExpectRejected(const std::string& text, const std::string& field) {
  auto r = DecodeRemoteManifest(text);
  ASSERT_FALSE(r.ok()) << "accepted: " << text.substr(0, 200);
  EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find(field), std::string::npos)
      << "\"" << field << "\" not in: " << r.status().message();
}

TEST(RemoteManifest, RoundTrips) {
  RemoteManifest m = Sample();
  std::string text = EncodeRemoteManifest(m);
  auto back = DecodeRemoteManifest(text);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->version, kRemoteManifestVersion);
  EXPECT_EQ(back->snapshot_id, m.snapshot_id);
  EXPECT_EQ(back->kind, m.kind);
  EXPECT_EQ(back->origin_host, m.origin_host);
  EXPECT_EQ(back->created_unix_ms, m.created_unix_ms);
  EXPECT_EQ(back->meta, m.meta);
  EXPECT_EQ(back->files, m.files);
  EXPECT_EQ(back->prefetch, m.prefetch);
  EXPECT_EQ(EncodeRemoteManifest(*back), text);
}

TEST(RemoteManifest, EncodesChunksAsAListOfHashesAndNulls) {
  json doc = json::parse(EncodeRemoteManifest(Sample()));
  EXPECT_EQ(doc["files"]["mem"]["chunks"], json::array({kHashA, nullptr, kHashB}));
  EXPECT_EQ(doc["files"]["mem"]["size"], 3 * kChunkSize);
  EXPECT_EQ(doc["version"], 1);
}

TEST(RemoteManifest, MinimalManifestDecodes) {
  RemoteManifest m;
  m.snapshot_id = "s";
  m.kind = "template";
  auto back = DecodeRemoteManifest(EncodeRemoteManifest(m));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_TRUE(back->files.empty());
  EXPECT_TRUE(back->prefetch.empty());
  EXPECT_TRUE(back->meta.is_object());
}

TEST(RemoteManifest, KeysAndNames) {
  EXPECT_EQ(ManifestKey("abc"), "snapshots/abc/manifest.json");
  EXPECT_TRUE(IsValidSnapshotKeyId("a-B_9"));
  EXPECT_TRUE(IsValidSnapshotKeyId(std::string(64, 'x')));
  EXPECT_FALSE(IsValidSnapshotKeyId(std::string(65, 'x')));
  EXPECT_FALSE(IsValidSnapshotKeyId(""));
  EXPECT_FALSE(IsValidSnapshotKeyId("a/b"));
  EXPECT_FALSE(IsValidSnapshotKeyId(".."));
  for (const char* name : {"mem", "state", "disk.qcow2", "disk.raw"}) {
    EXPECT_TRUE(IsValidRemoteFileName(name)) << name;
  }
  EXPECT_FALSE(IsValidRemoteFileName("disk"));
  EXPECT_FALSE(IsValidRemoteFileName("../mem"));
}

TEST(RemoteManifest, RejectsTextThatIsNotAManifestObject) {
  ExpectRejected("", "not valid JSON");
  ExpectRejected("{", "not valid JSON");
  ExpectRejected("[]", "not a JSON object");
  ExpectRejected(std::string(100, '[') + std::string(100, ']'), "nested deeper");
  ExpectRejected(std::string(kMaxRemoteManifestBytes + 1, ' '), "over the limit");
}

TEST(RemoteManifest, RejectsAnotherVersion) {
  ExpectRejected(Edited([](json& d) { d["version"] = 2; }), "version");
  ExpectRejected(Edited([](json& d) { d["version"] = "1"; }), "version");
  ExpectRejected(Edited([](json& d) { d["version"] = 1.0; }), "version");
  ExpectRejected(Edited([](json& d) { d.erase("version"); }), "version");
}

TEST(RemoteManifest, RejectsUnknownAndMissingFields) {
  ExpectRejected(Edited([](json& d) { d["extra"] = 1; }), "extra");
  for (const char* field :
       {"snapshot_id", "kind", "origin_host", "created_unix_ms", "meta", "files", "prefetch"}) {
    ExpectRejected(Edited([&](json& d) { d.erase(field); }), field);
  }
}

TEST(RemoteManifest, RejectsBadScalars) {
  ExpectRejected(Edited([](json& d) { d["snapshot_id"] = "a/b"; }), "snapshot_id");
  ExpectRejected(Edited([](json& d) { d["snapshot_id"] = ""; }), "snapshot_id");
  ExpectRejected(Edited([](json& d) { d["snapshot_id"] = 5; }), "snapshot_id");
  ExpectRejected(Edited([](json& d) { d["kind"] = "other"; }), "kind");
  ExpectRejected(Edited([](json& d) { d["origin_host"] = nullptr; }), "origin_host");
  ExpectRejected(Edited([](json& d) { d["origin_host"] = "a\nb"; }), "origin_host");
  ExpectRejected(Edited([](json& d) { d["origin_host"] = std::string(256, 'h'); }), "origin_host");
  ExpectRejected(Edited([](json& d) { d["created_unix_ms"] = -1; }), "created_unix_ms");
  ExpectRejected(Edited([](json& d) { d["created_unix_ms"] = "now"; }), "created_unix_ms");
  ExpectRejected(Edited([](json& d) { d["created_unix_ms"] = uint64_t{1} << 63; }),
                 "created_unix_ms");
}

TEST(RemoteManifest, RejectsMetaThatIsNotAnObject) {
  ExpectRejected(Edited([](json& d) { d["meta"] = json::array(); }), "meta");
  ExpectRejected(Edited([](json& d) { d["meta"] = "x"; }), "meta");
  ExpectRejected(Edited([](json& d) { d["meta"] = nullptr; }), "meta");
}

TEST(RemoteManifest, RejectsBadFiles) {
  ExpectRejected(Edited([](json& d) { d["files"] = json::array(); }), "files");
  ExpectRejected(Edited([](json& d) { d["files"]["../etc"] = d["files"]["state"]; }), "../etc");
  ExpectRejected(Edited([](json& d) { d["files"]["mem"] = 1; }), "files.mem");
  ExpectRejected(Edited([](json& d) { d["files"]["mem"]["x"] = 1; }), "files.mem.\"x\"");
  ExpectRejected(Edited([](json& d) { d["files"]["mem"].erase("size"); }), "files.mem.size");
  ExpectRejected(Edited([](json& d) { d["files"]["mem"].erase("chunks"); }), "files.mem.chunks");
  ExpectRejected(Edited([](json& d) { d["files"]["mem"]["size"] = -5; }), "files.mem.size");
  ExpectRejected(Edited([](json& d) { d["files"]["mem"]["size"] = 1.5; }), "files.mem.size");
  ExpectRejected(Edited([](json& d) { d["files"]["disk.raw"]["size"] = kMaxRemoteFileBytes + 1; }),
                 "files.disk.raw.size");
  ExpectRejected(Edited([](json& d) { d["files"]["mem"]["chunks"] = "x"; }), "files.mem.chunks");
}

TEST(RemoteManifest, RejectsAChunkCountThatDoesNotMatchTheSize) {
  ExpectRejected(Edited([](json& d) { d["files"]["mem"]["chunks"].push_back(nullptr); }),
                 "files.mem.chunks");
  ExpectRejected(Edited([](json& d) { d["files"]["mem"]["size"] = 3 * kChunkSize + 1; }),
                 "files.mem.chunks");
  ExpectRejected(Edited([](json& d) { d["files"]["disk.raw"]["size"] = kChunkSize; }),
                 "files.disk.raw.chunks");
  ExpectRejected(Edited([](json& d) { d["files"]["disk.qcow2"]["size"] = 1; }),
                 "files.disk.qcow2.chunks");
}

TEST(RemoteManifest, RejectsChunkEntriesThatAreNotHashesOrNull) {
  ExpectRejected(Edited([](json& d) { d["files"]["mem"]["chunks"][1] = std::string(64, 'A'); }),
                 "files.mem.chunks[1]");
  ExpectRejected(Edited([](json& d) { d["files"]["mem"]["chunks"][0] = kHashA.substr(1); }),
                 "files.mem.chunks[0]");
  ExpectRejected(Edited([](json& d) { d["files"]["mem"]["chunks"][2] = 7; }),
                 "files.mem.chunks[2]");
  ExpectRejected(Edited([](json& d) { d["files"]["mem"]["chunks"][2] = json::array(); }),
                 "files.mem.chunks[2]");
}

TEST(RemoteManifest, RejectsBadPrefetchIndexes) {
  ExpectRejected(Edited([](json& d) { d["prefetch"] = 1; }), "prefetch");
  ExpectRejected(Edited([](json& d) { d["prefetch"] = {0, 3}; }), "prefetch[1]");
  ExpectRejected(Edited([](json& d) { d["prefetch"] = {1, 2, 1}; }), "prefetch[2]");
  ExpectRejected(Edited([](json& d) { d["prefetch"] = {-1}; }), "prefetch[0]");
  ExpectRejected(Edited([](json& d) { d["prefetch"] = {"0"}; }), "prefetch[0]");
  ExpectRejected(Edited([](json& d) {
                   d["files"].erase("mem");
                   d["prefetch"] = {0};
                 }),
                 "prefetch[0]");
}

TEST(RemoteManifest, QuotesUntrustedNamesInErrors) {
  auto r = DecodeRemoteManifest(Edited([](json& d) { d["files"]["\x01\xc3\xa9"] = 1; }));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("\\x01\\xc3\\xa9"), std::string::npos)
      << r.status().message();
}

}  // namespace
}  // namespace moat::storage
