#include "api/lifecycle.h"

#include <array>
#include <utility>

namespace moat::api {
namespace {

using S = SandboxState;

// Every allowed change, and nothing else. Why each exists:
constexpr std::pair<S, S> kTransitions[] = {
    {S::kCreating, S::kRunning},  // its host started it
    {S::kCreating, S::kKilling},  // the start failed, or a kill came first
    {S::kCreating, S::kLost},     // its host was lost while starting it
    {S::kRunning, S::kPausing},   // pause, or auto-pause at its end time
    {S::kRunning, S::kKilling},   // kill, or its end time
    {S::kRunning, S::kError},     // its guest broke the protocol
    {S::kRunning, S::kLost},      // its host was lost
    {S::kPausing, S::kPaused},    // the snapshot is complete and the VM gone
    {S::kPausing, S::kRunning},   // the pause failed: the VM runs on as it was
    {S::kPausing, S::kKilling},   // the VM died while pausing
    {S::kPausing, S::kLost},      // its host was lost
    {S::kPaused, S::kResuming},   // resume (or a connect)
    {S::kPaused, S::kKilling},    // kill: its snapshot is deleted
    {S::kResuming, S::kRunning},  // restored
    {S::kResuming, S::kPaused},   // the restore failed: the snapshot is kept
    {S::kResuming, S::kKilling},  // killed while resuming
    {S::kResuming, S::kLost},     // its host was lost
    {S::kKilling, S::kKilled},    // its host released everything
    {S::kKilling, S::kLost},      // its host was lost before it confirmed
    {S::kError, S::kKilling},     // kill, or its end time
    {S::kError, S::kLost},        // its host was lost
    {S::kLost, S::kKilling},      // removing what is left of it
    {S::kLost, S::kKilled},       // nothing was left to release
};

}  // namespace

std::string_view SandboxStateName(SandboxState s) {
  switch (s) {
    case S::kCreating: return "creating";
    case S::kRunning: return "running";
    case S::kPausing: return "pausing";
    case S::kPaused: return "paused";
    case S::kResuming: return "resuming";
    case S::kKilling: return "killing";
    case S::kKilled: return "killed";
    case S::kLost: return "lost";
    case S::kError: return "error";
  }
  return "unknown";
}

std::optional<SandboxState> ParseSandboxState(std::string_view name) {
  for (S s : kAllSandboxStates) {
    if (SandboxStateName(s) == name) return s;
  }
  return std::nullopt;
}

bool CanTransition(SandboxState from, SandboxState to) {
  for (const auto& [f, t] : kTransitions) {
    if (f == from && t == to) return true;
  }
  return false;
}

Status CheckTransition(const std::string& sandbox_id, SandboxState from, SandboxState to) {
  if (CanTransition(from, to)) return Status::Ok();
  return InvalidArgument("sandbox \"" + sandbox_id + "\": no transition from " +
                         std::string(SandboxStateName(from)) + " to " +
                         std::string(SandboxStateName(to)));
}

bool HoldsResources(SandboxState s) {
  switch (s) {
    case S::kCreating:
    case S::kRunning:
    case S::kPausing:
    case S::kResuming:
    case S::kKilling:
    case S::kError: return true;
    case S::kPaused:
    case S::kKilled:
    case S::kLost: return false;
  }
  return false;
}

std::optional<std::string_view> WireState(SandboxState s) {
  switch (s) {
    case S::kCreating:
    case S::kRunning:
    case S::kPausing: return "running";
    case S::kError: return "error";  // a guest that broke the protocol (issue 12): shown as is
    case S::kPaused:
    case S::kResuming: return "paused";
    case S::kKilling:
    case S::kKilled:
    case S::kLost: return std::nullopt;
  }
  return std::nullopt;
}

std::vector<SandboxState> StatesShownAs(std::string_view wire_state) {
  std::vector<SandboxState> out;
  for (S s : kAllSandboxStates) {
    if (WireState(s) == wire_state) out.push_back(s);
  }
  return out;
}

}  // namespace moat::api
