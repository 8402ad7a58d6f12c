// ParseS3Url and LoadS3Credentials (s3_object_store.h): what the operator writes, read into an
// S3Config. No secret ever goes into an error message: errors name files, lines and variables.
#include <cctype>
#include <cstdlib>
#include <map>
#include <vector>

#include "common/fs.h"
#include "storage/s3_object_store.h"

namespace moat::storage {
namespace {

constexpr std::string_view kAccessKeyVar = "AWS_ACCESS_KEY_ID";
constexpr std::string_view kSecretKeyVar = "AWS_SECRET_ACCESS_KEY";
constexpr std::string_view kSessionTokenVar = "AWS_SESSION_TOKEN";

bool IsBucketChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-';
}

std::string Getenv(std::string_view name) {
  const char* v = std::getenv(std::string(name).c_str());
  return v != nullptr ? v : "";
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

std::string Lowercase(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// Section name ("" before the first header) -> lowercase key -> value.
using Sections = std::map<std::string, std::map<std::string, std::string>>;

// An AWS shared-credentials file ("[default]", "aws_access_key_id = …") or an environment file
// ("AWS_ACCESS_KEY_ID=…", optionally "export …" and quoted values). Comments start with '#' or
// ';'. A bad line is named by its number only: it may hold a secret.
Result<Sections> ParseCredentialsFile(const std::string& file, const std::string& text) {
  Sections sections;
  std::string section;
  size_t line_no = 0;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string_view line = Trim(std::string_view(text).substr(start, end - start));
    start = end + 1;
    ++line_no;
    if (line.empty() || line[0] == '#' || line[0] == ';') continue;
    if (line.front() == '[') {
      if (line.back() != ']') {
        return FailedPrecondition("credentials file " + file + ": line " + std::to_string(line_no) +
                                  ": unclosed section header");
      }
      section = std::string(Trim(line.substr(1, line.size() - 2)));
      if (section.rfind("profile ", 0) == 0) section = std::string(Trim(section.substr(8)));
      sections[section];
      continue;
    }
    if (line.rfind("export ", 0) == 0) line = Trim(line.substr(7));
    size_t eq = line.find('=');
    if (eq == std::string_view::npos) {
      return FailedPrecondition("credentials file " + file + ": line " + std::to_string(line_no) +
                                ": expected NAME=VALUE");
    }
    std::string_view value = Trim(line.substr(eq + 1));
    if (value.size() >= 2 && (value.front() == '"' || value.front() == '\'') &&
        value.back() == value.front()) {
      value = value.substr(1, value.size() - 2);
    }
    sections[section][Lowercase(Trim(line.substr(0, eq)))] = std::string(value);
  }
  return sections;
}

Result<SigV4Credentials> CredentialsFromFile(const std::string& file) {
  auto text = ReadFile(file);
  if (!text.ok()) {
    return FailedPrecondition("credentials file: " + text.status().message());
  }
  MOAT_ASSIGN_OR_RETURN(Sections sections, ParseCredentialsFile(file, *text));
  const std::map<std::string, std::string>* chosen = nullptr;
  std::vector<std::string> named;
  for (const auto& [name, keys] : sections) {
    if (!name.empty()) named.push_back(name);
  }
  if (auto it = sections.find("default"); it != sections.end()) {
    chosen = &it->second;
  } else if (named.size() == 1) {
    chosen = &sections[named[0]];
  } else if (named.empty()) {
    chosen = &sections[""];
  } else {
    return FailedPrecondition("credentials file " + file + ": " + std::to_string(named.size()) +
                              " sections and no [default]");
  }
  auto get = [&](std::string_view name) {
    auto it = chosen->find(Lowercase(name));
    return it == chosen->end() ? std::string() : it->second;
  };
  SigV4Credentials c;
  c.access_key_id = get(kAccessKeyVar);
  c.secret_access_key = get(kSecretKeyVar);
  c.session_token = get(kSessionTokenVar);
  if (c.access_key_id.empty() || c.secret_access_key.empty()) {
    return FailedPrecondition("credentials file " + file + ": no " +
                              std::string(c.access_key_id.empty() ? kAccessKeyVar : kSecretKeyVar) +
                              " (or its lowercase aws_… form)");
  }
  return c;
}

}  // namespace

Result<S3Location> ParseS3Url(std::string_view url) {
  constexpr std::string_view kScheme = "s3://";
  if (url.substr(0, kScheme.size()) != kScheme) {
    return InvalidArgument("S3 URL \"" + std::string(url) + "\": expected s3://bucket[/prefix]");
  }
  std::string_view rest = url.substr(kScheme.size());
  if (!rest.empty() && rest.back() == '/') rest.remove_suffix(1);
  size_t slash = rest.find('/');
  S3Location loc;
  loc.bucket = std::string(rest.substr(0, slash));
  if (slash != std::string_view::npos) loc.prefix = std::string(rest.substr(slash + 1));
  if (loc.bucket.size() < 3 || loc.bucket.size() > 63) {
    return InvalidArgument("S3 URL \"" + std::string(url) + "\": bucket name \"" + loc.bucket +
                           "\" must be 3 to 63 characters");
  }
  for (char c : loc.bucket) {
    if (!IsBucketChar(c)) {
      return InvalidArgument("S3 URL \"" + std::string(url) + "\": bucket name \"" + loc.bucket +
                             "\" may only have a-z, 0-9, '.' and '-'");
    }
  }
  if (slash != std::string_view::npos && !IsValidObjectKey(loc.prefix)) {
    return InvalidArgument("S3 URL \"" + std::string(url) + "\": prefix \"" + loc.prefix +
                           "\" must be segments of [A-Za-z0-9._-] with no empty, \".\" or \"..\" "
                           "segment");
  }
  return loc;
}

Result<SigV4Credentials> LoadS3Credentials(const std::string& file) {
  SigV4Credentials env;
  env.access_key_id = Getenv(kAccessKeyVar);
  env.secret_access_key = Getenv(kSecretKeyVar);
  env.session_token = Getenv(kSessionTokenVar);
  if (!env.access_key_id.empty() && !env.secret_access_key.empty()) return env;
  if (!file.empty()) return CredentialsFromFile(file);
  std::string_view missing = env.access_key_id.empty() ? kAccessKeyVar : kSecretKeyVar;
  return FailedPrecondition("S3 credentials: " + std::string(missing) +
                            " is not set and no credentials file was given");
}

}  // namespace moat::storage
