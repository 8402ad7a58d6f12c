// `moat template build` reads the Dockerfile on the client, as E2B's SDK does (fromDockerfile,
// shared/E2B-TEMPLATES.md §3): the server never sees a Dockerfile, only the base image and a list
// of template steps. One stage, and only the instructions a template step can carry; anything
// else is refused naming its line, so that nothing a Dockerfile asks for is silently dropped
// (EXPOSE, VOLUME, LABEL and MAINTAINER, which change nothing in a sandbox, become notes).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace moat::cli {

// One step of POST /v2/templates/{templateID}/builds/{buildID} (E2B-TEMPLATES §2.4, §3):
//   RUN [command]                 COPY [source, destination, owner or "", mode or ""]
//   ENV [k1, v1, k2, v2, …]       WORKDIR [path]        USER [name]
struct TemplateStep {
  std::string type;
  std::vector<std::string> args;
  int line = 0;  // the Dockerfile line it comes from; 0 for the steps the parser adds
};

struct DockerfileTemplate {
  std::string from_image;
  // Starts with USER root, WORKDIR / (Docker's defaults) and ends with USER user and
  // WORKDIR /home/user (E2B's) when the file sets neither, as the SDK wraps them.
  std::vector<TemplateStep> steps;
  std::string start_cmd;  // CMD or ENTRYPOINT (the last one); empty when there is none
  std::string ready_cmd;  // "sleep 20" with a start command (the SDK's waitForTimeout(20000))
  // What was ignored, one line each: "Dockerfile line 7: EXPOSE is ignored".
  std::vector<std::string> notes;
};

// Parses a Dockerfile's text. invalid_argument names the line: "Dockerfile line 9: HEALTHCHECK is
// not supported". COPY sources are checked lexically (relative, inside the context) and sent
// cleaned ("./app/" → "app"); whether they exist is the build context's business.
Result<DockerfileTemplate> ParseDockerfile(std::string_view text);

// Docker's words: whitespace separates them; '…' is literal; in "…" a backslash escapes " and \;
// outside quotes it escapes the next character. `split` false keeps the whitespace (one word: the
// legacy `ENV KEY the rest of the line`). `shell_value` keeps the value as the server's shell
// expansion must see it (E2B-TEMPLATES §3, ENV): `\$` stays escaped, and a `$` in single quotes
// is escaped. invalid_argument for an unterminated quote.
Result<std::vector<std::string>> DockerfileWords(std::string_view text, bool split = true,
                                                 bool shell_value = false);

}  // namespace moat::cli
