#include "api/lifecycle.h"

#include <gtest/gtest.h>

#include <set>
#include <string>

namespace moat::api {
namespace {

std::string Name(SandboxState s) {
  return std::string(SandboxStateName(s));
}

// The lifecycle as the design states it (shared/FLEET.md §4, docs/architecture.md), written out
// here independently of the table in lifecycle.cc: every pair not listed must be refused.
const std::set<std::string> kAllowed = {
    "creating>running", "creating>killing", "creating>lost",  "running>pausing",  "running>killing",
    "running>error",    "running>lost",     "pausing>paused", "pausing>running",  "pausing>killing",
    "pausing>lost",     "paused>resuming",  "paused>killing", "resuming>running", "resuming>paused",
    "resuming>killing", "resuming>lost",    "killing>killed", "killing>lost",     "error>killing",
    "error>lost",       "lost>killing",     "lost>killed",
};

TEST(Lifecycle, AllowsExactlyTheDesignedTransitions) {
  int allowed = 0;
  for (SandboxState from : kAllSandboxStates) {
    for (SandboxState to : kAllSandboxStates) {
      std::string pair = Name(from) + ">" + Name(to);
      bool expected = kAllowed.count(pair) != 0;
      EXPECT_EQ(CanTransition(from, to), expected) << pair;
      Status checked = CheckTransition("sbx", from, to);
      EXPECT_EQ(checked.ok(), expected) << pair;
      if (!expected) {
        EXPECT_EQ(checked.code(), ErrorCode::kInvalidArgument);
        EXPECT_NE(checked.message().find("from " + Name(from) + " to " + Name(to)),
                  std::string::npos)
            << checked.message();
      }
      allowed += expected ? 1 : 0;
    }
  }
  EXPECT_EQ(allowed, static_cast<int>(kAllowed.size())) << "a listed pair names no state";
}

TEST(Lifecycle, KilledIsTerminalAndEveryLiveStateCanBeKilled) {
  for (SandboxState s : kAllSandboxStates) {
    EXPECT_FALSE(CanTransition(SandboxState::kKilled, s)) << Name(s);
    EXPECT_FALSE(CanTransition(s, s)) << "staying is no transition: " << Name(s);
    bool live = s != SandboxState::kKilled && s != SandboxState::kKilling;
    EXPECT_EQ(CanTransition(s, SandboxState::kKilling), live) << Name(s);
  }
}

TEST(Lifecycle, NamesRoundTripAndUnknownNamesAreRefused) {
  std::set<std::string> names;
  for (SandboxState s : kAllSandboxStates) {
    names.insert(Name(s));
    EXPECT_EQ(ParseSandboxState(SandboxStateName(s)), s);
  }
  EXPECT_EQ(names.size(), 9u);
  EXPECT_EQ(names, (std::set<std::string>{"creating", "running", "pausing", "paused", "resuming",
                                          "killing", "killed", "lost", "error"}));
  EXPECT_FALSE(ParseSandboxState("Running").has_value());
  EXPECT_FALSE(ParseSandboxState("").has_value());
}

TEST(Lifecycle, ClientsSeeRunningOrPausedOrNothing) {
  EXPECT_EQ(WireState(SandboxState::kCreating), "running");
  EXPECT_EQ(WireState(SandboxState::kError), "error");
  EXPECT_EQ(WireState(SandboxState::kPausing), "running");
  EXPECT_EQ(WireState(SandboxState::kResuming), "paused");
  EXPECT_EQ(WireState(SandboxState::kPaused), "paused");
  EXPECT_FALSE(WireState(SandboxState::kKilling));
  EXPECT_FALSE(WireState(SandboxState::kKilled));
  EXPECT_FALSE(WireState(SandboxState::kLost));
  EXPECT_EQ(StatesShownAs("paused"),
            (std::vector<SandboxState>{SandboxState::kPaused, SandboxState::kResuming}));
  EXPECT_EQ(StatesShownAs("running").size(), 3u);
  EXPECT_EQ(StatesShownAs("error"), std::vector<SandboxState>{SandboxState::kError});
  EXPECT_TRUE(StatesShownAs("lost").empty());
}

TEST(Lifecycle, OnlyStatesWithAVmHoldResources) {
  std::set<std::string> holding;
  for (SandboxState s : kAllSandboxStates) {
    if (HoldsResources(s)) holding.insert(Name(s));
  }
  EXPECT_EQ(holding, (std::set<std::string>{"creating", "running", "pausing", "resuming", "killing",
                                            "error"}));
}

}  // namespace
}  // namespace moat::api
