#include "common/status.h"

#include <gtest/gtest.h>

namespace moat {
namespace {

Result<int> Half(int v) {
  if (v % 2 != 0) return InvalidArgument("odd value " + std::to_string(v));
  return v / 2;
}

Result<int> Quarter(int v) {
  MOAT_ASSIGN_OR_RETURN(int h, Half(v));
  MOAT_ASSIGN_OR_RETURN(int q, Half(h));
  return q;
}

TEST(Status, ErrnoErrorNamesTheCallAndTheReason) {
  Status s = ErrnoError("open(/dev/kvm)", EACCES);
  EXPECT_EQ(s.code(), ErrorCode::kPermissionDenied);
  EXPECT_EQ(s.message(), "open(/dev/kvm): Permission denied");
  EXPECT_EQ(s.ToString(), "permission_denied: open(/dev/kvm): Permission denied");
}

TEST(Status, AnnotateKeepsTheCodeAndPrefixesContext) {
  Status s = NotFound("no such sandbox").Annotate("kill abc");
  EXPECT_EQ(s.code(), ErrorCode::kNotFound);
  EXPECT_EQ(s.message(), "kill abc: no such sandbox");
  EXPECT_TRUE(Status::Ok().Annotate("x").ok());
}

TEST(Result, AssignOrReturnPropagatesTheFirstError) {
  EXPECT_EQ(*Quarter(12), 3);
  Result<int> r = Quarter(6);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "odd value 3");
}

}  // namespace
}  // namespace moat
