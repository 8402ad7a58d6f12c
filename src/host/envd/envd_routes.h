// envd's routes (E2B-WIRE §3, §6, §7) over a sandbox's guest channel: the host side of the data
// plane (LocalDataPlane registers them).
#pragma once

#include <nlohmann/json.hpp>

#include "api/http/router.h"
#include "channel/protocol.h"
#include "host/envd/envd_call.h"

namespace moat::api::routes {

// envd (E2B-WIRE §3, §6, §7).
void RegisterEnvdFileRoutes(http::Router& router, EnvdContext& ctx);
void RegisterEnvdProcessRoutes(http::Router& router, EnvdContext& ctx);
void RegisterEnvdFilesystemRoutes(http::Router& router, EnvdContext& ctx);

// The guest's file entry (api/guest-channel.md `stat`) as envd's EntryInfo (E2B-WIRE §7).
// `resolved_links`: the guest resolves symlinks (proto::kFeatureEnvd06); an older one's links
// show as links, with their text as the target.
nlohmann::json EntryInfo(const channel::proto::FileEntry& guest_entry, bool resolved_links);

}  // namespace moat::api::routes
