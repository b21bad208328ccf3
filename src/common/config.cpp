#include "kvcodec/config.hpp"

#include <string>

namespace kvcodec {

float layer_factor(uint32_t layer, uint32_t layers) noexcept {
  if (layers == 0) return kLayerFactor[0];
  // Thirds by position: layer * 3 / layers in {0, 1, 2}.
  uint32_t third = uint32_t((uint64_t(layer) * 3) / layers);
  return kLayerFactor[third > 2 ? 2 : third];
}

Status validate_options(const EncodeOptions& o) {
  if (o.level < 0 || o.level > kMaxLevel)
    return InvalidArgument("level " + std::to_string(o.level) + " outside 0.." + std::to_string(kMaxLevel));
  if (o.chunk_tokens < 1 || o.chunk_tokens > kMaxChunkTokens)
    return InvalidArgument("chunk_tokens " + std::to_string(o.chunk_tokens) + " outside 1.." +
                           std::to_string(kMaxChunkTokens));
  if (o.group_tokens < 1 || o.group_tokens > kMaxGroupTokens)
    return InvalidArgument("group_tokens " + std::to_string(o.group_tokens) + " outside 1.." +
                           std::to_string(kMaxGroupTokens));
  if (o.table_groups < 1 || o.table_groups > kMaxTableGroups)
    return InvalidArgument("table_groups " + std::to_string(o.table_groups) + " outside 1.." +
                           std::to_string(kMaxTableGroups));
  if (o.step_mode != StepMode::kChannel && o.step_mode != StepMode::kLayer)
    return InvalidArgument("unknown step_mode");
  if (o.threads < 0) return InvalidArgument("threads must be >= 0");
  return Status::Ok();
}

}  // namespace kvcodec
