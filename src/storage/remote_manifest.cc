#include "storage/remote_manifest.h"

#include <algorithm>
#include <array>
#include <limits>
#include <set>
#include <utility>

#include "common/json_depth.h"

namespace moat::storage {
namespace {

using json = nlohmann::json;

// The manifest itself nests four levels (object, files, a file, its chunks); the rest is for
// `meta`, the host's snapshot manifest, which nests a few levels more. Checked before parsing so
// that a hostile text cannot make the parser (or the destructor of what it built) recurse deeply.
constexpr int kMaxDepth = 32;
constexpr size_t kMaxOriginHostBytes = 255;

constexpr std::array<std::string_view, 4> kKinds = {"paused", "named", "fork", "template"};
constexpr std::array<std::string_view, 4> kFileNames = {"mem", "state", "disk.qcow2", "disk.raw"};
constexpr std::array<std::string_view, 8> kTopLevelKeys = {"version",     "snapshot_id",     "kind",
                                                           "origin_host", "created_unix_ms", "meta",
                                                           "files",       "prefetch"};

// Untrusted text in an error message: printable ASCII kept, everything else as \xNN, cut short.
std::string Quote(std::string_view text, size_t max = 64) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out = "\"";
  for (char c : text.substr(0, max)) {
    auto byte = static_cast<unsigned char>(c);
    if (byte >= 0x20 && byte < 0x7f && c != '"' && c != '\\') {
      out.push_back(c);
    } else {
      out += "\\x";
      out.push_back(kHex[byte >> 4]);
      out.push_back(kHex[byte & 0xf]);
    }
  }
  out += text.size() > max ? "\"..." : "\"";
  return out;
}

Status Bad(std::string_view field, std::string_view what) {
  return InvalidArgument("remote manifest: " + std::string(field) + ": " + std::string(what));
}

bool Contains(const auto& set, std::string_view name) {
  return std::find(set.begin(), set.end(), name) != set.end();
}

// An unsigned integer field no larger than `max`.
Result<uint64_t> UnsignedField(const json& value, std::string_view field, uint64_t max) {
  if (!value.is_number_unsigned()) return Bad(field, "not a non-negative integer");
  auto n = value.get<uint64_t>();
  if (n > max) return Bad(field, std::to_string(n) + " is over " + std::to_string(max));
  return n;
}

Result<const json*> Member(const json& object, std::string_view key, std::string_view field) {
  auto it = object.find(key);
  if (it == object.end()) return Bad(field, "missing");
  return &*it;
}

Result<ChunkMap> DecodeChunkMap(const json& value, const std::string& field) {
  if (!value.is_object()) return Bad(field, "not an object");
  for (const auto& item : value.items()) {
    if (item.key() != "size" && item.key() != "chunks") {
      return Bad(field + "." + Quote(item.key()), "unknown field");
    }
  }
  ChunkMap map;
  MOAT_ASSIGN_OR_RETURN(const json* size, Member(value, "size", field + ".size"));
  MOAT_ASSIGN_OR_RETURN(map.size, UnsignedField(*size, field + ".size", kMaxRemoteFileBytes));
  MOAT_ASSIGN_OR_RETURN(const json* chunks, Member(value, "chunks", field + ".chunks"));
  if (!chunks->is_array()) return Bad(field + ".chunks", "not an array");
  const uint64_t expected = (map.size + kChunkSize - 1) / kChunkSize;
  if (chunks->size() != expected) {
    return Bad(field + ".chunks", std::to_string(chunks->size()) + " entries, but a size of " +
                                      std::to_string(map.size) + " bytes is " +
                                      std::to_string(expected) + " chunks");
  }
  map.chunks.reserve(chunks->size());
  for (size_t i = 0; i < chunks->size(); ++i) {
    const json& entry = (*chunks)[i];
    if (entry.is_null()) {
      map.chunks.emplace_back(std::nullopt);
    } else if (entry.is_string() && IsValidChunkHash(entry.get_ref<const std::string&>())) {
      map.chunks.emplace_back(entry.get<std::string>());
    } else {
      return Bad(field + ".chunks[" + std::to_string(i) + "]",
                 "neither null nor 64 lowercase hex digits");
    }
  }
  return map;
}

}  // namespace

bool IsValidSnapshotKeyId(std::string_view id) {
  return !id.empty() && id.size() <= 64 && std::all_of(id.begin(), id.end(), [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
  });
}

bool IsValidRemoteFileName(std::string_view name) {
  return Contains(kFileNames, name);
}

std::string ManifestKey(std::string_view snapshot_id) {
  return "snapshots/" + std::string(snapshot_id) + "/manifest.json";
}

std::string EncodeRemoteManifest(const RemoteManifest& m) {
  json files = json::object();
  for (const auto& [name, map] : m.files) {
    json chunks = json::array();
    for (const auto& hash : map.chunks) {
      chunks.push_back(hash ? json(*hash) : json(nullptr));
    }
    files[name] = {{"size", map.size}, {"chunks", std::move(chunks)}};
  }
  json out = {{"version", m.version},
              {"snapshot_id", m.snapshot_id},
              {"kind", m.kind},
              {"origin_host", m.origin_host},
              {"created_unix_ms", m.created_unix_ms},
              {"meta", m.meta},
              {"files", std::move(files)},
              {"prefetch", m.prefetch}};
  // One value per line: a manifest is mostly chunk hashes, and a diff of two then reads well.
  // `replace`: a string that is not UTF-8 must not make encoding throw.
  return out.dump(1, ' ', false, json::error_handler_t::replace) + "\n";
}

Result<RemoteManifest> DecodeRemoteManifest(std::string_view text) {
  if (text.size() > kMaxRemoteManifestBytes) {
    return InvalidArgument("remote manifest: " + std::to_string(text.size()) +
                           " bytes, over the limit of " + std::to_string(kMaxRemoteManifestBytes));
  }
  if (JsonDepth(text, kMaxDepth) < 0) {
    return InvalidArgument("remote manifest: JSON nested deeper than " + std::to_string(kMaxDepth) +
                           " levels");
  }
  json doc;
  try {
    doc = json::parse(text);
  } catch (const json::exception& e) {  // its text says where, and quotes what it last read
    return InvalidArgument("remote manifest: not valid JSON (" + Quote(e.what(), 200) + ")");
  }
  if (!doc.is_object()) return InvalidArgument("remote manifest: not a JSON object");

  // The version first: a manifest of another version is reported as that, not as its fields.
  RemoteManifest m;
  MOAT_ASSIGN_OR_RETURN(const json* version, Member(doc, "version", "version"));
  if (!version->is_number_unsigned() ||
      version->get<uint64_t>() != static_cast<uint64_t>(kRemoteManifestVersion)) {
    return Bad("version",
               "unsupported (" +
                   Quote(version->dump(-1, ' ', false, json::error_handler_t::replace), 32) +
                   "; this build reads " + std::to_string(kRemoteManifestVersion) + ")");
  }
  for (const auto& item : doc.items()) {
    if (!Contains(kTopLevelKeys, item.key())) return Bad(Quote(item.key()), "unknown field");
  }

  MOAT_ASSIGN_OR_RETURN(const json* id, Member(doc, "snapshot_id", "snapshot_id"));
  if (!id->is_string() || !IsValidSnapshotKeyId(id->get_ref<const std::string&>())) {
    return Bad("snapshot_id", "not 1 to 64 of [A-Za-z0-9_-]");
  }
  m.snapshot_id = id->get<std::string>();

  MOAT_ASSIGN_OR_RETURN(const json* kind, Member(doc, "kind", "kind"));
  if (!kind->is_string() || !Contains(kKinds, kind->get_ref<const std::string&>())) {
    return Bad("kind", "not one of paused, named, fork, template");
  }
  m.kind = kind->get<std::string>();

  MOAT_ASSIGN_OR_RETURN(const json* origin, Member(doc, "origin_host", "origin_host"));
  if (!origin->is_string()) return Bad("origin_host", "not a string");
  const auto& origin_text = origin->get_ref<const std::string&>();
  if (origin_text.size() > kMaxOriginHostBytes ||
      std::any_of(origin_text.begin(), origin_text.end(), [](char c) {
        auto byte = static_cast<unsigned char>(c);
        return byte < 0x20 || byte == 0x7f;
      })) {
    return Bad("origin_host", "over 255 bytes, or has control characters");
  }
  m.origin_host = origin_text;

  MOAT_ASSIGN_OR_RETURN(const json* created, Member(doc, "created_unix_ms", "created_unix_ms"));
  MOAT_ASSIGN_OR_RETURN(uint64_t created_ms,
                        UnsignedField(*created, "created_unix_ms",
                                      static_cast<uint64_t>(std::numeric_limits<int64_t>::max())));
  m.created_unix_ms = static_cast<int64_t>(created_ms);

  MOAT_ASSIGN_OR_RETURN(const json* meta, Member(doc, "meta", "meta"));
  if (!meta->is_object()) return Bad("meta", "not an object");
  m.meta = *meta;

  MOAT_ASSIGN_OR_RETURN(const json* files, Member(doc, "files", "files"));
  if (!files->is_object()) return Bad("files", "not an object");
  for (const auto& item : files->items()) {
    const std::string& name = item.key();
    if (!IsValidRemoteFileName(name)) {
      return Bad("files." + Quote(name), "not one of mem, state, disk.qcow2, disk.raw");
    }
    MOAT_ASSIGN_OR_RETURN(auto map, DecodeChunkMap(item.value(), "files." + name));
    m.files.emplace(name, std::move(map));
  }

  MOAT_ASSIGN_OR_RETURN(const json* prefetch, Member(doc, "prefetch", "prefetch"));
  if (!prefetch->is_array()) return Bad("prefetch", "not an array");
  auto mem = m.files.find("mem");
  const uint64_t mem_chunks = mem == m.files.end() ? 0 : mem->second.chunks.size();
  std::set<uint32_t> seen;
  m.prefetch.reserve(prefetch->size());
  for (size_t i = 0; i < prefetch->size(); ++i) {
    const json& entry = (*prefetch)[i];
    const std::string field = "prefetch[" + std::to_string(i) + "]";
    if (!entry.is_number_unsigned() || entry.get<uint64_t>() >= mem_chunks) {
      return Bad(field, "not a chunk index of files.mem (it has " + std::to_string(mem_chunks) +
                            " chunks)");
    }
    auto index = static_cast<uint32_t>(entry.get<uint64_t>());
    if (!seen.insert(index).second) return Bad(field, std::to_string(index) + " repeated");
    m.prefetch.push_back(index);
  }
  return m;
}

}  // namespace moat::storage
