// kvcodec loadgen: N concurrent clients fetching contexts from a server, for each N of a list.
//
//   kvcodec loadgen --server HOST:PORT --ids A,B,... [--server-pid PID] [--clients 1,4,16,64]
//                   [--total F | --seconds S] [--policy fixed:L] [--json OUT]
//   kvcodec loadgen --store URI --put IN.safetensors [--contexts K] [--levels L] [--chunk-tokens N] ...
//                   (an in-process server over URI, e.g. mem:, with K copies of IN put into it)
//
// Every client is a thread that fetches (fetch_context: its own connection, decoder and
// controller) the ids in turn, starting at its own offset, into one destination it reuses:
// ceil(F / N) fetches each (--total F, default 64), or as many as it can start in S seconds
// (--seconds). Per N: contexts/s, GB/s of decoded KV and of wire bytes, p50/p99 TTFT, failed
// fetches, the fewest and most fetches a client completed and when the first and the last client
// finished (starvation shows as a min far below the max, or a last client far behind the
// first), the server's peak VmRSS sampled every 20 ms from /proc/PID/status (and its VmHWM),
// and the server's CPU time per context served (utime + stime of /proc/PID/stat; only for a
// separate server process).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <mutex>
#include <optional>
#include <sstream>
#include <thread>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "commands.hpp"
#include "kvcodec/io.hpp"
#include "kvcodec/stream.hpp"
#include "stream_cli.hpp"

namespace kvcodec::cli {

namespace {

using Clock = std::chrono::steady_clock;

// The options of `kvcodec loadgen`: a running server (--server, --ids) or an in-process one
// (--store, --put), exactly one.
struct LoadgenArgs {
  std::optional<std::string> server, ids;
  std::optional<long> server_pid;  // default: this process
  std::optional<std::string> store, put;
  int contexts = 4;
  std::vector<int> levels = {4};
  uint32_t chunk_tokens = 256;
  int max_connections = 1024;
  std::vector<int> clients = {1, 4, 16, 64};
  std::optional<int64_t> total;    // default 64
  std::optional<double> seconds;   // instead of --total
  std::string policy = "fixed:lowest";
  int timeout_ms = 10000;
  std::optional<std::string> json;
};

void declare(Command& cmd, LoadgenArgs& o) {
  cmd.option("--server", o.server, "HOST:PORT of a running `kvcodec serve`");
  cmd.option("--ids", o.ids, "comma-separated context ids to fetch (with --server)");
  cmd.option("--server-pid", o.server_pid, "pid of that server, for its memory (VmRSS, VmHWM)", Range{1, INT32_MAX});
  cmd.option("--store", o.store, "serve this store in-process instead (e.g. mem:), filled from --put");
  cmd.option("--put", o.put, "KV cache put --contexts times into --store");
  cmd.option("--contexts", o.contexts, "copies of --put (default 4)", Range{1, 10000});
  cmd.option("--levels", o.levels, "levels of the copies (default 4)", Range{0, kMaxLevel});
  cmd.option("--chunk-tokens", o.chunk_tokens, "chunk tokens of the copies (default 256)", Range{1, kMaxChunkTokens});
  cmd.option("--max-connections", o.max_connections, "in-process server's connection limit (default 1024)",
             Range{1, 65536});
  cmd.option("--clients", o.clients, "comma-separated client counts, 1..256 (default 1,4,16,64)", Range{1, 256});
  cmd.option("--total", o.total, "fetches per round, split evenly over the clients (default 64)", Range{1});
  cmd.option("--seconds", o.seconds, "instead of --total: clients start fetches for this long");
  cmd.option("--policy", o.policy, "fixed:L (default: the lowest stored level) or adaptive");
  cmd.option("--timeout-ms", o.timeout_ms, "client connect and io timeout (default 10000)", Range{1, INT32_MAX});
  cmd.option("--json", o.json, "write every round as JSON");
}

// The usage errors no single option shows; "" when there is none.
std::string check(const LoadgenArgs& a) {
  if (a.server.has_value() == a.store.has_value()) return "give --server (with --ids) or --store (with --put)";
  if (a.server && !a.ids) return "--server needs --ids";
  if (a.store && !a.put) return "--store needs --put";
  if (a.seconds && a.total) return "give --total or --seconds, not both";
  if (a.seconds && !(*a.seconds > 0 && *a.seconds < 1e9)) return "--seconds, --total and --timeout-ms must be positive";
  if (a.clients.empty()) return "--clients is empty";
  return "";
}

// A field of /proc/PID/status in kB ("VmRSS", "VmHWM"); -1 when unreadable.
long proc_status_kb(long pid, const char* field) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  const std::string prefix = std::string(field) + ":";
  while (std::getline(f, line))
    if (line.rfind(prefix, 0) == 0) return std::atol(line.c_str() + prefix.size());
  return -1;
}

struct Round {
  int clients = 0;
  double wall_s = 0;
  uint64_t ok = 0, failed = 0, kv_bytes = 0, wire_bytes = 0;
  std::vector<double> ttft_s;
  uint64_t min_per_client = 0, max_per_client = 0;
  double first_client_done_s = 0, last_client_done_s = 0;
  long rss_peak_kb = -1, hwm_kb = -1;
  double server_cpu_s = -1;  // over the round; -1 when the server is this process
  std::string first_error;
};

// utime + stime of a process, seconds; -1 when unreadable.
double proc_cpu_s(long pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const auto close = stat.rfind(')');  // the command name may hold spaces
  if (close == std::string::npos) return -1;
  std::istringstream rest(stat.substr(close + 2));
  std::string field;
  unsigned long long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && rest >> field; ++i) {
    if (i == 14) utime = std::stoull(field);
    if (i == 15) stime = std::stoull(field);
  }
  return double(utime + stime) / double(::sysconf(_SC_CLK_TCK));
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, size_t(p * double(v.size() - 1) + 0.5))];
}

Round run_round(const FetchOptions& base, const std::vector<std::string>& ids, int clients, uint64_t fetches,
                double seconds, long server_pid, const std::string& policy) {
  Round r;
  r.clients = clients;
  std::vector<uint64_t> done(size_t(clients), 0);
  std::vector<double> finished(size_t(clients), 0);
  const bool external = server_pid != long(::getpid());
  const double cpu0 = external ? proc_cpu_s(server_pid) : -1;
  std::mutex mu;
  std::atomic<bool> sampling{true};
  std::thread sampler([&] {
    while (sampling) {
      r.rss_peak_kb = std::max(r.rss_peak_kb, proc_status_kb(server_pid, "VmRSS"));
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  });
  const auto t0 = Clock::now();
  const auto deadline = t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c)
    threads.emplace_back([&, c] {
      KVCache out;  // reused: a client holds one context at a time
      for (size_t k = size_t(c), n = 0; fetches ? n < fetches : Clock::now() < deadline; ++k, ++n) {
        FetchOptions fo = base;
        fo.id = ids[k % ids.size()];
        fo.on_manifest = [&](const Manifest& m, ControllerConfig& cc) {
          return policy == "fixed:lowest" ? Status::Ok() : resolve_fixed_level(policy, m, &cc);
        };
        FetchReport rep;
        Status s = fetch_context(fo, &out, &rep);
        std::lock_guard lock(mu);
        if (s.ok()) {
          ++r.ok;
          ++done[size_t(c)];
          r.kv_bytes += out.data.size();
          r.ttft_s.push_back(rep.ttft_s);
        } else {
          ++r.failed;
          if (r.first_error.empty()) r.first_error = s.to_string();
        }
        r.wire_bytes += rep.bytes;
      }
      finished[size_t(c)] = std::chrono::duration<double>(Clock::now() - t0).count();
    });
  for (auto& t : threads) t.join();
  r.wall_s = std::chrono::duration<double>(Clock::now() - t0).count();
  sampling = false;
  sampler.join();
  r.hwm_kb = proc_status_kb(server_pid, "VmHWM");
  if (external && cpu0 >= 0) r.server_cpu_s = proc_cpu_s(server_pid) - cpu0;
  r.first_client_done_s = *std::min_element(finished.begin(), finished.end());
  r.last_client_done_s = *std::max_element(finished.begin(), finished.end());
  r.min_per_client = *std::min_element(done.begin(), done.end());
  r.max_per_client = *std::max_element(done.begin(), done.end());
  return r;
}

nlohmann::json round_json(const Round& r) {
  return {{"clients", r.clients},
          {"wall_s", r.wall_s},
          {"fetches", r.ok},
          {"failed", r.failed},
          {"contexts_per_s", r.ok / r.wall_s},
          {"kv_gbps", double(r.kv_bytes) / r.wall_s / 1e9},
          {"wire_gbps", double(r.wire_bytes) / r.wall_s / 1e9},
          {"ttft_p50_ms", percentile(r.ttft_s, 0.5) * 1e3},
          {"ttft_p99_ms", percentile(r.ttft_s, 0.99) * 1e3},
          {"min_per_client", r.min_per_client},
          {"max_per_client", r.max_per_client},
          {"first_client_done_s", r.first_client_done_s},
          {"last_client_done_s", r.last_client_done_s},
          {"server_cpu_ms_per_context", r.server_cpu_s >= 0 && r.ok ? r.server_cpu_s * 1e3 / double(r.ok) : -1.0},
          {"server_rss_peak_mb", double(r.rss_peak_kb) / 1024},
          {"server_hwm_mb", double(r.hwm_kb) / 1024},
          {"first_error", r.first_error}};
}

// --store mode: K copies of IN put into URI and served in this process.
StatusOr<std::unique_ptr<Server>> start_local(const LoadgenArgs& a, std::vector<std::string>* ids,
                                              std::shared_ptr<Store>* keep) {
  KVCODEC_ASSIGN_OR_RETURN(auto store, open_cli_store(*a.store));
  KVCODEC_ASSIGN_OR_RETURN(KVCache kv, load_kv(*a.put));
  PutOptions po;
  po.levels = a.levels.empty() ? std::vector<int>{4} : a.levels;
  po.chunk_tokens = a.chunk_tokens;
  po.measure = false;
  for (int i = 0; i < a.contexts; ++i) {
    ids->push_back("loadgen-" + std::to_string(i));
    KVCODEC_RETURN_IF_ERROR(put_context(*store, ids->back(), kv.view(), po).status());
  }
  *keep = std::shared_ptr<Store>(std::move(store));
  ServerOptions so;
  so.max_connections = a.max_connections;
  return Server::start(*keep, so);
}

}  // namespace

int cmd_loadgen(int argc, char** argv) {
  Command cmd("loadgen",
              "kvcodec loadgen (--server HOST:PORT --ids A,B,... [--server-pid PID] | --store URI --put IN "
              "[--contexts K] [--levels L] [--chunk-tokens N]) [--clients LIST] [--total F | --seconds S] "
              "[--policy fixed:L] [--json OUT]");
  LoadgenArgs a;
  declare(cmd, a);
  if (auto exit = cmd.parse(argc, argv)) return *exit;
  if (std::string error = check(a); !error.empty()) return cmd.usage_error(error);
  const double seconds = a.seconds.value_or(0);
  const int64_t total = a.total.value_or(64);
  long server_pid = a.server_pid.value_or(long(::getpid()));

  FetchOptions base;
  std::vector<std::string> ids;
  std::shared_ptr<Store> local_store;
  std::unique_ptr<Server> local;
  if (a.store) {
    auto s = start_local(a, &ids, &local_store);
    if (!s.ok()) return cmd.fail(s.status());
    local = std::move(*s);
    base.port = local->port();
    server_pid = long(::getpid());
  } else {
    const std::string& server = *a.server;
    const auto colon = server.rfind(':');
    if (colon == std::string::npos) return cmd.usage_error("--server must be HOST:PORT");
    base.host = server.substr(0, colon);
    base.port = uint16_t(std::atoi(server.c_str() + colon + 1));
    const std::string& list = *a.ids;
    for (size_t p = 0; p <= list.size();) {
      size_t q = std::min(list.find(',', p), list.size());
      if (q > p) ids.push_back(list.substr(p, q - p));
      p = q + 1;
    }
    if (ids.empty()) return cmd.usage_error("--ids is empty");
  }
  base.controller.slo_s = 10;
  base.controller.policy = Policy::kFixed;
  base.controller.plan = {0};  // the lowest stored level unless --policy fixed:L names another
  const std::string& policy = a.policy;
  if (policy == "adaptive") base.controller.policy = Policy::kAdaptive;
  base.io_timeout_ms = a.timeout_ms;
  base.connect_timeout_ms = a.timeout_ms;  // hundreds of clients on a few cores: accept is slow too

  nlohmann::json rounds = nlohmann::json::array();
  std::printf("%7s %7s %6s %7s %8s %9s %9s %9s %11s %13s %9s %8s\n", "clients", "fetches", "failed", "ctx/s", "KV GB/s",
              "wire GB/s", "TTFT p50", "TTFT p99", "per-client", "client done", "server MB", "srv ms/ctx");
  for (const int n : a.clients) {
    const uint64_t per_client = a.seconds ? 0 : uint64_t((total + n - 1) / n);
    Round r = run_round(base, ids, n, per_client, seconds, server_pid, policy);
    nlohmann::json j = round_json(r);
    rounds.push_back(j);
    std::printf("%7d %7llu %6llu %7.1f %8.3f %9.3f %7.0fms %7.0fms %5llu..%-5llu %5.1f..%5.1fs %9.1f %8.1f\n",
                r.clients, static_cast<unsigned long long>(r.ok), static_cast<unsigned long long>(r.failed),
                j["contexts_per_s"].get<double>(), j["kv_gbps"].get<double>(), j["wire_gbps"].get<double>(),
                j["ttft_p50_ms"].get<double>(), j["ttft_p99_ms"].get<double>(),
                static_cast<unsigned long long>(r.min_per_client), static_cast<unsigned long long>(r.max_per_client),
                r.first_client_done_s, r.last_client_done_s, j["server_rss_peak_mb"].get<double>(),
                j["server_cpu_ms_per_context"].get<double>());
    if (!r.first_error.empty()) std::printf("        first error: %s\n", r.first_error.c_str());
    std::fflush(stdout);
  }
  if (a.json) {
    std::ofstream f(*a.json);
    f << nlohmann::json{{"ids", ids}, {"seconds", seconds}, {"total", total}, {"rounds", rounds}}.dump(1) << "\n";
    if (!f) return cmd.fail(IoError("cannot write " + *a.json));
  }
  return 0;
}

}  // namespace kvcodec::cli
