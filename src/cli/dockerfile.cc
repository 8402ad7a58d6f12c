#include "cli/dockerfile.h"

#include <algorithm>
#include <cctype>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <utility>

#include "cli/template_archive.h"

namespace moat::cli {
namespace {

using nlohmann::json;

constexpr std::string_view kBlanks = " \t";

std::string_view TrimLeft(std::string_view s) {
  size_t start = s.find_first_not_of(kBlanks);
  return start == std::string_view::npos ? std::string_view() : s.substr(start);
}

std::string_view Trim(std::string_view s) {
  s = TrimLeft(s);
  size_t end = s.find_last_not_of(kBlanks);
  return end == std::string_view::npos ? std::string_view() : s.substr(0, end + 1);
}

std::string Upper(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return out;
}

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

Status LineError(int line, const std::string& message) {
  return InvalidArgument("Dockerfile line " + std::to_string(line) + ": " + message);
}

// One instruction, its continuation lines joined as Docker joins them (the escape and the line
// break removed, nothing added).
struct Instruction {
  int line = 0;
  std::string keyword;  // upper-case
  std::string args;     // trimmed
};

// A parser directive ("# escape=`") as Docker reads them at the top of the file.
bool ParseDirective(std::string_view line, std::string* key, std::string* value) {
  line = Trim(line);
  if (line.empty() || line[0] != '#') return false;
  line = TrimLeft(line.substr(1));
  size_t eq = line.find('=');
  if (eq == std::string_view::npos || eq == 0) return false;
  std::string_view k = Trim(line.substr(0, eq));
  if (k.empty() || !std::all_of(k.begin(), k.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) != 0;
      })) {
    return false;
  }
  *key = Lower(k);
  *value = std::string(Trim(line.substr(eq + 1)));
  return true;
}

bool IsBlankOrComment(std::string_view line) {
  line = TrimLeft(line);
  return line.empty() || line[0] == '#';
}

Result<std::vector<Instruction>> SplitInstructions(std::string_view text) {
  std::vector<std::string_view> lines;
  for (size_t start = 0; start <= text.size();) {
    size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(start, end - start);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    lines.push_back(line);
    start = end + 1;
  }

  std::vector<Instruction> out;
  bool directives = true;  // parser directives may only open the file
  size_t i = 0;
  while (i < lines.size()) {
    const int number = static_cast<int>(i) + 1;
    std::string_view line = lines[i++];
    if (directives) {
      std::string key, value;
      if (ParseDirective(line, &key, &value)) {
        if (key == "escape" && value != "\\") {
          return LineError(number, "the escape directive is not supported (only \\ escapes)");
        }
        continue;
      }
      directives = false;
    }
    if (IsBlankOrComment(line)) continue;

    // A line ending in a backslash (then only blanks) goes on at the next line that is neither
    // blank nor a comment.
    std::string joined;
    while (true) {
      std::string_view kept = line.substr(0, line.find_last_not_of(kBlanks) + 1);
      const bool continues = !kept.empty() && kept.back() == '\\';
      joined += continues ? kept.substr(0, kept.size() - 1) : line;
      if (!continues) break;
      while (i < lines.size() && IsBlankOrComment(lines[i])) ++i;
      if (i == lines.size()) break;
      line = lines[i++];
    }
    std::string_view trimmed = Trim(joined);
    size_t space = trimmed.find_first_of(kBlanks);
    Instruction ins;
    ins.line = number;
    ins.keyword = Upper(trimmed.substr(0, space));
    if (space != std::string_view::npos) ins.args = std::string(Trim(trimmed.substr(space)));
    out.push_back(std::move(ins));
  }
  return out;
}

// JSON exec form (`["a", "b"]`); nullopt for the shell form, as Docker falls back to it when the
// text is not a JSON array of strings.
std::optional<std::vector<std::string>> ExecForm(std::string_view args) {
  if (args.empty() || args.front() != '[') return std::nullopt;
  json parsed = json::parse(args, nullptr, /*allow_exceptions=*/false);
  if (!parsed.is_array()) return std::nullopt;
  std::vector<std::string> out;
  for (const auto& item : parsed) {
    if (!item.is_string()) return std::nullopt;
    out.push_back(item.get<std::string>());
  }
  return out;
}

// An exec-form argument as a shell word: as it is when it holds nothing the shell would read
// differently, else single-quoted. `["sh", "-c", "a && b"]` so stays one command, and plain
// arrays join with spaces exactly as the SDK joins them.
std::string ShellWord(std::string_view arg) {
  const bool plain = !arg.empty() && std::all_of(arg.begin(), arg.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) != 0 ||
           std::string_view("_@%+=:,./-").find(c) != std::string_view::npos;
  });
  if (plain) return std::string(arg);
  std::string out = "'";
  for (char c : arg) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

std::string JoinShellWords(const std::vector<std::string>& words) {
  std::string out;
  for (const auto& w : words) out += (out.empty() ? "" : " ") + ShellWord(w);
  return out;
}

struct Flag {
  std::string name;  // without the leading --
  std::string value;
};

// Takes the leading `--name[=value]` flags off `args`.
std::vector<Flag> TakeFlags(std::string_view& args) {
  std::vector<Flag> flags;
  while (args.substr(0, 2) == "--") {
    std::string_view token = args.substr(0, args.find_first_of(kBlanks));
    size_t eq = token.find('=');
    flags.push_back({std::string(token.substr(2, eq == std::string_view::npos ? eq : eq - 2)),
                     eq == std::string_view::npos ? "" : std::string(token.substr(eq + 1))});
    args = TrimLeft(args.substr(token.size()));
  }
  return flags;
}

bool IsHeredoc(std::string_view word) {
  return word.substr(0, 2) == "<<" && word.size() > 2 && word[2] != '<';
}

bool IsUrl(std::string_view source) {
  return source.find("://") != std::string_view::npos || source.substr(0, 4) == "git@";
}

bool IsArchiveName(std::string_view source) {
  for (std::string_view ext :
       {".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar.zst"}) {
    if (source.size() > ext.size() && source.substr(source.size() - ext.size()) == ext) {
      return true;
    }
  }
  return false;
}

// `$NAME`, `${NAME}` and `${NAME:-default}` from the ARGs declared before FROM (Docker expands
// those in FROM only); an unknown name expands to nothing, as in Docker.
std::string ExpandFromArgs(std::string_view text, const std::map<std::string, std::string>& args) {
  auto is_name = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; };
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '$' || i + 1 == text.size()) {
      out += text[i];
      continue;
    }
    std::string name, fallback;
    if (text[i + 1] == '{') {
      size_t close = text.find('}', i + 2);
      if (close == std::string_view::npos) {
        out += text.substr(i);
        break;
      }
      std::string_view inner = text.substr(i + 2, close - i - 2);
      size_t dash = inner.find(":-");
      name = std::string(inner.substr(0, dash));
      if (dash != std::string_view::npos) fallback = std::string(inner.substr(dash + 2));
      i = close;
    } else {
      size_t end = i + 1;
      while (end < text.size() && is_name(text[end])) ++end;
      if (end == i + 1) {
        out += '$';
        continue;
      }
      name = std::string(text.substr(i + 1, end - i - 1));
      i = end - 1;
    }
    auto it = args.find(name);
    out += it != args.end() && !it->second.empty() ? it->second : fallback;
  }
  return out;
}

class Parser {
 public:
  Result<DockerfileTemplate> Run(const std::vector<Instruction>& instructions) {
    out_.steps.push_back({.type = "USER", .args = {"root"}, .line = 0});
    out_.steps.push_back({.type = "WORKDIR", .args = {"/"}, .line = 0});
    for (const auto& ins : instructions) MOAT_RETURN_IF_ERROR(Handle(ins));
    if (!seen_from_) return InvalidArgument("the Dockerfile has no FROM instruction");
    if (!user_set_) out_.steps.push_back({.type = "USER", .args = {"user"}, .line = 0});
    if (!workdir_set_) {
      out_.steps.push_back({.type = "WORKDIR", .args = {"/home/user"}, .line = 0});
    }
    if (cmd_line_ != 0 && entrypoint_line_ != 0) {
      const bool cmd_last = cmd_line_ > entrypoint_line_;
      Note(std::max(cmd_line_, entrypoint_line_),
           std::string(cmd_last ? "CMD" : "ENTRYPOINT") + " replaces the " +
               (cmd_last ? "ENTRYPOINT" : "CMD") + " of line " +
               std::to_string(std::min(cmd_line_, entrypoint_line_)) +
               ": a template has one start command");
    }
    return std::move(out_);
  }

 private:
  Status Handle(const Instruction& ins) {
    const std::string& k = ins.keyword;
    if (!seen_from_ && k != "FROM" && k != "ARG") {
      return LineError(ins.line, k + " comes before FROM");
    }
    if (k == "FROM") return From(ins);
    if (k == "RUN") return Run(ins);
    if (k == "COPY" || k == "ADD") return Copy(ins);
    if (k == "ENV") return Env(ins);
    if (k == "ARG") return Arg(ins);
    if (k == "WORKDIR") return Workdir(ins);
    if (k == "USER") return User(ins);
    if (k == "CMD" || k == "ENTRYPOINT") return StartCmd(ins);
    if (k == "EXPOSE" || k == "VOLUME" || k == "LABEL" || k == "MAINTAINER") {
      Note(ins.line, k + " is ignored");
      return Status::Ok();
    }
    return LineError(ins.line, k + " is not supported");
  }

  void Note(int line, const std::string& text) {
    out_.notes.push_back("Dockerfile line " + std::to_string(line) + ": " + text);
  }

  Status From(const Instruction& ins) {
    if (seen_from_) {
      return LineError(ins.line, "a second FROM is not supported (no multi-stage builds)");
    }
    seen_from_ = true;
    std::string_view args = ins.args;
    for (const auto& flag : TakeFlags(args)) {
      if (flag.name != "platform")
        return LineError(ins.line, "FROM --" + flag.name + " is not supported");
      Note(ins.line, "FROM --platform is ignored");
    }
    MOAT_ASSIGN_OR_RETURN(auto words, Words(ins, args));
    if (words.size() != 1 && !(words.size() == 3 && Upper(words[1]) == "AS")) {
      return LineError(ins.line, "FROM wants IMAGE [AS NAME]");
    }
    out_.from_image = ExpandFromArgs(words[0], pre_from_args_);
    if (out_.from_image.empty()) return LineError(ins.line, "FROM names no image");
    return Status::Ok();
  }

  Status Run(const Instruction& ins) {
    std::string_view args = ins.args;
    auto flags = TakeFlags(args);
    if (!flags.empty()) return LineError(ins.line, "RUN --" + flags[0].name + " is not supported");
    if (IsHeredoc(args)) return LineError(ins.line, "heredocs are not supported");
    auto exec = ExecForm(args);
    std::string command = exec ? JoinShellWords(*exec) : std::string(args);
    if (Trim(command).empty()) return LineError(ins.line, "RUN needs a command");
    out_.steps.push_back({.type = "RUN", .args = {std::move(command)}, .line = ins.line});
    return Status::Ok();
  }

  Status StartCmd(const Instruction& ins) {
    auto exec = ExecForm(ins.args);
    out_.start_cmd = exec ? JoinShellWords(*exec) : ins.args;
    out_.ready_cmd = out_.start_cmd.empty() ? "" : "sleep 20";
    (ins.keyword == "CMD" ? cmd_line_ : entrypoint_line_) = ins.line;
    return Status::Ok();
  }

  Status Copy(const Instruction& ins) {
    const std::string& k = ins.keyword;
    std::string_view args = ins.args;
    std::string owner, mode;
    for (const auto& flag : TakeFlags(args)) {
      if (flag.name == "chown" && !flag.value.empty()) {
        owner = flag.value;
      } else if (flag.name == "chmod" && !flag.value.empty()) {
        MOAT_ASSIGN_OR_RETURN(mode, OctalMode(ins, flag.value));
      } else if (flag.name == "chown" || flag.name == "chmod") {
        return LineError(ins.line,
                         k + " --" + flag.name + " wants a value (--" + flag.name + "=…)");
      } else if (flag.name == "from") {
        return LineError(ins.line, k + " --from is not supported (no multi-stage builds)");
      } else {
        return LineError(ins.line, k + " --" + flag.name + " is not supported");
      }
    }
    auto exec = ExecForm(args);
    std::vector<std::string> words;
    if (exec) {
      words = std::move(*exec);
    } else {
      MOAT_ASSIGN_OR_RETURN(words, Words(ins, args));
    }
    if (words.size() < 2) return LineError(ins.line, k + " needs a source and a destination");
    const std::string dest = words.back();
    words.pop_back();
    if (dest.empty()) return LineError(ins.line, k + " needs a destination");
    if (words.size() > 1 && dest.back() != '/') {
      return LineError(ins.line, k + " with several sources needs a destination ending in /");
    }
    for (const auto& source : words) {
      if (IsHeredoc(source)) return LineError(ins.line, "heredocs are not supported");
      if (IsUrl(source)) {
        return LineError(ins.line, k + " of a URL is not supported (" + source + ")");
      }
      auto clean = CleanContextPath(source);
      if (!clean.ok()) return LineError(ins.line, k + " " + clean.status().message());
      if (k == "ADD" && IsArchiveName(source)) {
        Note(ins.line, "ADD copies " + source + " as it is: archives are not extracted");
      }
      out_.steps.push_back(
          {.type = "COPY", .args = {std::move(*clean), dest, owner, mode}, .line = ins.line});
    }
    return Status::Ok();
  }

  // --chmod=755 as the step's mode: 4 octal digits, as the SDK writes it.
  static Result<std::string> OctalMode(const Instruction& ins, const std::string& value) {
    const bool octal = value.size() <= 4 && std::all_of(value.begin(), value.end(), [](char c) {
                         return c >= '0' && c <= '7';
                       });
    if (!octal) {
      return LineError(
          ins.line, ins.keyword + " --chmod wants an octal mode such as 0755 (got " + value + ")");
    }
    return std::string(4 - value.size(), '0') + value;
  }

  Status Env(const Instruction& ins) {
    MOAT_ASSIGN_OR_RETURN(auto words, Words(ins, ins.args, /*shell_value=*/true));
    if (words.empty()) return LineError(ins.line, "ENV needs KEY=VALUE");
    std::vector<std::pair<std::string, std::string>> vars;
    if (words[0].find('=') != std::string::npos) {
      for (const auto& word : words) {
        size_t eq = word.find('=');
        if (eq == std::string::npos || eq == 0) {
          return LineError(ins.line, "ENV wants KEY=VALUE pairs (got \"" + word + "\")");
        }
        Set(vars, word.substr(0, eq), word.substr(eq + 1));
      }
    } else {
      // The legacy form: ENV KEY the rest of the line.
      std::string_view args = ins.args;
      size_t space = args.find_first_of(kBlanks);
      if (space == std::string_view::npos) {
        return LineError(ins.line,
                         "ENV " + words[0] + " needs a value (ENV KEY VALUE or KEY=VALUE)");
      }
      MOAT_ASSIGN_OR_RETURN(auto value,
                            Words(ins, TrimLeft(args.substr(space)), true, /*split=*/false));
      Set(vars, words[0], value[0]);
    }
    AddEnvStep(ins, vars);
    return Status::Ok();
  }

  Status Arg(const Instruction& ins) {
    MOAT_ASSIGN_OR_RETURN(auto words, Words(ins, ins.args, /*shell_value=*/seen_from_));
    if (words.empty()) return LineError(ins.line, "ARG needs a name");
    std::vector<std::pair<std::string, std::string>> vars;
    for (const auto& word : words) {
      size_t eq = word.find('=');
      if (eq == 0)
        return LineError(ins.line, "ARG wants NAME or NAME=VALUE (got \"" + word + "\")");
      std::string name = word.substr(0, eq);
      std::string value = eq == std::string::npos ? "" : word.substr(eq + 1);
      if (!seen_from_) {
        pre_from_args_[name] = value;
        continue;
      }
      // `ARG X` inside the stage takes the default X had before FROM, as in Docker.
      if (eq == std::string::npos) {
        auto it = pre_from_args_.find(name);
        if (it != pre_from_args_.end()) value = it->second;
      }
      Set(vars, name, value);
    }
    if (seen_from_) AddEnvStep(ins, vars);
    return Status::Ok();
  }

  // Later values of a key replace earlier ones in place, as the SDK's object does.
  static void Set(std::vector<std::pair<std::string, std::string>>& vars, const std::string& key,
                  std::string value) {
    for (auto& [k, v] : vars) {
      if (k == key) {
        v = std::move(value);
        return;
      }
    }
    vars.emplace_back(key, std::move(value));
  }

  void AddEnvStep(const Instruction& ins,
                  const std::vector<std::pair<std::string, std::string>>& vars) {
    TemplateStep step{.type = "ENV", .args = {}, .line = ins.line};
    for (const auto& [k, v] : vars) {
      step.args.push_back(k);
      step.args.push_back(v);
    }
    out_.steps.push_back(std::move(step));
  }

  Status Workdir(const Instruction& ins) {
    MOAT_ASSIGN_OR_RETURN(auto words, Words(ins, ins.args, false, /*split=*/false));
    if (words[0].empty()) return LineError(ins.line, "WORKDIR needs a path");
    out_.steps.push_back({.type = "WORKDIR", .args = {words[0]}, .line = ins.line});
    workdir_set_ = true;
    return Status::Ok();
  }

  Status User(const Instruction& ins) {
    MOAT_ASSIGN_OR_RETURN(auto words, Words(ins, ins.args));
    if (words.size() != 1 || words[0].empty()) {
      return LineError(ins.line, "USER wants one user name (USER NAME[:GROUP])");
    }
    out_.steps.push_back({.type = "USER", .args = {words[0]}, .line = ins.line});
    user_set_ = true;
    return Status::Ok();
  }

  static Result<std::vector<std::string>> Words(const Instruction& ins, std::string_view text,
                                                bool shell_value = false, bool split = true) {
    auto words = DockerfileWords(text, split, shell_value);
    if (!words.ok()) return LineError(ins.line, ins.keyword + ": " + words.status().message());
    return words;
  }

  DockerfileTemplate out_;
  bool seen_from_ = false;
  bool user_set_ = false;
  bool workdir_set_ = false;
  int cmd_line_ = 0;
  int entrypoint_line_ = 0;
  std::map<std::string, std::string> pre_from_args_;
};

}  // namespace

Result<std::vector<std::string>> DockerfileWords(std::string_view s, bool split, bool shell_value) {
  std::vector<std::string> words;
  std::string word;
  bool in_word = false;
  const std::string dollar = shell_value ? "\\$" : "$";
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (split && (c == ' ' || c == '\t' || c == '\n' || c == '\r')) {
      if (in_word) words.push_back(std::move(word));
      word.clear();
      in_word = false;
      continue;
    }
    in_word = true;
    if (c == '\'') {
      size_t close = s.find('\'', i + 1);
      if (close == std::string_view::npos) return InvalidArgument("unterminated ' quote");
      for (char q : s.substr(i + 1, close - i - 1)) word += q == '$' ? dollar : std::string(1, q);
      i = close;
    } else if (c == '"') {
      size_t j = i + 1;
      for (; j < s.size() && s[j] != '"'; ++j) {
        if (s[j] == '\\' && j + 1 < s.size()) {
          const char next = s[j + 1];
          if (next == '"' || next == '\\') {
            word += next;
            ++j;
            continue;
          }
          if (next == '$') {
            word += dollar;
            ++j;
            continue;
          }
        }
        word += s[j];
      }
      if (j == s.size()) return InvalidArgument("unterminated \" quote");
      i = j;
    } else if (c == '\\' && i + 1 < s.size()) {
      const char next = s[++i];
      word += next == '$' ? dollar : std::string(1, next);
    } else {
      word += c;
    }
  }
  if (in_word || !split) words.push_back(std::move(word));
  return words;
}

Result<DockerfileTemplate> ParseDockerfile(std::string_view text) {
  MOAT_ASSIGN_OR_RETURN(auto instructions, SplitInstructions(text));
  return Parser().Run(instructions);
}

}  // namespace moat::cli
