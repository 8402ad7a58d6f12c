// How big a template's warm pool should be (WarmPoolWant): its floor, grown by one clone per
// create that found it dry, bounded by --warm-max, never below the floor.
#include <gtest/gtest.h>

#include "agent/agent.h"

namespace moat::agent {
namespace {

TEST(WarmPoolWant, StaysAtItsFloorWhileCreatesFindClones) {
  EXPECT_EQ(WarmPoolWant(2, 0, 16), 2u);
  EXPECT_EQ(WarmPoolWant(0, 0, 16), 0u);
  EXPECT_EQ(WarmPoolWant(1, 0, 0), 1u);
}

TEST(WarmPoolWant, GrowsByOnePerDryCreateUpToTheMaximum) {
  EXPECT_EQ(WarmPoolWant(2, 1, 16), 3u);
  EXPECT_EQ(WarmPoolWant(2, 5, 16), 7u);
  EXPECT_EQ(WarmPoolWant(2, 14, 16), 16u);
  EXPECT_EQ(WarmPoolWant(2, 40, 16), 16u);
}

TEST(WarmPoolWant, AMaximumBelowTheFloorNeverShrinksIt) {
  EXPECT_EQ(WarmPoolWant(4, 3, 2), 4u);
  EXPECT_EQ(WarmPoolWant(4, 3, 0), 4u);  // 0: no growth
}

}  // namespace
}  // namespace moat::agent
