// `moat template build|list|info|delete`: custom templates over the control API
// (shared/E2B-TEMPLATES.md). `build` reads the Dockerfile here, as E2B's SDK does, and sends moatd
// the base image and template steps; the files its COPY steps need go up as tar.gz uploads.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>

#include "cli/api_client.h"
#include "cli/commands.h"
#include "cli/dockerfile.h"
#include "cli/output.h"
#include "cli/template_archive.h"
#include "cli/template_client.h"
#include "cli/template_output.h"
#include "cli/terminal.h"
#include "common/fs.h"

namespace moat::cli {
namespace {

struct TemplateOptions {
  bool json = false;
  std::string id;  // info, delete
  // build
  std::string dockerfile;
  std::string context;
  std::string name;
  int cpu_count = 2;
  int memory_mb = 1024;
  int min_free_disk_mb = -1;  // -1: not sent
  bool no_cache = false;
  bool dry_run = false;
};

constexpr const char* kBuildFooter =
    "The Dockerfile is read here, as E2B's SDK reads it: one stage; FROM, RUN, COPY and ADD of\n"
    "local files (--chown, --chmod), ENV, ARG, WORKDIR, USER, CMD or ENTRYPOINT (the start\n"
    "command, ready after 20 s). EXPOSE, VOLUME, LABEL and MAINTAINER are ignored; any other\n"
    "instruction is refused. COPY sources are relative to CONTEXT_DIR and may not leave it;\n"
    "<CONTEXT_DIR>/.dockerignore applies (*, ?, [...], ** and ! exceptions, as in Docker).\n";

// The build's log on stdout (warnings and errors on stderr) and, on a terminal, one status line
// under it: the step the builder is on and the time so far.
class BuildPrinter {
 public:
  BuildPrinter() : tty_(::isatty(1) == 1), start_(std::chrono::steady_clock::now()) {}
  ~BuildPrinter() { ClearStatus(); }
  BuildPrinter(const BuildPrinter&) = delete;
  BuildPrinter& operator=(const BuildPrinter&) = delete;

  void Log(const BuildLogLine& line) {
    ClearStatus();
    FILE* out = line.level == "warn" || line.level == "error" ? stderr : stdout;
    std::fprintf(out, "%s\n", FormatBuildLogLine(line).c_str());
    std::fflush(out);
    if (auto label = BuildProgressLabel(line.message)) step_ = *label;
    DrawStatus();
  }
  void Tick() {
    ClearStatus();
    DrawStatus();
  }

 private:
  void ClearStatus() {
    if (!drawn_) return;
    std::fputs("\r\033[K", stdout);
    std::fflush(stdout);
    drawn_ = false;
  }
  void DrawStatus() {
    if (!tty_) return;
    auto elapsed =
        std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - start_)
            .count();
    std::string text =
        (step_.empty() ? std::string("building") : step_) + " (" + std::to_string(elapsed) + "s)";
    // One terminal line, cut at a UTF-8 boundary, so that \r can take it back.
    const size_t width = TerminalSize(1).value_or(WindowSize{}).cols;
    if (width > 1 && text.size() >= width) {
      size_t cut = width - 2;
      while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
      text = text.substr(0, cut) + "…";
    }
    std::fputs(text.c_str(), stdout);
    std::fflush(stdout);
    drawn_ = true;
  }

  bool tty_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_;
  std::string step_;
};

std::string DirName(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

// -f, CONTEXT_DIR and --name as the build uses them: the Dockerfile defaults to
// CONTEXT_DIR/e2b.Dockerfile, else CONTEXT_DIR/Dockerfile; the context to the Dockerfile's
// directory; the name to the context's base name.
Status ResolvePaths(TemplateOptions& o) {
  if (o.dockerfile.empty()) {
    const std::string dir = o.context.empty() ? "." : o.context;
    for (const char* candidate : {"e2b.Dockerfile", "Dockerfile"}) {
      if (PathExists(dir + "/" + candidate)) {
        o.dockerfile = dir + "/" + candidate;
        break;
      }
    }
    if (o.dockerfile.empty()) {
      return InvalidArgument("no e2b.Dockerfile or Dockerfile in " + dir + ": name one with -f");
    }
  }
  if (o.context.empty()) o.context = DirName(o.dockerfile);
  return Status::Ok();
}

int Build(TemplateOptions o) {
  Status resolved = ResolvePaths(o);
  if (!resolved.ok()) return ReportError(resolved);
  auto text = ReadFile(o.dockerfile);
  if (!text.ok()) return ReportError(text.status());
  auto dockerfile = ParseDockerfile(*text);
  if (!dockerfile.ok()) return ReportError(dockerfile.status().Annotate(o.dockerfile));
  for (const auto& note : dockerfile->notes) std::fprintf(stderr, "moat: %s\n", note.c_str());
  auto context = BuildContext::Open(o.context);
  if (!context.ok()) return ReportError(context.status());
  if (o.name.empty()) o.name = TemplateNameFromDir(context->dir());
  if (o.name.empty()) {
    return ReportError(InvalidArgument("no template name can be made from " + context->dir() +
                                       ": name it with --name"));
  }

  if (o.dry_run) {
    auto copies = PrepareCopies(*context, *dockerfile);
    if (!copies.ok()) return ReportError(copies.status());
    json out = {{"name", o.name},
                {"context", context->dir()},
                {"build", BuildStartBody(*dockerfile, *copies, o.no_cache)}};
    PrintJson(out);
    return 0;
  }

  auto config = ApiConfigFromEnv();
  if (!config.ok()) return ReportError(config.status());
  ApiClient api(std::move(*config));
  TemplateBuildOptions options{.name = o.name,
                               .cpu_count = o.cpu_count,
                               .memory_mb = o.memory_mb,
                               .min_free_disk_mb = std::nullopt,
                               .no_cache = o.no_cache,
                               .poll_interval = kBuildPollInterval};
  if (o.min_free_disk_mb >= 0) options.min_free_disk_mb = o.min_free_disk_mb;
  Result<TemplateBuildResult> built = Status::Ok();
  {
    BuildPrinter printer;
    BuildObserver observer{.log = [&printer](const BuildLogLine& l) { printer.Log(l); },
                           .polled = [&printer] { printer.Tick(); }};
    built = BuildTemplate(api, *context, *dockerfile, options, observer);
  }
  if (!built.ok()) return ReportError(built.status());
  std::printf("template %s is ready: %s (build %s)\n", built->name.c_str(),
              built->template_id.c_str(), built->build_id.c_str());
  return 0;
}

}  // namespace

Runner AddTemplate(CLI::App& app) {
  auto o = std::make_shared<TemplateOptions>();
  auto* tmpl = app.add_subcommand("template", "build, list, inspect and delete templates");
  tmpl->require_subcommand(1);

  auto* build = tmpl->add_subcommand("build", "build a template from a Dockerfile");
  build->add_option("-f,--file", o->dockerfile,
                    "the Dockerfile (default: CONTEXT_DIR/e2b.Dockerfile, else "
                    "CONTEXT_DIR/Dockerfile)");
  build->add_option("context", o->context,
                    "CONTEXT_DIR, where COPY sources are (default: the Dockerfile's directory)");
  build->add_option("--name", o->name,
                    "[namespace/]name[:tag] (default: CONTEXT_DIR's name, lower-cased)");
  build->add_option("--cpu", o->cpu_count, "vCPUs of the template's sandboxes")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  build->add_option("--memory-mb", o->memory_mb, "memory of the template's sandboxes, MiB")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  build
      ->add_option("--min-free-disk-mb", o->min_free_disk_mb,
                   "free disk space, MiB, the sandboxes get on top of the built files")
      ->check(CLI::NonNegativeNumber);
  build->add_flag("--no-cache", o->no_cache, "rebuild every step: reuse no cached layer");
  build->add_flag("--dry-run", o->dry_run,
                  "print the build the Dockerfile makes (steps, file hashes) and send nothing");
  build->footer(kBuildFooter);

  auto* list = AddJsonLeaf(*tmpl, "list", "list your templates", o->json);
  auto* info = AddJsonLeaf(*tmpl, "info", "show a template and its builds", o->json);
  info->add_option("template", o->id, "template name or ID")->required();
  auto* remove = AddJsonLeaf(*tmpl, "delete", "delete a template", o->json);
  remove->add_option("template", o->id, "template name or ID")->required();

  return [=] {
    if (build->parsed()) return Build(*o);
    return RunControlCall(o->json, [&](ApiClient& api, std::string* text) -> Result<json> {
      if (list->parsed()) {
        MOAT_ASSIGN_OR_RETURN(json r, ListTemplates(api));
        *text = FormatTemplateList(r);
        return r;
      }
      if (info->parsed()) {
        MOAT_ASSIGN_OR_RETURN(json r, GetTemplate(api, o->id));
        *text = FormatTemplateInfo(r);
        return r;
      }
      MOAT_RETURN_IF_ERROR(DeleteTemplate(api, o->id));
      *text = "deleted " + o->id + "\n";
      return json(nullptr);
    });
  };
}

}  // namespace moat::cli
