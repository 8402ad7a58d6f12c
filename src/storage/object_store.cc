#include "storage/object_store.h"

namespace moat::storage {
namespace {

constexpr size_t kMaxKeyBytes = 512;

bool IsKeyChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '-';
}

}  // namespace

bool IsValidObjectKey(std::string_view key) {
  if (key.empty() || key.size() > kMaxKeyBytes) return false;
  size_t start = 0;
  while (start <= key.size()) {
    size_t end = key.find('/', start);
    if (end == std::string_view::npos) end = key.size();
    std::string_view segment = key.substr(start, end - start);
    if (segment.empty() || segment == "." || segment == "..") return false;
    for (char c : segment) {
      if (!IsKeyChar(c)) return false;
    }
    start = end + 1;
  }
  return true;
}

}  // namespace moat::storage
