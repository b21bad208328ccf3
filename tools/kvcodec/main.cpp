// The kvcodec command-line program: dispatches to one subcommand per file (cmd_*.cpp).
#include <cstdio>
#include <cstring>
#include <exception>

#include "commands.hpp"
#include "kvcodec/version.hpp"

namespace {

struct Command {
  const char* name;
  int (*run)(int, char**);
  const char* summary;
};

const Command kCommands[] = {
    {"demo", kvcodec::cli::cmd_demo, "stream a context through an emulated link (the main job)"},
    {"encode", kvcodec::cli::cmd_encode, "compress a KV cache file into a .kvc frame"},
    {"decode", kvcodec::cli::cmd_decode, "decompress a .kvc frame into a safetensors file"},
    {"inspect", kvcodec::cli::cmd_inspect, "describe a .kvc frame (--json)"},
    {"bench", kvcodec::cli::cmd_bench, "measure encode/decode speed and size against zstd"},
    {"kv-dump", kvcodec::cli::cmd_kv_dump, "prefill a model on text (or synthesize) and export its KV"},
    {"calibrate", kvcodec::cli::cmd_calibrate, "calibrate a transform-coding profile of a model (--profile)"},
    {"eval", kvcodec::cli::cmd_eval, "measure model quality of every scheme on real caches"},
    {"put", kvcodec::cli::cmd_put, "store a context as multi-level chunks"},
    {"serve", kvcodec::cli::cmd_serve, "serve stored contexts over TCP through an emulated link"},
    {"fetch", kvcodec::cli::cmd_fetch, "fetch a context with the adaptive controller"},
    {"loadgen", kvcodec::cli::cmd_loadgen, "N concurrent clients fetching from a server: throughput, TTFT, memory"},
    {"store", kvcodec::cli::cmd_store, "list (ls) or remove (rm) the contexts of a store"},
    {"sweep", kvcodec::cli::cmd_sweep, "simulate strategies over bandwidth/delay grids"},
};

void usage(FILE* f) {
  std::fprintf(f, "kvcodec %s: KV-cache codec and streaming\n\nusage: kvcodec <command> [options]\n\n",
               kvcodec::kLibraryVersion);
  for (const auto& c : kCommands) std::fprintf(f, "  %-9s %s\n", c.name, c.summary);
  std::fprintf(f, "\n'kvcodec <command> --help' lists a command's options.\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  if (!std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "help")) {
    usage(stdout);
    return 0;
  }
  if (!std::strcmp(argv[1], "--version")) {
    std::printf("kvcodec %s\n", kvcodec::kLibraryVersion);
    return 0;
  }
  for (const auto& c : kCommands) {
    if (!std::strcmp(argv[1], c.name)) {
      try {
        return c.run(argc - 1, argv + 1);
      } catch (const std::exception& e) {  // last resort: never die with an uncaught exception
        std::fprintf(stderr, "kvcodec %s: error: internal: %s\n", c.name, e.what());
        return 1;
      }
    }
  }
  std::fprintf(stderr, "kvcodec: error: unknown command '%s' (try 'kvcodec --help')\n", argv[1]);
  return 2;
}
