// kvcodec bench: end-to-end encode/decode speed and size on a Llama-3-8B-shaped cache, with zstd -3
// on the same raw bytes measured in the same run as the baseline.
#include <zstd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
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

struct Result {
  std::string name;
  int threads;
  double encode_gbps, decode_gbps, bits_per_element;
};

// Median wall time in seconds of `reps` runs of fn (fn returns false on failure).
template <typename Fn>
double median_seconds(int reps, Fn&& fn, bool* ok) {
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    const auto a = Clock::now();
    if (!fn()) {
      *ok = false;
      return 0;
    }
    t.push_back(std::chrono::duration<double>(Clock::now() - a).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int cmd_bench(int argc, char** argv) {
  Args a("bench",
         "kvcodec bench [--tokens N] [--shape llama3-8b] [--input KV.safetensors] [--levels LIST] [--threads N] "
         "[--reps N] [--json OUT.json]");
  a.option("--tokens", "context length of the synthetic cache (default 2048)")
      .option("--shape", "synthetic shape: llama3-8b (default), mistral-7b, llama3-70b")
      .option("--input", "benchmark on this KV file instead of a synthetic cache")
      .option("--levels", "comma-separated levels (default 0,2,4,6,8)")
      .option("--threads", "worker threads (default 1; 0 = all cores)")
      .option("--reps", "repetitions per measurement, median reported (default 3)")
      .option("--backend", "cpu (default) or cuda")
      .option("--json", "also write the results as JSON to this file");
  if (!a.parse(argc, argv)) return a.exit_code();
  const int64_t tokens = a.get_int("--tokens", 2048);
  const int threads = int(a.get_int("--threads", 1));
  const int reps = int(a.get_int("--reps", 3));
  std::vector<int64_t> levels = a.has("--levels") ? a.get_int_list("--levels") : std::vector<int64_t>{0, 2, 4, 6, 8};
  if (a.failed()) return 2;
  auto backend = parse_backend(a.get("--backend", "cpu"));
  if (!backend.ok()) return a.fail(backend.status());
  if (Status s = backend_status(*backend); !s.ok()) return a.fail(s);
  if (tokens < 1 || reps < 1 || threads < 0) return a.fail("--tokens, --reps must be >= 1 and --threads >= 0");

  StatusOr<KVCache> kv = a.has("--input") ? load_kv(a.get("--input"))
                                          : make_synthetic(a.get("--shape", "llama3-8b"), uint32_t(tokens), DType::kF16, 1);
  if (!kv.ok()) return a.fail(kv.status());
  const KVView src = kv->view();
  const double raw_bytes = double(kv->data.size());
  const double fp16_bytes = double(kv->shape.elements()) * 2;  // GB/s are of uncompressed fp16
  std::fprintf(stderr, "%s cache: %u layers x %u kv heads x %u, %u tokens, %s, %.1f MiB; %d thread(s), median of %d\n",
               a.has("--input") ? "input" : "synthetic", kv->shape.layers, kv->shape.kv_heads, kv->shape.head_dim,
               kv->shape.tokens, dtype_name(kv->dtype), raw_bytes / 1048576.0, threads, reps);

  std::vector<Result> results;
  std::printf("%-14s %8s %12s %12s %10s\n", "codec", "threads", "enc GB/s", "dec GB/s", "bits/elem");
  auto print = [&](const Result& r) {
    std::printf("%-14s %8d %12.3f %12.3f %10.3f\n", r.name.c_str(), r.threads, r.encode_gbps, r.decode_gbps,
                r.bits_per_element);
    std::fflush(stdout);
    results.push_back(r);
  };

#if defined(KVCODEC_HAS_CUDA)
  if (*backend == Backend::kCuda) {
    std::printf("%-14s %12s %12s %12s %12s %12s %12s %10s\n", "codec", "enc GB/s", "dec GB/s", "dec no-chk",
                "d2d copy", "h2d raw", "h2d frame", "bits/elem");
    std::string j = "{\"backend\": \"cuda\", \"results\": [";
    for (size_t i = 0; i < levels.size(); ++i) {
      EncodeOptions o;
      o.level = int(levels[i]);
      o.threads = threads;
      auto r = cuda::bench(src, o, reps);
      if (!r.ok()) return a.fail(r.status());
      const double bpe = 8.0 * double(r->frame_bytes) / double(kv->shape.elements());
      std::printf("%-14s %12.1f %12.1f %12.1f %12.1f %12.1f %12.1f %10.3f   (%s)\n",
                  ("kvcodec-L" + std::to_string(o.level)).c_str(), r->encode_gbps, r->decode_gbps,
                  r->decode_unverified_gbps, r->copy_gbps, r->h2d_raw_gbps, r->h2d_frame_gbps, bpe, r->device.c_str());
      char buf[512];
      std::snprintf(buf, sizeof buf,
                    "%s{\"name\": \"kvcodec-L%d\", \"device\": \"%s\", \"encode_gbps\": %.3f, "
                    "\"encode_analyze_ms\": %.3f, \"encode_tables_ms\": %.3f, \"encode_lanes_ms\": %.3f, "
                    "\"decode_gbps\": %.3f, \"decode_unverified_gbps\": %.3f, \"copy_gbps\": %.3f, "
                    "\"h2d_raw_gbps\": %.3f, \"h2d_frame_gbps\": %.3f, \"bits_per_element\": %.4f}",
                    i ? ", " : "", o.level, r->device.c_str(), r->encode_gbps, r->encode_analyze_ms,
                    r->encode_tables_ms, r->encode_lanes_ms, r->decode_gbps, r->decode_unverified_gbps, r->copy_gbps,
                    r->h2d_raw_gbps, r->h2d_frame_gbps, bpe);
      j += buf;
    }
    j += "]}\n";
    if (a.has("--json"))
      if (Status s = write_file(a.get("--json"), reinterpret_cast<const uint8_t*>(j.data()), j.size()); !s.ok())
        return a.fail(s);
    return 0;
  }
#endif

  for (int64_t level : levels) {
    EncodeOptions o;
    o.level = int(level);
    o.threads = threads;
    if (Status s = validate_options(o); !s.ok()) return a.fail(s);
    std::vector<uint8_t> frame(max_encoded_size(kv->shape, kv->dtype, o));
    size_t size = 0;
    Status err;
    bool ok = true;
    const double te = median_seconds(reps, [&] {
      auto n = encode_into(src, o, frame);
      if (!n.ok()) err = n.status();
      size = n.ok() ? *n : 0;
      return n.ok();
    }, &ok);
    if (!ok) return a.fail(err);
    std::vector<uint8_t> out(kv->data.size());
    DecodeOptions d;
    d.threads = threads;
    const KVView dst = contiguous_view(out.data(), kv->dtype, kv->shape);
    const double td = median_seconds(reps, [&] {
      err = decode_into(std::span<const uint8_t>(frame.data(), size), dst, d);
      return err.ok();
    }, &ok);
    if (!ok) return a.fail(err);
    if (level == 0 && out != kv->data) return a.fail(Internal("lossless round trip differs"));
    print({"kvcodec-L" + std::to_string(level), threads, fp16_bytes / te / 1e9, fp16_bytes / td / 1e9,
           8.0 * double(size) / double(kv->shape.elements())});
  }

  // Baseline: zstd -3 on the same raw bytes (single-threaded unless threads > 1).
  {
    std::vector<uint8_t> z(ZSTD_compressBound(kv->data.size()));
    std::vector<uint8_t> back(kv->data.size());
    size_t zsize = 0;
    bool ok = true;
    ZSTD_CCtx* cctx = ZSTD_createCCtx();
    ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, 3);
    if (threads != 1) ZSTD_CCtx_setParameter(cctx, ZSTD_c_nbWorkers, threads == 0 ? 2 : threads);
    const double te = median_seconds(reps, [&] {
      zsize = ZSTD_compress2(cctx, z.data(), z.size(), kv->data.data(), kv->data.size());
      return !ZSTD_isError(zsize);
    }, &ok);
    ZSTD_freeCCtx(cctx);
    const double td = ok ? median_seconds(reps, [&] {
      return ZSTD_decompress(back.data(), back.size(), z.data(), zsize) == kv->data.size();
    }, &ok) : 0;
    if (!ok || back != kv->data) return a.fail(Internal("zstd round trip failed"));
    print({"zstd-3", threads, fp16_bytes / te / 1e9, fp16_bytes / td / 1e9, 8.0 * double(zsize) / double(kv->shape.elements())});
  }

  if (a.has("--json")) {
    std::string j = "{\"shape\": {\"layers\": " + std::to_string(kv->shape.layers) +
                    ", \"kv_heads\": " + std::to_string(kv->shape.kv_heads) + ", \"head_dim\": " +
                    std::to_string(kv->shape.head_dim) + ", \"tokens\": " + std::to_string(kv->shape.tokens) +
                    ", \"dtype\": \"" + dtype_name(kv->dtype) + "\"}, \"synthetic\": " +
                    (a.has("--input") ? "false" : "true") + ", \"results\": [";
    for (size_t i = 0; i < results.size(); ++i) {
      const Result& r = results[i];
      char buf[256];
      std::snprintf(buf, sizeof buf,
                    "%s{\"name\": \"%s\", \"threads\": %d, \"encode_gbps\": %.4f, \"decode_gbps\": %.4f, "
                    "\"bits_per_element\": %.4f}",
                    i ? ", " : "", r.name.c_str(), r.threads, r.encode_gbps, r.decode_gbps, r.bits_per_element);
      j += buf;
    }
    j += "]}\n";
    if (Status s = write_file(a.get("--json"), reinterpret_cast<const uint8_t*>(j.data()), j.size()); !s.ok())
      return a.fail(s);
  }
  return 0;
}

}  // namespace kvcodec::cli
