#include "stream_cli.hpp"

#include <cstdlib>
#include <cstring>

namespace kvcodec::cli {

StatusOr<std::unique_ptr<Store>> open_cli_store(const std::string& uri) {
  StoreOptions o;
  if (const char* u = std::getenv("KVCODEC_STORE_USER")) o.user = u;
  if (const char* p = std::getenv("KVCODEC_STORE_PASSWORD")) o.password = p;
  return open_store(uri, o);
}

void declare_controller_options(Command& cmd, ControllerArgs& o) {
  cmd.option("--slo-ms", o.slo_ms, "time-to-first-token target, ms (default 1000)");
  cmd.option("--policy", o.policy, "adaptive (default), equal-budget (CacheGen's heuristic) or fixed:L (one level)");
  cmd.option("--objective", o.objective,
             "min-prefill (default: meet the SLO with the least GPU prefill, levels within --max-distortion "
             "only, hedged against a 10x drop so as never to end later than recomputing everything), quality "
             "(best quality within the SLO), ttft (lowest TTFT) or min-prefill-unhedged (min-prefill without the "
             "hedge)");
  cmd.option("--max-distortion", o.max_distortion,
             "quality floor of min-prefill: the largest relative error a chunk may be fetched at (default 0.1)");
  cmd.option("--prefill-tps", o.prefill_tps, "prefill throughput for TEXT chunks, tokens/s (default: measured on --model)");
  cmd.option("--first-token-ms", o.first_token_ms, "time to the first token once the KV is in place, ms (default 0)");
}

std::string read_controller_options(const ControllerArgs& o, ControllerConfig* c) {
  c->slo_s = o.slo_ms / 1e3;
  c->cost.prefill_tokens_per_s = o.prefill_tps.value_or(0);
  c->cost.first_token_s = o.first_token_ms / 1e3;
  if (o.policy == "adaptive") {
    c->policy = Policy::kAdaptive;
  } else if (o.policy == "equal-budget") {
    c->policy = Policy::kEqualBudget;
  } else if (o.policy.rfind("fixed:", 0) == 0) {
    c->policy = Policy::kFixed;
    c->plan = {0};  // replaced by resolve_fixed_level once the stored levels are known
  } else {
    return "--policy must be adaptive, equal-budget or fixed:L";
  }
  auto objective = parse_objective(o.objective);
  if (!objective.ok()) return "--objective: " + std::string(objective.status().message());
  c->objective = *objective;
  c->max_distortion = o.max_distortion;
  if (Status s = c->validate(); !s.ok()) return s.to_string();
  return "";
}

Status resolve_fixed_level(const std::string& policy, const Manifest& m, ControllerConfig* c) {
  if (policy.rfind("fixed:", 0) != 0) return Status::Ok();
  const std::string level = policy.substr(6);
  if (level == "text") {
    c->plan = {kTextOption};
    return Status::Ok();
  }
  for (size_t i = 0; i < m.levels.size(); ++i)
    if (std::to_string(m.levels[i].level) == level) {
      c->plan = {int(i)};
      return Status::Ok();
    }
  return InvalidArgument("--policy " + policy + ": that level is not stored");
}

StatusOr<RecomputeFn> model_recompute(std::shared_ptr<const Model> model, const KVShape& shape) {
  const ModelConfig& mc = model->config();
  if (mc.layers != shape.layers || mc.kv_heads != shape.kv_heads || mc.head_dim() != shape.head_dim)
    return InvalidArgument("the model's KV geometry differs from the context's");
  return RecomputeFn([model](uint32_t, uint32_t begin, std::span<const int32_t> tokens, const KVView& dst) -> Status {
    // The KV received so far (tokens [0, begin)), as the model's state...
    KVShape prefix_shape = dst.shape;
    prefix_shape.tokens = begin;
    KVState state = model->new_state();
    if (begin > 0) {
      KVCODEC_ASSIGN_OR_RETURN(KVCache prefix, KVCache::allocate(dst.dtype, prefix_shape));
      const size_t row = dst.shape.channels() * dtype_size(dst.dtype);
      for (uint32_t l = 0; l < dst.shape.layers; ++l)
        for (uint32_t k = 0; k < 2; ++k)
          for (uint32_t t = 0; t < begin; ++t)
            std::memcpy(prefix.data.data() + ((size_t(l) * 2 + k) * begin + t) * row, dst.element(l, k, t, 0, 0), row);
      KVCODEC_ASSIGN_OR_RETURN(state, KVState::from_cache(prefix));
    }
    // ...then the chunk's tokens prefilled on top of it, and their new rows written back.
    KVCODEC_RETURN_IF_ERROR(model->forward(tokens, state, nullptr));
    KVCODEC_ASSIGN_OR_RETURN(KVCache all, state.to_cache(dst.dtype));
    const size_t row = dst.shape.channels() * dtype_size(dst.dtype);
    const uint32_t total = all.shape.tokens;
    for (uint32_t l = 0; l < dst.shape.layers; ++l)
      for (uint32_t k = 0; k < 2; ++k)
        for (uint32_t t = begin; t < total; ++t)
          std::memcpy(dst.element(l, k, t, 0, 0), all.data.data() + ((size_t(l) * 2 + k) * total + t) * row, row);
    return Status::Ok();
  });
}

void print_chunk_line(std::FILE* f, const ChunkReport& c, uint32_t chunks) {
  std::fprintf(f, "  chunk %3u/%-3u %-5s %9.3f MB  est %7.2f Gb/s  ready %8.1f ms%s%s\n", c.chunk + 1, chunks,
               c.via.c_str(), double(c.bytes) / 1e6, c.estimate_gbps, c.ready_s * 1e3,
               c.attempts > 1 ? "  (retried)" : "", c.fallback ? "  (fallback)" : "");
  std::fflush(f);
}

void print_failure_line(std::FILE* f, const FetchFailure& x) {
  std::fprintf(f, "  ! %8.1f ms  %s%s -> %s\n", x.time_s * 1e3,
               x.chunk >= 0 ? ("chunk " + std::to_string(x.chunk) + ": ").c_str() : "",
               x.status.to_string().c_str(), x.action.c_str());
  std::fflush(f);
}

}  // namespace kvcodec::cli
