// kvcodec bench: end-to-end encode/decode speed and size on a Llama-3-8B-shaped cache, with zstd -3
// on the same raw bytes measured in the same run as the baseline.
#include <zstd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <optional>
#include <string>
#include <vector>

#include "cli.hpp"
#include "commands.hpp"
#include "kvcodec/backend.hpp"
#include "kvcodec/codec.hpp"
#if defined(KVCODEC_HAS_CUDA)
#include "kvcodec/cuda.hpp"
#endif
#include "kvcodec/io.hpp"
#include "kvcodec/synthetic.hpp"

namespace kvcodec::cli {
namespace {

using Clock = std::chrono::steady_clock;

// The options of `kvcodec bench`.
struct BenchArgs {
  int64_t tokens = 2048;  // of the synthetic cache
  std::string shape = "llama3-8b";
  std::optional<std::string> input;  // instead of a synthetic cache
  std::vector<int> levels = {0, 2, 4, 6, 8};
  int threads = 1;  // 0 = all cores
  int reps = 3;
  std::string backend = "cpu";
  std::optional<std::string> json;
};

void declare(Command& cmd, BenchArgs& o) {
  cmd.option("--tokens", o.tokens, "context length of the synthetic cache (default 2048)", Range{1, kMaxTokens});
  cmd.option("--shape", o.shape, "synthetic shape: llama3-8b (default), mistral-7b, llama3-70b");
  cmd.option("--input", o.input, "benchmark on this KV file instead of a synthetic cache");
  cmd.option("--levels", o.levels, "comma-separated levels (default 0,2,4,6,8)", Range{0, kMaxLevel});
  cmd.option("--threads", o.threads, "worker threads (default 1; 0 = all cores)", Range{0, 4096});
  cmd.option("--reps", o.reps, "timed repetitions per measurement after one untimed, median reported (default 3)", Range{1, 1000000});
  cmd.option("--backend", o.backend, "cpu (default) or cuda");
  cmd.option("--json", o.json, "also write the results as JSON to this file");
}

struct Result {
  std::string name;
  int threads;
  // GB/s of uncompressed fp16 by wall time, and per core: by the process's CPU time (user +
  // system of every thread), which a shared or virtual machine's other tenants do not inflate.
  double encode_gbps, decode_gbps, encode_cpu_gbps, decode_cpu_gbps, bits_per_element;
};

double process_cpu_seconds() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
}

struct Timing {
  double wall_s = 0, cpu_s = 0;  // medians, each of its own
};

// Median wall and CPU time in seconds of `reps` runs of fn (fn returns false on failure), after
// one untimed run: warm figures, as a server encoding and decoding one context after another
// sees them (the first run of a process faults in its buffers, and its encode keeps no unit pages).
template <typename Fn>
Timing median_seconds(int reps, Fn&& fn, bool* ok) {
  std::vector<double> wall, cpu;
  if (!fn()) {
    *ok = false;
    return {};
  }
  for (int r = 0; r < reps; ++r) {
    const auto a = Clock::now();
    const double c = process_cpu_seconds();
    if (!fn()) {
      *ok = false;
      return {};
    }
    cpu.push_back(process_cpu_seconds() - c);
    wall.push_back(std::chrono::duration<double>(Clock::now() - a).count());
  }
  std::sort(wall.begin(), wall.end());
  std::sort(cpu.begin(), cpu.end());
  return {wall[wall.size() / 2], cpu[cpu.size() / 2]};
}

Status write_text(const std::string& path, const std::string& text) {
  return write_file(path, reinterpret_cast<const uint8_t*>(text.data()), text.size());
}

#if defined(KVCODEC_HAS_CUDA)
// --backend cuda: the GPU's encode, decode and transfer rates per level (one table and JSON).
Status bench_cuda(KVCache& kv, const BenchArgs& a) {
  std::printf("%-14s %12s %12s %12s %12s %12s %12s %10s\n", "codec", "enc GB/s", "dec GB/s", "dec no-chk",
              "d2d copy", "h2d raw", "h2d frame", "bits/elem");
  std::string j = "{\"backend\": \"cuda\", \"results\": [";
  for (size_t i = 0; i < a.levels.size(); ++i) {
    EncodeOptions o;
    o.level = a.levels[i];
    o.threads = a.threads;
    KVCODEC_ASSIGN_OR_RETURN(auto r, cuda::bench(kv.view(), o, a.reps));
    const double bpe = 8.0 * double(r.frame_bytes) / double(kv.shape.elements());
    std::printf("%-14s %12.1f %12.1f %12.1f %12.1f %12.1f %12.1f %10.3f   (%s)\n",
                ("kvcodec-L" + std::to_string(o.level)).c_str(), r.encode_gbps, r.decode_gbps,
                r.decode_unverified_gbps, r.copy_gbps, r.h2d_raw_gbps, r.h2d_frame_gbps, bpe, r.device.c_str());
    char buf[512];
    std::snprintf(buf, sizeof buf,
                  "%s{\"name\": \"kvcodec-L%d\", \"device\": \"%s\", \"encode_gbps\": %.3f, "
                  "\"encode_analyze_ms\": %.3f, \"encode_tables_ms\": %.3f, \"encode_lanes_ms\": %.3f, "
                  "\"decode_gbps\": %.3f, \"decode_unverified_gbps\": %.3f, \"copy_gbps\": %.3f, "
                  "\"h2d_raw_gbps\": %.3f, \"h2d_frame_gbps\": %.3f, \"bits_per_element\": %.4f}",
                  i ? ", " : "", o.level, r.device.c_str(), r.encode_gbps, r.encode_analyze_ms,
                  r.encode_tables_ms, r.encode_lanes_ms, r.decode_gbps, r.decode_unverified_gbps, r.copy_gbps,
                  r.h2d_raw_gbps, r.h2d_frame_gbps, bpe);
    j += buf;
  }
  j += "]}\n";
  return a.json ? write_text(*a.json, j) : Status::Ok();
}
#endif

// kvcodec at one level on the CPU: encode and decode, median of `reps`; lossless checked.
StatusOr<Result> bench_level(KVCache& kv, int level, int threads, int reps) {
  const double fp16_bytes = double(kv.shape.elements()) * 2;  // GB/s are of uncompressed fp16
  EncodeOptions o;
  o.level = level;
  o.threads = threads;
  KVCODEC_RETURN_IF_ERROR(validate_options(o));
  std::vector<uint8_t> frame(max_encoded_size(kv.shape, kv.dtype, o));
  size_t size = 0;
  Status err;
  bool ok = true;
  const Timing te = median_seconds(reps, [&] {
    auto n = encode_into(kv.view(), o, frame);
    if (!n.ok()) err = n.status();
    size = n.ok() ? *n : 0;
    return n.ok();
  }, &ok);
  if (!ok) return err;
  std::vector<uint8_t> out(kv.data.size());
  DecodeOptions d;
  d.threads = threads;
  const KVView dst = contiguous_view(out.data(), kv.dtype, kv.shape);
  const Timing td = median_seconds(reps, [&] {
    err = decode_into(std::span<const uint8_t>(frame.data(), size), dst, d);
    return err.ok();
  }, &ok);
  if (!ok) return err;
  if (level == 0 && out != kv.data) return Internal("lossless round trip differs");
  return Result{"kvcodec-L" + std::to_string(level), threads, fp16_bytes / te.wall_s / 1e9,
                fp16_bytes / td.wall_s / 1e9, fp16_bytes / te.cpu_s / 1e9, fp16_bytes / td.cpu_s / 1e9,
                8.0 * double(size) / double(kv.shape.elements())};
}

// The baseline: zstd -3 on the same raw bytes (single-threaded unless threads > 1).
StatusOr<Result> bench_zstd(const KVCache& kv, int threads, int reps) {
  const double fp16_bytes = double(kv.shape.elements()) * 2;
  std::vector<uint8_t> z(ZSTD_compressBound(kv.data.size()));
  std::vector<uint8_t> back(kv.data.size());
  size_t zsize = 0;
  bool ok = true;
  ZSTD_CCtx* cctx = ZSTD_createCCtx();
  ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, 3);
  if (threads != 1) ZSTD_CCtx_setParameter(cctx, ZSTD_c_nbWorkers, threads == 0 ? 2 : threads);
  const Timing te = median_seconds(reps, [&] {
    zsize = ZSTD_compress2(cctx, z.data(), z.size(), kv.data.data(), kv.data.size());
    return !ZSTD_isError(zsize);
  }, &ok);
  ZSTD_freeCCtx(cctx);
  const Timing td = ok ? median_seconds(reps, [&] {
    return ZSTD_decompress(back.data(), back.size(), z.data(), zsize) == kv.data.size();
  }, &ok) : Timing{};
  if (!ok || back != kv.data) return Internal("zstd round trip failed");
  return Result{"zstd-3", threads, fp16_bytes / te.wall_s / 1e9, fp16_bytes / td.wall_s / 1e9,
                fp16_bytes / te.cpu_s / 1e9, fp16_bytes / td.cpu_s / 1e9, 8.0 * double(zsize) / double(kv.shape.elements())};
}

std::string results_json(const KVCache& kv, bool synthetic, const std::vector<Result>& results) {
  std::string j = "{\"shape\": {\"layers\": " + std::to_string(kv.shape.layers) +
                  ", \"kv_heads\": " + std::to_string(kv.shape.kv_heads) + ", \"head_dim\": " +
                  std::to_string(kv.shape.head_dim) + ", \"tokens\": " + std::to_string(kv.shape.tokens) +
                  ", \"dtype\": \"" + dtype_name(kv.dtype) + "\"}, \"synthetic\": " +
                  (synthetic ? "true" : "false") + ", \"results\": [";
  for (size_t i = 0; i < results.size(); ++i) {
    const Result& r = results[i];
    char buf[384];
    std::snprintf(buf, sizeof buf,
                  "%s{\"name\": \"%s\", \"threads\": %d, \"encode_gbps\": %.4f, \"decode_gbps\": %.4f, "
                  "\"encode_cpu_gbps\": %.4f, \"decode_cpu_gbps\": %.4f, \"bits_per_element\": %.4f}",
                  i ? ", " : "", r.name.c_str(), r.threads, r.encode_gbps, r.decode_gbps, r.encode_cpu_gbps,
                  r.decode_cpu_gbps, r.bits_per_element);
    j += buf;
  }
  return j + "]}\n";
}

}  // namespace

int cmd_bench(int argc, char** argv) {
  Command cmd("bench",
              "kvcodec bench [--tokens N] [--shape llama3-8b] [--input KV.safetensors] [--levels LIST] [--threads N] "
              "[--reps N] [--json OUT.json]");
  BenchArgs a;
  declare(cmd, a);
  if (auto exit = cmd.parse(argc, argv)) return *exit;
  auto backend = parse_backend(a.backend);
  if (!backend.ok()) return cmd.fail(backend.status());
  if (Status s = backend_status(*backend); !s.ok()) return cmd.fail(s);

  StatusOr<KVCache> kv = a.input ? load_kv(*a.input) : make_synthetic(a.shape, uint32_t(a.tokens), DType::kF16, 1);
  if (!kv.ok()) return cmd.fail(kv.status());
  std::fprintf(stderr,
               "%s cache: %u layers x %u kv heads x %u, %u tokens, %s, %.1f MiB; %d thread(s), median of %d "
               "after a warm-up\n",
               a.input ? "input" : "synthetic", kv->shape.layers, kv->shape.kv_heads, kv->shape.head_dim,
               kv->shape.tokens, dtype_name(kv->dtype), double(kv->data.size()) / 1048576.0, a.threads, a.reps);
#if defined(KVCODEC_HAS_CUDA)
  if (*backend == Backend::kCuda) {
    const Status s = bench_cuda(*kv, a);
    return s.ok() ? 0 : cmd.fail(s);
  }
#endif

  std::vector<Result> results;
  // GB/s of uncompressed fp16: by wall time, and per core by the process's CPU time.
  std::printf("%-14s %8s %12s %12s %13s %13s %10s\n", "codec", "threads", "enc GB/s", "dec GB/s", "enc GB/s/core",
              "dec GB/s/core", "bits/elem");
  for (size_t i = 0; i <= a.levels.size(); ++i) {  // every level, then zstd
    auto r = i < a.levels.size() ? bench_level(*kv, a.levels[i], a.threads, a.reps) : bench_zstd(*kv, a.threads, a.reps);
    if (!r.ok()) return cmd.fail(r.status());
    std::printf("%-14s %8d %12.3f %12.3f %13.3f %13.3f %10.3f\n", r->name.c_str(), r->threads, r->encode_gbps,
                r->decode_gbps, r->encode_cpu_gbps, r->decode_cpu_gbps, r->bits_per_element);
    std::fflush(stdout);
    results.push_back(*r);
  }
  if (a.json)
    if (Status s = write_text(*a.json, results_json(*kv, !a.input, results)); !s.ok()) return cmd.fail(s);
  return 0;
}

}  // namespace kvcodec::cli
