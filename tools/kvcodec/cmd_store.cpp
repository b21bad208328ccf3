// kvcodec store: list and remove the contexts of a store (store.hpp).
//
//   kvcodec store ls --store URI [--json]
//   kvcodec store rm --store URI --id NAME
#include <cstdio>
#include <cstring>

#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "commands.hpp"
#include "kvcodec/store.hpp"
#include "stream_cli.hpp"

namespace kvcodec::cli {

namespace {

constexpr const char* kStoreHelp = "file:DIR, redis://HOST:PORT[/DB] or redis-cluster://HOST:PORT[,...]";

// The options of `kvcodec store ls` and `kvcodec store rm`.
struct StoreArgs {
  std::string store;
  std::string id;     // rm
  bool json = false;  // ls
};

int store_ls(int argc, char** argv) {
  Command cmd("store ls", "kvcodec store ls --store URI [--json]");
  StoreArgs a;
  cmd.option("--store", a.store, kStoreHelp);
  cmd.flag("--json", a.json, "one JSON object: {\"contexts\": [{\"id\", \"tokens\", \"levels\", \"bytes\"}...]}");
  if (auto exit = cmd.parse(argc, argv)) return *exit;
  if (a.store.empty()) return cmd.usage_error("--store is required");
  auto store = open_cli_store(a.store);
  if (!store.ok()) return cmd.fail(store.status());
  auto ids = list_contexts(**store);
  if (!ids.ok()) return cmd.fail(ids.status());
  nlohmann::json out = {{"store", (*store)->uri()}, {"contexts", nlohmann::json::array()}};
  if (!a.json) std::printf("%-32s %8s %8s %14s\n", "id", "tokens", "levels", "bytes");
  for (const std::string& id : *ids) {
    auto m = get_manifest(**store, id);
    if (!m.ok()) continue;  // removed or expired since the listing
    uint64_t bytes = 0;
    for (const auto& l : m->levels) bytes += l.frame_bytes();
    if (a.json) {
      out["contexts"].push_back({{"id", id}, {"tokens", m->shape.tokens}, {"levels", m->levels.size()}, {"bytes", bytes}});
    } else {
      std::printf("%-32s %8u %8zu %14llu\n", id.c_str(), m->shape.tokens, m->levels.size(),
                  static_cast<unsigned long long>(bytes));
    }
  }
  if (a.json) std::printf("%s\n", out.dump().c_str());
  return 0;
}

int store_rm(int argc, char** argv) {
  Command cmd("store rm", "kvcodec store rm --store URI --id NAME");
  StoreArgs a;
  cmd.option("--store", a.store, kStoreHelp);
  cmd.option("--id", a.id, "context to remove (its manifest first, then every level's head and chunks)");
  if (auto exit = cmd.parse(argc, argv)) return *exit;
  if (a.store.empty() || a.id.empty()) return cmd.usage_error("--store and --id are required");
  auto store = open_cli_store(a.store);
  if (!store.ok()) return cmd.fail(store.status());
  if (Status s = remove_context(**store, a.id); !s.ok()) return cmd.fail(s);
  std::printf("removed '%s' from %s\n", a.id.c_str(), (*store)->uri().c_str());
  return 0;
}

}  // namespace

int cmd_store(int argc, char** argv) {
  const char* usage = "usage: kvcodec store ls --store URI [--json]\n       kvcodec store rm --store URI --id NAME\n";
  if (argc >= 2 && !std::strcmp(argv[1], "ls")) return store_ls(argc - 1, argv + 1);
  if (argc >= 2 && !std::strcmp(argv[1], "rm")) return store_rm(argc - 1, argv + 1);
  if (argc >= 2 && (!std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h"))) {
    std::fputs(usage, stdout);
    return 0;
  }
  std::fprintf(stderr, "kvcodec store: error: expected 'ls' or 'rm'\n%s", usage);
  return 2;
}

}  // namespace kvcodec::cli
