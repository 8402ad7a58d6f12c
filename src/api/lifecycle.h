// The sandbox lifecycle: every state a sandbox record can be in, and the one table of which
// changes are allowed. The store changes a record's state only by compare-and-set on (state,
// host, generation) and refuses a change this table does not allow (store/store.h); the control
// plane and the host agents go through it, so no second notion of "state" exists anywhere.
//
//   creating ─▶ running ─▶ pausing ─▶ paused ─▶ resuming ─▶ running
//      │           │  ▲        │                  │
//      │           │  └────────┘ (pause failed)   └─▶ paused (resume failed: snapshot kept)
//      │           ├─▶ error (its guest broke the protocol; the VM still runs)
//      │           └─▶ lost (its host stopped heartbeating: shared/FLEET.md §4)
//      └─▶ killing ─▶ killed        (every live state can be killed)
//
// Records in `killed` are deleted once the host has released the VM (history keeps them later).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace moat::api {

enum class SandboxState : uint8_t {
  kCreating,  // recorded and placed; its host is starting it
  kRunning,
  kPausing,   // its host is writing the snapshot
  kPaused,    // only its snapshot exists
  kResuming,  // its host is restoring the snapshot
  kKilling,   // its host is releasing it
  kKilled,    // gone (terminal)
  kLost,      // its host was declared lost while it ran (terminal but for removal)
  kError,     // its guest broke the protocol: inspectable and killable, nothing else
};

inline constexpr SandboxState kAllSandboxStates[] = {
    SandboxState::kCreating, SandboxState::kRunning,  SandboxState::kPausing,
    SandboxState::kPaused,   SandboxState::kResuming, SandboxState::kKilling,
    SandboxState::kKilled,   SandboxState::kLost,     SandboxState::kError,
};

// "creating", "running", …: the stored and logged name.
std::string_view SandboxStateName(SandboxState s);
std::optional<SandboxState> ParseSandboxState(std::string_view name);

// May a record go from `from` to `to`? Staying in a state is not a transition (false).
bool CanTransition(SandboxState from, SandboxState to);

// Ok if allowed; else InvalidArgument naming the sandbox and both states.
Status CheckTransition(const std::string& sandbox_id, SandboxState from, SandboxState to);

// States whose VM exists or is being made on its host: they hold the host's reservation and
// count against the team's quota (creating, running, pausing, resuming, killing, error).
bool HoldsResources(SandboxState s);

// The E2B wire knows "running" and "paused", and moat adds "error" (a sandbox whose guest broke
// the channel protocol: inspectable and killable, its envd refused): what a client is shown for
// a state, or nullopt for one that clients see as gone (killing, killed, lost: 404).
std::optional<std::string_view> WireState(SandboxState s);

// The states a wire state name stands for ("running" → creating, running, pausing; "error" → error;
// "paused" → paused, resuming); empty for another name.
std::vector<SandboxState> StatesShownAs(std::string_view wire_state);

}  // namespace moat::api
