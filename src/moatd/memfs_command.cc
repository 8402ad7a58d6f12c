#include "moatd/memfs_command.h"

namespace moat::api {

void AddMemfsCommand(CLI::App& app, MemfsCommand& command) {
  auto& c = command.config;
  auto* cmd = app.add_subcommand(
      "memfs",
      "serve snapshot memory files whose chunks are fetched on demand (FUSE; the agent "
      "starts it)");
  command.app = cmd;
  cmd->add_option("--mount", c.mount_dir, "where the files appear")->required();
  cmd->add_option("--control", c.control_dir,
                  "the agent's control directory (<name>.json in, <name>.trace and stats.json "
                  "out)")
      ->required();
  cmd->add_option("--cache-dir", c.cache_dir, "the host's chunk cache for memory files")
      ->required();
  cmd->add_option("--cache-mib", c.cache_mib,
                  "chunk cache bound (chunks of open files may exceed it)")
      ->capture_default_str();
  cmd->add_option("--snapshot-store", c.snapshot_store, "s3://bucket/prefix of the snapshots");
  cmd->add_option("--s3-endpoint", c.s3_endpoint, "http(s)://host[:port] of the S3 server");
  cmd->add_option("--s3-region", c.s3_region, "the S3 region")->capture_default_str();
  cmd->add_option("--s3-credentials-file", c.s3_credentials_file,
                  "AWS credentials file (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY win when set)");
  cmd->add_option("--local-store", c.local_store, "a directory as the store (tests)");
  cmd->add_option("--trace-window-s", c.trace_window_s,
                  "seconds after a file's first open whose reads make its prefetch trace")
      ->capture_default_str();
  cmd->add_option("--prefetch-threads", c.prefetch_threads,
                  "threads fetching prefetch and fill chunks")
      ->capture_default_str();
  cmd->add_option("--fill-threads", c.fill_threads, "of those, how many may fill at once")
      ->capture_default_str();
  cmd->add_option("--fill-delay-ms", c.fill_delay_ms,
                  "milliseconds after a file's open before its fill (every other chunk) starts")
      ->capture_default_str();
  cmd->add_option("--max-threads", c.max_threads, "FUSE request threads at most")
      ->capture_default_str();
  cmd->add_flag("--foreground", c.foreground,
                "stay in the foreground (default: detach once the mount is live)");
}

int RunMemfsCommand(const MemfsCommand& command) {
  return memfs::RunMemfsServer(command.config);
}

}  // namespace moat::api
