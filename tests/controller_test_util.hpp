// Profiles and cost models shared by controller_test.cpp and simulator_test.cpp.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kvcodec/controller.hpp"

namespace kvcodec::test {

// Llama-3-8B-shaped context: 32 layers x 2 x 8 heads x 128 dims of fp16 = 128 KiB per token.
constexpr uint64_t kRawPerToken = 131072;

// `chunks` chunks of 256 tokens with a raw option and four kvcodec-like levels.
inline ContextProfile test_profile(uint32_t chunks) {
  ContextProfile p;
  p.raw_bytes_per_token = kRawPerToken;
  p.elements_per_token = kRawPerToken / 2;
  struct Level {
    const char* name;
    double size_fraction, distortion, decode_gbps;
  };
  const Level levels[] = {{"fp16", 1.0, 0.0, 0.0},
                          {"L0", 0.70, 0.0, 2.0},
                          {"L2", 0.25, 0.01, 2.0},
                          {"L4", 0.16, 0.03, 2.0},
                          {"L8", 0.09, 0.10, 2.0}};
  for (const Level& l : levels) p.options.push_back({l.name, -1, l.distortion, l.decode_gbps, 0});
  for (uint32_t c = 0; c < chunks; ++c) {
    p.chunk_tokens.push_back(256);
    std::vector<uint64_t> row;
    for (const Level& l : levels) row.push_back(uint64_t(256 * kRawPerToken * l.size_fraction));
    p.bytes.push_back(row);
  }
  return p;
}

inline CostModel test_cost() {
  CostModel c;
  c.rtt_s = 0.002;
  c.prefill_tokens_per_s = 12000;
  c.prefill_attention_tokens = 32768;
  return c;
}

// docs/results/streaming.md: synthetic Llama-3-8B-shaped context (128 KiB of fp16 KV per token),
// 8 chunks of 256 tokens, the stored levels 0/2/4/6/8 at their measured bits per element,
// relative error and frame-head bytes, decoded at the sweep's assumed 100 GB/s.
inline ContextProfile sweep_profile() {
  struct Level {
    int level;
    double bits, rel_error;
    uint64_t head;
  };
  const Level levels[] = {{0, 13.312, 0, 273555},
                          {2, 5.660, 0.0185, 278608},
                          {4, 3.923, 0.0615, 210623},
                          {6, 2.778, 0.1385, 187760},
                          {8, 1.859, 0.2769, 177700}};
  ContextProfile p;
  p.raw_bytes_per_token = 131072;
  p.elements_per_token = 65536;
  for (const Level& l : levels)
    p.options.push_back({"kvcodec-L" + std::to_string(l.level), l.level, l.rel_error, 100.0, l.head});
  for (int c = 0; c < 8; ++c) {
    p.chunk_tokens.push_back(256);
    std::vector<uint64_t> row;
    for (const Level& l : levels) row.push_back(uint64_t(256.0 * 65536 * l.bits / 8));
    p.bytes.push_back(row);
  }
  return p;
}

inline int option_named(const ContextProfile& p, const std::string& name) {
  for (size_t i = 0; i < p.options.size(); ++i)
    if (p.options[i].name == name) return int(i);
  return -2;
}

}  // namespace kvcodec::test
