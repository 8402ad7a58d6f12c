#include "common/tar_check.h"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "common/cleanup.h"
#include "common/unique_fd.h"

namespace moat {

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
    if (total > max_bytes) {
      return Status(ErrorCode::kResourceExhausted, "the uploaded archive unpacks to more than " +
                                                       std::to_string(max_bytes >> 20) + " MiB");
    }
    if (out && ::write(out.get(), block, 512) != 512) return ErrnoError("write(" + plain_tar + ")");
    return true;
  };
  auto octal = [](const char* p, size_t n) -> uint64_t {
    uint64_t v = 0;
    for (size_t i = 0; i < n && p[i] != '\0' && p[i] != ' '; ++i) {
      if (p[i] < '0' || p[i] > '7') return 0;
      v = v * 8 + static_cast<uint64_t>(p[i] - '0');
    }
    return v;
  };
  auto check_path = [](const std::string& name) -> Status {
    if (name.empty()) return Status::Ok();
    if (name[0] == '/')
      return InvalidArgument("the uploaded archive has an absolute path: " + name);
    size_t i = 0;
    while (i <= name.size()) {
      size_t j = name.find('/', i);
      if (j == std::string::npos) j = name.size();
      if (name.compare(i, j - i, "..") == 0 && j - i == 2) {
        return InvalidArgument("the uploaded archive has a path out of its directory: " + name);
      }
      i = j + 1;
    }
    return Status::Ok();
  };
  char block[512];
  std::string long_name, long_link;
  int zero_blocks = 0;
  for (;;) {
    MOAT_ASSIGN_OR_RETURN(bool more, read_block(block));
    if (!more) break;
    if (std::all_of(block, block + 512, [](char c) { return c == 0; })) {
      if (++zero_blocks == 2) break;
      continue;
    }
    zero_blocks = 0;
    unsigned sum = 0;
    for (int i = 0; i < 512; ++i) {
      sum += (i >= 148 && i < 156) ? ' ' : static_cast<unsigned char>(block[i]);
    }
    if (octal(block + 148, 8) != sum) {
      return InvalidArgument("the uploaded archive is not a valid tar (bad header checksum)");
    }
    char type = block[156];
    uint64_t size = octal(block + 124, 12);
    std::string name = std::string(block, strnlen(block, 100));
    if (std::memcmp(block + 257, "ustar", 5) == 0 && block[345] != '\0') {
      name = std::string(block + 345, strnlen(block + 345, 155)) + "/" + name;
    }
    std::string link(block + 157, strnlen(block + 157, 100));
    // The body of GNU long names and pax headers is read here, then the entry they describe.
    std::string body;
    for (uint64_t left = size; left > 0;) {
      MOAT_ASSIGN_OR_RETURN(bool ok, read_block(block));
      if (!ok) return InvalidArgument("the uploaded archive is truncated");
      if (type == 'L' || type == 'K' || type == 'x' || type == 'g') {
        if (body.size() > 1 << 20) return InvalidArgument("the uploaded archive has a huge header");
        body.append(block, std::min<uint64_t>(left, 512));
      }
      left -= std::min<uint64_t>(left, 512);
    }
    if (type == 'L') {
      long_name = std::string(body.c_str());
      continue;
    }
    if (type == 'K') {
      long_link = std::string(body.c_str());
      continue;
    }
    if (type == 'x' || type == 'g') {
      // pax records "len key=value\n": path and linkpath replace the header's.
      size_t i = 0;
      while (i < body.size()) {
        size_t sp = body.find(' ', i);
        if (sp == std::string::npos) break;
        size_t len = std::strtoul(body.c_str() + i, nullptr, 10);
        if (len == 0 || i + len > body.size()) break;
        std::string rec = body.substr(sp + 1, i + len - sp - 2);
        size_t eq = rec.find('=');
        if (eq != std::string::npos) {
          std::string key = rec.substr(0, eq);
          if (key == "path") long_name = rec.substr(eq + 1);
          if (key == "linkpath") long_link = rec.substr(eq + 1);
        }
        i += len;
      }
      continue;
    }
    if (!long_name.empty()) name = long_name;
    if (!long_link.empty()) link = long_link;
    long_name.clear();
    long_link.clear();
    MOAT_RETURN_IF_ERROR(check_path(name));
    if (type == '3' || type == '4' || type == '6') {
      return InvalidArgument("the uploaded archive has a device or fifo entry: " + name);
    }
    if (type == '1') MOAT_RETURN_IF_ERROR(check_path(link));
  }
  // What follows the end marker is not passed on; the marker is.
  std::memset(block, 0, sizeof block);
  for (int i = 0; out && i < 2; ++i) {
    if (::write(out.get(), block, 512) != 512) return ErrnoError("write(" + plain_tar + ")");
  }
  return Status::Ok();
}

}  // namespace moat
