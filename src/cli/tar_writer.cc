#include "cli/tar_writer.h"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>

namespace moat::cli {
namespace {

// ustar header field offsets and sizes (POSIX pax "ustar Interchange Format").
constexpr size_t kName = 0, kNameLen = 100;
constexpr size_t kMode = 100, kUid = 108, kGid = 116;
constexpr size_t kSize = 124, kSizeLen = 12;
constexpr size_t kMtime = 136;
constexpr size_t kChecksum = 148, kChecksumLen = 8;
constexpr size_t kType = 156;
constexpr size_t kLink = 157, kLinkLen = 100;
constexpr size_t kMagic = 257, kVersion = 263;
constexpr size_t kUname = 265, kGname = 297;

// An octal number in `len` bytes: len - 1 digits and a NUL.
void Octal(char* field, size_t len, uint64_t value) {
  field[len - 1] = '\0';
  for (size_t i = len - 1; i-- > 0;) {
    field[i] = static_cast<char>('0' + (value & 7));
    value >>= 3;
  }
}

// A number that may not fit in octal: GNU's base-256 form (high bit set, big-endian).
void Number(char* field, size_t len, uint64_t value) {
  if (value < (uint64_t{1} << (3 * (len - 1)))) {
    Octal(field, len, value);
    return;
  }
  std::memset(field, 0, len);
  field[0] = static_cast<char>(0x80);
  for (size_t i = len - 1; i > 0 && value != 0; --i) {
    field[i] = static_cast<char>(value & 0xff);
    value >>= 8;
  }
}

void Text(char* field, size_t len, std::string_view value) {
  std::memcpy(field, value.data(), std::min(len, value.size()));
}

}  // namespace

Status TarWriter::Emit(std::string_view data) {
  written_ += data.size();
  return sink_(data);
}

Status TarWriter::Pad(uint64_t size) {
  static const std::array<char, kBlock> kZeros{};
  size_t rest = static_cast<size_t>(size % kBlock);
  return rest == 0 ? Status::Ok() : Emit(std::string_view(kZeros.data(), kBlock - rest));
}

Status TarWriter::LongName(char type, std::string_view name) {
  std::string data(name);
  data.push_back('\0');
  MOAT_RETURN_IF_ERROR(Header("././@LongLink", type, 0644, 0, data.size(), ""));
  MOAT_RETURN_IF_ERROR(Emit(data));
  return Pad(data.size());
}

Status TarWriter::Header(std::string_view path, char type, uint32_t mode, int64_t mtime,
                         uint64_t size, std::string_view link) {
  if (path.size() > kNameLen) MOAT_RETURN_IF_ERROR(LongName('L', path));
  if (link.size() > kLinkLen) MOAT_RETURN_IF_ERROR(LongName('K', link));
  std::array<char, kBlock> h{};
  Text(&h[kName], kNameLen, path);  // truncated when a long-name entry carries it
  Octal(&h[kMode], 8, mode & 07777);
  Octal(&h[kUid], 8, 0);
  Octal(&h[kGid], 8, 0);
  Number(&h[kSize], kSizeLen, size);
  Octal(&h[kMtime], 12, static_cast<uint64_t>(std::max<int64_t>(mtime, 0)));
  h[kType] = type;
  Text(&h[kLink], kLinkLen, link);
  Text(&h[kMagic], 6, std::string_view("ustar\0", 6));
  Text(&h[kVersion], 2, "00");
  Text(&h[kUname], 32, "root");
  Text(&h[kGname], 32, "root");
  // The checksum is the sum of the header's bytes with its own field read as spaces.
  std::memset(&h[kChecksum], ' ', kChecksumLen);
  unsigned sum = 0;
  for (char c : h) sum += static_cast<unsigned char>(c);
  Octal(&h[kChecksum], 7, sum);  // six digits and a NUL, then the space already there
  return Emit(std::string_view(h.data(), h.size()));
}

Status TarWriter::AddDirectory(std::string_view path, uint32_t mode, int64_t mtime) {
  return Header(std::string(path) + "/", '5', mode, mtime, 0, "");
}

Status TarWriter::AddSymlink(std::string_view path, std::string_view target, uint32_t mode,
                             int64_t mtime) {
  return Header(path, '2', mode, mtime, 0, target);
}

Status TarWriter::AddFile(std::string_view path, uint32_t mode, int64_t mtime, uint64_t size,
                          int fd) {
  MOAT_RETURN_IF_ERROR(Header(path, '0', mode, mtime, size, ""));
  std::string buf(64 * 1024, '\0');
  uint64_t left = size;
  while (left > 0) {
    ssize_t n = ::read(fd, buf.data(), static_cast<size_t>(std::min<uint64_t>(left, buf.size())));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError("read(" + std::string(path) + ")");
    if (n == 0) {
      return FailedPrecondition(std::string(path) + " shrank while it was being archived");
    }
    MOAT_RETURN_IF_ERROR(Emit(std::string_view(buf.data(), static_cast<size_t>(n))));
    left -= static_cast<uint64_t>(n);
  }
  return Pad(size);
}

Status TarWriter::Finish() {
  static const std::array<char, 2 * kBlock> kEnd{};
  return Emit(std::string_view(kEnd.data(), kEnd.size()));
}

}  // namespace moat::cli
