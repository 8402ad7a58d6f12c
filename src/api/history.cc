#include "api/history.h"

#include <algorithm>
#include <chrono>
#include <nlohmann/json.hpp>

#include "common/log.h"

namespace moat::api {
namespace {

thread_local const Actor* tls_actor = nullptr;

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

RateLimiter& FailureLimiter() {
  static RateLimiter limiter(1.0, 5.0);
  return limiter;
}

}  // namespace

HistoryLog::Counters& HistoryLog::counters() {
  static Counters c;
  return c;
}

const Actor* CurrentActor() {
  return tls_actor;
}

ScopedActor::ScopedActor(const Actor* actor) : previous_(tls_actor) {
  tls_actor = actor;
}
ScopedActor::~ScopedActor() {
  tls_actor = previous_;
}

void OutputTail::Append(std::string_view data) {
  bytes_ += static_cast<int64_t>(data.size());
  if (head_.size() < kOutputKeep) {
    size_t take = std::min(kOutputKeep - head_.size(), data.size());
    head_.append(data.substr(0, take));
    data.remove_prefix(take);
  }
  if (data.empty()) return;
  tail_.append(data);
  if (tail_.size() > 2 * kOutputKeep) tail_.erase(0, tail_.size() - kOutputKeep);
}

void OutputTail::Fill(std::string* head, std::string* tail, int64_t* bytes) const {
  *head = head_;
  *tail = tail_.size() > kOutputKeep ? tail_.substr(tail_.size() - kOutputKeep) : tail_;
  *bytes = bytes_;
}

void HistoryLog::Failed(std::string_view what, const Status& s) {
  counters().errors.fetch_add(1);
  unsigned long suppressed = 0;
  if (FailureLimiter().Allow(&suppressed)) {
    LogWarn("api.history_write_failed",
            {{"what", what}, {"error", s.ToString()}, {"suppressed", suppressed}});
  }
}

void HistoryLog::Recorded(const store::SandboxRecord& r, const std::string& parent_kind,
                          const std::string& parent_id) {
  if (!store_) return;
  store::HistoryRecord h;
  h.sandbox_id = r.id;
  h.team_id = r.team_id;
  h.template_id = r.template_id;
  if (const Actor* a = CurrentActor()) {
    h.key_id = a->key_id;
    h.key_name = a->key_name;
  }
  h.metadata = r.metadata;
  h.host_id = r.host_id;
  h.cpu_count = r.cpu_count;
  h.memory_mb = r.memory_mb;
  h.parent_kind = parent_kind;
  h.parent_id = parent_id;
  h.created_at_ms = r.started_at_ms;
  h.state = "creating";
  if (Status s = store_->InsertHistory(h); !s.ok()) return Failed("history", s);
  counters().history.fetch_add(1);
}

void HistoryLog::Started(const store::SandboxRecord& r, int64_t duration_ms) {
  if (!store_) return;
  nlohmann::json detail = {{"templateID", r.template_id}};
  store::SandboxEvent e{.sandbox_id = r.id,
                        .team_id = r.team_id,
                        .at_ms = r.started_at_ms,
                        .kind = "created",
                        .duration_ms = duration_ms,
                        .detail = detail.dump()};
  if (Status s = store_->AppendSandboxEvent(e); !s.ok()) {
    Failed("event", s);
  } else {
    counters().event.fetch_add(1);
  }
  if (Status s = store_->SetHistoryState(r.id, "running", r.host_id); !s.ok()) {
    Failed("history state", s);
  }
}

void HistoryLog::Event(const std::string& sandbox_id, const std::string& team_id,
                       std::string_view kind, int64_t duration_ms, const std::string& detail_json,
                       std::string_view state, const std::string& host_id) {
  if (!store_) return;
  store::SandboxEvent e{.sandbox_id = sandbox_id,
                        .team_id = team_id,
                        .at_ms = NowMs(),
                        .kind = std::string(kind),
                        .duration_ms = duration_ms,
                        .detail = detail_json};
  if (Status s = store_->AppendSandboxEvent(e); !s.ok()) {
    Failed("event", s);
  } else {
    counters().event.fetch_add(1);
  }
  if (!state.empty()) {
    if (Status s = store_->SetHistoryState(sandbox_id, std::string(state), host_id); !s.ok()) {
      Failed("history state", s);
    }
  }
}

void HistoryLog::Ended(const std::string& sandbox_id, const std::string& team_id,
                       const char* reason, const std::string& detail) {
  if (!store_) return;
  std::string by;
  std::string state = "killed";
  if (std::string_view(reason) == store::kEndKilled) {
    if (const Actor* a = CurrentActor()) by = a->key_name;
  } else if (std::string_view(reason) == store::kEndHostLost) {
    state = "lost";
  } else if (std::string_view(reason) == store::kEndError) {
    state = "error";
  }
  int64_t now = NowMs();
  auto ended = store_->EndHistory(sandbox_id, now, state, reason, by, detail);
  if (!ended.ok()) return Failed("history end", ended.status());
  if (!*ended) return;  // ended before (or not recorded): its first end stands
  nlohmann::json d = nlohmann::json::object();
  if (!by.empty()) d["by"] = by;
  if (!detail.empty()) d["detail"] = detail;
  store::SandboxEvent e{
      .sandbox_id = sandbox_id,
      .team_id = team_id,
      .at_ms = now,
      .kind = reason,
      .detail = d.empty() ? "" : d.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)};
  if (Status s = store_->AppendSandboxEvent(e); !s.ok()) {
    Failed("event", s);
  } else {
    counters().event.fetch_add(1);
  }
}

void HistoryLog::Console(const std::string& sandbox_id, std::string text) {
  if (!store_ || text.empty()) return;
  if (text.size() > kConsoleKeep) text.erase(0, text.size() - kConsoleKeep);
  if (Status s = store_->SaveConsoleLog(sandbox_id, text); !s.ok()) {
    Failed("console", s);
  } else {
    counters().console.fetch_add(1);
  }
}

int64_t HistoryLog::CommandStarted(store::CommandRecord c) {
  if (!store_) return 0;
  if (c.command.size() > OutputTail::kOutputKeep) c.command.resize(OutputTail::kOutputKeep);
  if (c.started_at_ms == 0) c.started_at_ms = NowMs();
  auto id = store_->StartCommand(c);
  if (!id.ok()) {
    Failed("command", id.status());
    return 0;
  }
  counters().command.fetch_add(1);
  return *id;
}

void HistoryLog::CommandFinished(const store::CommandRecord& c) {
  if (!store_ || c.id == 0) return;
  if (Status s = store_->FinishCommand(c); !s.ok()) Failed("command end", s);
}

void HistoryLog::Audit(std::string_view action, const std::string& target, int status,
                       const std::string& detail_json) {
  if (!store_) return;
  store::AuditRecord a;
  a.at_ms = NowMs();
  if (const Actor* actor = CurrentActor()) {
    a.team_id = actor->team_id;
    a.key_id = actor->key_id;
    a.key_name = actor->key_name;
    a.source = actor->source;
    a.request_id = actor->request_id;
  }
  a.action = std::string(action);
  a.target = target;
  a.outcome = status > 0 && status < 400 ? "ok" : "error";
  a.status = status;
  a.detail = detail_json;
  if (Status s = store_->AppendAudit(a); !s.ok()) {
    Failed("audit", s);
  } else {
    counters().audit.fetch_add(1);
  }
}

}  // namespace moat::api
