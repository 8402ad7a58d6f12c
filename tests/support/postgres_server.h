// PostgresServer: a private PostgreSQL 15 for one test (FLEET.md §7). A temp dir under /tmp
// holds the cluster (initdb), the unix socket and the logs; the server listens on a free
// loopback port and is a child of the test, so a test that dies takes its server with it (the
// server gets SIGKILL when the thread that started it exits: start it from the test's main
// thread). As root the binaries run as the `postgres` user (initdb and postgres refuse root);
// otherwise as the current user. The system's own cluster, if any, is never touched.
#pragma once

#include <string>

#include "common/child_process.h"
#include "common/status.h"

namespace moat::test_support {

class PostgresServer {
 public:
  explicit PostgresServer(std::string database = "moat");
  // Stops the server (fast, else SIGKILL) and removes the temp dir, whatever state it is in.
  ~PostgresServer();
  PostgresServer(const PostgresServer&) = delete;
  PostgresServer& operator=(const PostgresServer&) = delete;

  // The first call makes the cluster, picks the port, starts the server and creates the
  // database; later calls start it again on the same data and port. Returns once it accepts
  // connections. Fails saying so when postgresql-15 is not installed.
  Status Start();
  // Fast shutdown (SIGINT, as `pg_ctl stop -m fast`): sessions are ended, a checkpoint written.
  Status Stop();
  // Immediate shutdown (SIGQUIT, as `pg_ctl stop -m immediate`): sessions end at once, no
  // checkpoint; the next Start recovers from the WAL, as after a crash.
  Status Kill();
  bool running();

  // postgresql://postgres@127.0.0.1:<port>/<database>
  std::string conninfo() const;
  int port() const { return port_; }
  // The temp dir: data/, the socket, initdb.log, server.log.
  const std::string& dir() const { return dir_; }

 private:
  Status Prepare();
  Status StartOnce(bool* port_taken);
  Status StopWith(int signal, const char* how);
  Status CreateDatabase();

  std::string database_;
  std::string bin_;
  std::string dir_;
  int port_ = 0;
  bool initialized_ = false;    // initdb done
  bool database_made_ = false;  // CREATE DATABASE done
  uid_t uid_ = 0;               // whom the binaries run as (as root: postgres)
  gid_t gid_ = 0;
  bool drop_privileges_ = false;
  ChildProcess postmaster_;
};

}  // namespace moat::test_support
