#include "common/tar_check.h"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <limits>
#include <vector>

#include "common/cleanup.h"
#include "common/unique_fd.h"

namespace moat {
namespace {

constexpr uint64_t kNoNumber = std::numeric_limits<uint64_t>::max();
// The largest body of a GNU long name or pax header taken.
constexpr uint64_t kMaxMetaBody = 1 << 20;

// A numeric header field as GNU tar reads it (list.c from_header): base-256 when the first
// byte's high bit is set; else octal digits after optional blanks, ended by NUL, a blank or the
// field's end. kNoNumber when it is neither (GNU tar's base-64, signs, garbage, all blanks) or
// does not fit: the archive is refused then, rather than guessed at.
uint64_t HeaderNumber(const char* field, size_t n) {
  const auto* p = reinterpret_cast<const unsigned char*>(field);
  if ((p[0] & 0x80) != 0) {
    if ((p[0] & 0x40) != 0) return kNoNumber;  // negative
    uint64_t v = p[0] & 0x3f;
    for (size_t i = 1; i < n; ++i) {
      if (v >> 55 != 0) return kNoNumber;
      v = (v << 8) | p[i];
    }
    return v;
  }
  size_t i = 0;
  while (i < n && std::isspace(p[i])) ++i;
  if (i == n) return kNoNumber;
  uint64_t v = 0;
  for (; i < n && p[i] >= '0' && p[i] <= '7'; ++i) {
    if (v >> 60 != 0) return kNoNumber;
    v = v * 8 + (p[i] - '0');
  }
  if (i < n && p[i] != '\0' && !std::isspace(p[i])) return kNoNumber;
  return v;
}

// A name as tar uses it: a C string (cut at the first NUL).
std::string CString(std::string_view s) {
  return std::string(s.substr(0, std::min(s.size(), s.find('\0'))));
}

Status CheckPath(const std::string& name) {
  if (name.empty()) return Status::Ok();
  if (name[0] == '/') return InvalidArgument("the uploaded archive has an absolute path: " + name);
  size_t i = 0;
  while (i <= name.size()) {
    size_t j = name.find('/', i);
    if (j == std::string::npos) j = name.size();
    if (j - i == 2 && name.compare(i, 2, "..") == 0) {
      return InvalidArgument("the uploaded archive has a path out of its directory: " + name);
    }
    i = j + 1;
  }
  return Status::Ok();
}

struct PaxRecord {
  std::string key, value;
};

// pax records, "<len> <key>=<value>\n" each; anything else in the body refuses the archive
// (tar implementations differ on what they skip).
Result<std::vector<PaxRecord>> ParsePax(const std::string& body) {
  std::vector<PaxRecord> out;
  size_t i = 0;
  while (i < body.size()) {
    size_t d = i;
    uint64_t len = 0;
    while (d < body.size() && body[d] >= '0' && body[d] <= '9' && len <= body.size()) {
      len = len * 10 + static_cast<uint64_t>(body[d] - '0');
      ++d;
    }
    size_t eq = d < body.size() ? body.find('=', d) : std::string::npos;
    if (d == i || len == 0 || d >= body.size() || body[d] != ' ' || len > body.size() - i ||
        body[i + len - 1] != '\n' || eq == std::string::npos || eq >= i + len - 1 || eq == d + 1) {
      return InvalidArgument("the uploaded archive has a malformed pax header");
    }
    out.push_back({body.substr(d + 1, eq - d - 1), body.substr(eq + 1, i + len - 1 - eq - 1)});
    i += len;
  }
  return out;
}

}  // namespace

// The walk must see the headers every tar sees (GNU tar, busybox tar: the guest's image picks),
// or a crafted archive hides an entry from it. So where those programs read an archive
// differently, the archive is refused: a pax `size` that disagrees with the header's (busybox
// ignores pax sizes), data on a link or directory (GNU tar skips none after a hard link, busybox
// none after any of them), a lone zero block (busybox stops there, GNU tar goes on), GNU sparse
// extension headers, unknown entry types, malformed numbers or pax records. Every name a tar
// may give an entry is checked: the header's name with and without its prefix, GNU long names,
// pax `path` and `GNU.sparse.name`, and global pax paths (GNU tar applies them to the entries
// that follow, busybox does not).
Status CheckTarArchive(const std::string& archive, const std::string& plain_tar,
                       uint64_t max_bytes) {
  // gzread reads a gzipped file and a plain one alike.
  gzFile in = ::gzopen(archive.c_str(), "rb");
  if (in == nullptr) return ErrnoError("open(" + archive + ")");
  Cleanup close_in([&] { ::gzclose(in); });
  UniqueFd out;
  if (!plain_tar.empty()) {
    out = UniqueFd(::open(plain_tar.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (!out) return ErrnoError("open(" + plain_tar + ")");
  }
  auto too_big = [&] {
    return Status(ErrorCode::kResourceExhausted, "the uploaded archive unpacks to more than " +
                                                     std::to_string(max_bytes >> 20) + " MiB");
  };
  uint64_t total = 0;
  auto read_block = [&](char* block) -> Result<bool> {
    size_t got = 0;
    while (got < 512) {
      int n = ::gzread(in, block + got, static_cast<unsigned>(512 - got));
      if (n < 0) return InvalidArgument("the uploaded archive is not a valid tar or tar.gz");
      if (n == 0) break;
      got += static_cast<size_t>(n);
    }
    if (got == 0) return false;
    if (got != 512) return InvalidArgument("the uploaded archive is truncated");
    total += 512;
    if (total > max_bytes) return too_big();
    if (out && ::write(out.get(), block, 512) != 512) return ErrnoError("write(" + plain_tar + ")");
    return true;
  };
  auto is_zero = [](const char* b) {
    return std::all_of(b, b + 512, [](char c) { return c == 0; });
  };

  char block[512];
  // What the headers before an entry say about it.
  std::vector<std::string> names, links;
  std::vector<uint64_t> pax_sizes;
  for (;;) {
    MOAT_ASSIGN_OR_RETURN(bool more, read_block(block));
    if (!more) break;
    if (is_zero(block)) {
      MOAT_ASSIGN_OR_RETURN(bool next, read_block(block));
      if (!next || is_zero(block)) break;  // the end marker
      return InvalidArgument("the uploaded archive has a lone zero block before more entries");
    }
    unsigned sum = 0;
    for (int i = 0; i < 512; ++i) {
      sum += (i >= 148 && i < 156) ? ' ' : static_cast<unsigned char>(block[i]);
    }
    if (HeaderNumber(block + 148, 8) != sum) {
      return InvalidArgument("the uploaded archive is not a valid tar (bad header checksum)");
    }
    char type = block[156];
    uint64_t size = HeaderNumber(block + 124, 12);
    if (size == kNoNumber) {
      return InvalidArgument("the uploaded archive has an entry with an unreadable size");
    }
    if (size > max_bytes) return too_big();
    std::string name(block, strnlen(block, 100));
    std::string prefix(block + 345, strnlen(block + 345, 155));
    std::string link(block + 157, strnlen(block + 157, 100));
    bool meta = type == 'L' || type == 'K' || type == 'x' || type == 'X' || type == 'g';
    if (meta && size > kMaxMetaBody) {
      return InvalidArgument("the uploaded archive has a huge header");
    }
    bool extended_sparse = type == 'S' && block[482] != '\0';
    // The entry's data (a meta header's body is kept).
    std::string body;
    for (uint64_t left = size; left > 0;) {
      MOAT_ASSIGN_OR_RETURN(bool ok, read_block(block));
      if (!ok) return InvalidArgument("the uploaded archive is truncated");
      if (meta) body.append(block, std::min<uint64_t>(left, 512));
      left -= std::min<uint64_t>(left, 512);
    }
    if (type == 'L') {
      names.push_back(CString(body));
      continue;
    }
    if (type == 'K') {
      links.push_back(CString(body));
      continue;
    }
    if (type == 'x' || type == 'X' || type == 'g') {
      MOAT_ASSIGN_OR_RETURN(auto records, ParsePax(body));
      for (auto& [key, value] : records) {
        if (key == "size") {
          if (type == 'g') {
            return InvalidArgument("the uploaded archive has a global pax size record");
          }
          if (value.empty() || value.size() > 19 ||
              !std::all_of(value.begin(), value.end(),
                           [](char c) { return c >= '0' && c <= '9'; })) {
            return InvalidArgument("the uploaded archive has a malformed pax size: " + value);
          }
          uint64_t s = std::stoull(value);
          if (s > max_bytes) return too_big();
          pax_sizes.push_back(s);
        } else if (key == "path" || key == "GNU.sparse.name") {
          if (type == 'g') {
            MOAT_RETURN_IF_ERROR(CheckPath(CString(value)));
          } else {
            names.push_back(CString(value));
          }
        } else if (key == "linkpath") {
          // A global one may reach a hard link further on.
          if (type == 'g') {
            MOAT_RETURN_IF_ERROR(CheckPath(CString(value)));
          } else {
            links.push_back(CString(value));
          }
        }
      }
      continue;
    }
    // An entry: every name it may get, and what it is.
    MOAT_RETURN_IF_ERROR(CheckPath(name));
    if (!prefix.empty()) MOAT_RETURN_IF_ERROR(CheckPath(prefix + "/" + name));
    for (const auto& n : names) MOAT_RETURN_IF_ERROR(CheckPath(n));
    std::string shown = !names.empty() ? names.back() : prefix.empty() ? name : prefix + "/" + name;
    switch (type) {
      case '\0':
      case '0':
      case '7':
      case '1':
      case '2':
      case '5': break;
      case 'S':
        if (extended_sparse) {
          return InvalidArgument(
              "the uploaded archive has a GNU sparse entry with extension headers (pack it "
              "without --sparse): " +
              shown);
        }
        break;
      case '3':
      case '4':
      case '6': return InvalidArgument("the uploaded archive has a device or fifo entry: " + shown);
      default:
        return InvalidArgument("the uploaded archive has an entry of unknown type '" +
                               std::string(1, type) + "': " + shown);
    }
    for (uint64_t s : pax_sizes) {
      if (s != size) {
        return InvalidArgument("the uploaded archive has a pax size (" + std::to_string(s) +
                               ") that disagrees with its header's (" + std::to_string(size) +
                               "): " + shown);
      }
    }
    if ((type == '1' || type == '2' || type == '5') && size != 0) {
      return InvalidArgument("the uploaded archive has a link or directory with data: " + shown);
    }
    if (type == '1') {
      MOAT_RETURN_IF_ERROR(CheckPath(link));
      for (const auto& l : links) MOAT_RETURN_IF_ERROR(CheckPath(l));
    }
    names.clear();
    links.clear();
    pax_sizes.clear();
  }
  // What follows the end marker is not passed on; the marker is.
  std::memset(block, 0, sizeof block);
  for (int i = 0; out && i < 2; ++i) {
    if (::write(out.get(), block, 512) != 512) return ErrnoError("write(" + plain_tar + ")");
  }
  return Status::Ok();
}

}  // namespace moat
