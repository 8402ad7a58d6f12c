// The little XML an S3 server answers with, read without an XML library: ListObjectsV2 pages
// and error bodies (<Error><Code>…</Code><Message>…</Message></Error>). Private to
// s3_object_store.cc; apart so that the unit tests can feed it odd bodies.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "storage/object_store.h"

namespace moat::storage::s3xml {

struct ListPage {
  std::vector<ObjectInfo> objects;  // keys as the server spells them (the store prefix included)
  bool truncated = false;
  std::string next_continuation_token;
};

// invalid_argument naming what is wrong: a <Contents> without a <Key> or with a bad <Size>, or
// a truncated page without a NextContinuationToken (it would make List loop for ever).
Result<ListPage> ParseListObjectsV2(std::string_view xml);

struct ErrorBody {
  std::string code;     // "NoSuchKey"; empty when the body has none
  std::string message;  // at most 200 bytes, control characters replaced by spaces
};
ErrorBody ParseErrorBody(std::string_view xml);

// &amp; &lt; &gt; &quot; &apos; &#N; &#xH; decoded (UTF-8); anything else kept as written.
std::string XmlUnescape(std::string_view text);

}  // namespace moat::storage::s3xml
