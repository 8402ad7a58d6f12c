// The S3 answers S3ObjectStore reads: ListObjectsV2 pages and error bodies, including the odd
// ones (escaped keys, attributes, self-closing tags, truncation without a token).
#include "storage/s3_xml.h"

#include <gtest/gtest.h>

namespace moat::storage::s3xml {
namespace {

TEST(S3Xml, ReadsAListPageWithEscapedKeysAndATokenToFollow) {
  auto page = ParseListObjectsV2(
      R"(<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Name>bucket</Name><Prefix>p/</Prefix><KeyCount>2</KeyCount><MaxKeys>2</MaxKeys>
  <IsTruncated>true</IsTruncated>
  <Contents><Key>p/a&amp;b</Key><LastModified>2024-01-01T00:00:00.000Z</LastModified>
    <ETag>&quot;abc&quot;</ETag><Size>12</Size><StorageClass>STANDARD</StorageClass></Contents>
  <Contents>
    <Key>p/x&#x41;&#66;&lt;&gt;&apos;</Key>
    <Size>4194304</Size>
  </Contents>
  <NextContinuationToken>tok&amp;en==</NextContinuationToken>
</ListBucketResult>)");
  ASSERT_TRUE(page.ok()) << page.status().ToString();
  ASSERT_EQ(page->objects.size(), 2u);
  EXPECT_EQ(page->objects[0].key, "p/a&b");
  EXPECT_EQ(page->objects[0].size, 12u);
  EXPECT_EQ(page->objects[1].key, "p/xAB<>'");
  EXPECT_EQ(page->objects[1].size, 4194304u);
  EXPECT_TRUE(page->truncated);
  EXPECT_EQ(page->next_continuation_token, "tok&en==");
}

TEST(S3Xml, ReadsTheLastAndEmptyPages) {
  auto last = ParseListObjectsV2(
      "<ListBucketResult><IsTruncated>false</IsTruncated><Contents><Key>k</Key><Size>0</Size>"
      "</Contents><NextContinuationToken/></ListBucketResult>");
  ASSERT_TRUE(last.ok()) << last.status().ToString();
  ASSERT_EQ(last->objects.size(), 1u);
  EXPECT_EQ(last->objects[0].size, 0u);
  EXPECT_FALSE(last->truncated);

  auto empty = ParseListObjectsV2("<ListBucketResult><KeyCount>0</KeyCount></ListBucketResult>");
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->objects.empty());
  EXPECT_FALSE(empty->truncated);
}

TEST(S3Xml, RejectsPagesThatWouldMisleadTheCaller) {
  EXPECT_FALSE(ParseListObjectsV2("<Contents><Size>1</Size></Contents>").ok());
  EXPECT_FALSE(ParseListObjectsV2("<Contents><Key>k</Key><Size>-1</Size></Contents>").ok());
  EXPECT_FALSE(
      ParseListObjectsV2("<Contents><Key>k</Key><Size>99999999999999999999</Size></Contents>")
          .ok());
  EXPECT_FALSE(ParseListObjectsV2("<IsTruncated>true</IsTruncated>").ok());
}

TEST(S3Xml, ReadsTheCodeAndMessageOfAnError) {
  ErrorBody e = ParseErrorBody(
      "<?xml version=\"1.0\"?><Error><Code>NoSuchKey</Code><Message>The specified key does "
      "not exist.</Message><Key>a</Key><RequestId>x</RequestId></Error>");
  EXPECT_EQ(e.code, "NoSuchKey");
  EXPECT_EQ(e.message, "The specified key does not exist.");

  ErrorBody none = ParseErrorBody("");
  EXPECT_EQ(none.code, "");
  EXPECT_EQ(none.message, "");

  ErrorBody html = ParseErrorBody("<html><body>502 Bad Gateway</body></html>");
  EXPECT_EQ(html.code, "");

  ErrorBody odd = ParseErrorBody("<Error><Code>Slow\nDown</Code><Message>" +
                                 std::string(5000, 'm') + "</Message></Error>");
  EXPECT_EQ(odd.code, "Slow Down");
  EXPECT_EQ(odd.message.size(), 200u);
}

TEST(S3Xml, UnescapesOnlyWhatItKnows) {
  EXPECT_EQ(XmlUnescape("a&amp;b&lt;c&gt;&quot;&apos;"), "a&b<c>\"'");
  EXPECT_EQ(XmlUnescape("&#233;&#x20AC;&#x1F600;"), "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80");
  EXPECT_EQ(XmlUnescape("&unknown; & &#; &#xZZ; &#0; &#xD800; &"),
            "&unknown; & &#; &#xZZ; &#0; &#xD800; &");
}

}  // namespace
}  // namespace moat::storage::s3xml
