// Writes the fuzzers' seed corpora: small valid frames (every dtype, lossless and lossy,
// with and without anchor/delta groups, several chunk and table settings) and small valid
// safetensors / .npy files in every accepted convention.
//   kvcodec_fuzz_seeds DIR   ->   DIR/frame/*.kvc, DIR/safetensors/*, DIR/npy/*
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "kvcodec/codec.hpp"
#include "common/dtype.hpp"
#include "kvcodec/io.hpp"
#include "kvcodec/profile.hpp"

#include "identity_profile.hpp"

namespace {

using namespace kvcodec;

void check(const Status& s, const std::string& what) {
  if (s.ok()) return;
  std::fprintf(stderr, "kvcodec_fuzz_seeds: %s: %s\n", what.c_str(), s.to_string().c_str());
  std::exit(1);
}

// A smooth cache with per-channel offsets, like real keys and values.
KVCache make_cache(DType dtype, KVShape shape) {
  auto kv = KVCache::allocate(dtype, shape);
  check(kv.status(), "allocate");
  const KVView v = kv->view();
  for (uint32_t l = 0; l < shape.layers; ++l)
    for (uint32_t k = 0; k < 2; ++k)
      for (uint32_t t = 0; t < shape.tokens; ++t)
        for (uint32_t h = 0; h < shape.kv_heads; ++h)
          for (uint32_t d = 0; d < shape.head_dim; ++d) {
            const float x = 0.25f * float(d % 3) - 0.5f * float(k) + 0.3f * std::sin(0.4f * float(t + 3 * h + 5 * d + l));
            detail::store_from_f32(v.element(l, k, t, h, d), uint8_t(dtype), x);
          }
  return std::move(kv).value();
}

void write_frames(const std::filesystem::path& dir) {
  struct Seed {
    DType dtype;
    KVShape shape;
    int level;
    uint32_t chunk_tokens, group_tokens, table_groups;
    StepMode mode;
  };
  const Seed seeds[] = {
      {DType::kF16, {2, 24, 2, 8}, 4, 8, 1, 8, StepMode::kChannel},
      {DType::kF16, {2, 24, 2, 8}, 4, 8, 4, 2, StepMode::kChannel},
      {DType::kF16, {1, 9, 1, 16}, 0, 4, 1, 1, StepMode::kChannel},
      {DType::kBF16, {3, 16, 1, 8}, 7, 16, 2, 4, StepMode::kLayer},
      {DType::kF32, {1, 12, 2, 4}, 0, 5, 1, 3, StepMode::kChannel},
      {DType::kF32, {2, 10, 1, 8}, 9, 3, 3, 16, StepMode::kChannel},
      {DType::kF8E4M3, {2, 8, 2, 8}, 2, 8, 1, 8, StepMode::kLayer},
      {DType::kF8E4M3, {1, 6, 1, 8}, 0, 2, 1, 2, StepMode::kChannel},
      {DType::kF16, {1, 1, 1, 4}, 4, 1, 1, 1, StepMode::kChannel},
  };
  int i = 0;
  for (const Seed& s : seeds) {
    KVCache kv = make_cache(s.dtype, s.shape);
    EncodeOptions o;
    o.level = s.level;
    o.chunk_tokens = s.chunk_tokens;
    o.group_tokens = s.group_tokens;
    o.table_groups = s.table_groups;
    o.step_mode = s.mode;
    std::vector<uint8_t> frame(max_encoded_size(s.shape, s.dtype, o));
    auto size = encode_into(kv.view(), o, frame);
    check(size.status(), "encode");
    const std::string path = (dir / ("seed" + std::to_string(i++) + ".kvc")).string();
    check(write_file(path, frame.data(), *size), "write " + path);
  }
  // Version 5 (raw byte planes, docs/format.md 4.5): noisy mantissas, whose low bytes (and for
  // f32 the two low ones) the encoder keeps raw.
  for (const DType dt : {DType::kF16, DType::kBF16, DType::kF32}) {
    const KVShape noisy{1, 40, 1, 64};
    auto kv = KVCache::allocate(dt, noisy);
    check(kv.status(), "allocate");
    uint64_t r = 0x9E3779B97F4A7C15ull;
    for (size_t e = 0; e < noisy.elements(); ++e) {
      r = r * 6364136223846793005ull + 1442695040888963407ull;
      // +-(1 + m) * 2^b, b in {0, 1}: sign, the exponent's low bit and every mantissa bit noise.
      const float x = (r & 1 ? -1.0f : 1.0f) * (r & 2 ? 2.0f : 1.0f) * (1.0f + float(r >> 41) * 0x1p-23f);
      detail::store_from_f32(kv->data.data() + e * dtype_size(dt), uint8_t(dt), x);
    }
    EncodeOptions o;
    o.level = 0;
    o.chunk_tokens = 16;
    o.table_groups = 1;
    std::vector<uint8_t> frame(max_encoded_size(noisy, dt, o));
    auto size = encode_into(kv->view(), o, frame);
    check(size.status(), "encode");
    const std::string path = (dir / ("seed" + std::to_string(i++) + "-raw-planes.kvc")).string();
    check(write_file(path, frame.data(), *size), "write " + path);
  }
  // Version 4 (transform-coded, docs/format.md 2.1): the fuzzers' identity_profile decodes it.
  const KVShape shape{2, 24, 2, 8};
  KVCache kv = make_cache(DType::kF16, shape);
  auto profile = kvcodec::fuzz_identity_profile(shape, true);
  check(profile.status(), "profile");
  EncodeOptions o;
  o.chunk_tokens = 8;
  std::vector<uint8_t> frame(max_encoded_size(shape, DType::kF16, o, *profile));
  auto size = encode_into(kv.view(), o, *profile, frame, 7);
  check(size.status(), "encode v4");
  const std::string path = (dir / "seed_v4.kvc").string();
  check(write_file(path, frame.data(), *size), "write " + path);
}

// Profiles (docs/format.md 8): identity ones of a few shapes, with and without RoPE tables.
void write_profiles(const std::filesystem::path& dir) {
  int i = 0;
  for (const KVShape& s : {KVShape{1, 1, 1, 4}, KVShape{2, 24, 2, 8}, KVShape{1, 1, 3, 6}})
    for (bool rope : {false, true}) {
      auto profile = kvcodec::fuzz_identity_profile(s, rope);
      check(profile.status(), "profile");
      const std::vector<uint8_t> bytes = serialize_profile(*profile);
      const std::string path = (dir / ("seed" + std::to_string(i++) + ".kvprofile")).string();
      check(write_file(path, bytes.data(), bytes.size()), "write " + path);
    }
  // Version 2 (layer models, docs/format.md 2.2 and 8), calibrated on a seed cache.
  const KVShape shape{2, 24, 2, 8};
  auto profile = kvcodec::fuzz_identity_profile(shape, true);
  check(profile.status(), "profile");
  KVCache kv = make_cache(DType::kF16, shape);
  const KVView view = kv.view();
  check(calibrate_profile_models(*profile, std::span<const KVView>(&view, 1)), "profile models");
  const std::vector<uint8_t> bytes = serialize_profile(*profile);
  const std::string path = (dir / "seed_v2.kvprofile").string();
  check(write_file(path, bytes.data(), bytes.size()), "write " + path);
}

void write_files(const std::filesystem::path& st_dir, const std::filesystem::path& npy_dir) {
  const KVShape shape{2, 3, 2, 4};
  for (DType t : {DType::kF32, DType::kF16, DType::kBF16, DType::kF8E4M3})
    check(save_kv((st_dir / (std::string("kv_") + dtype_name(t) + ".safetensors")).string(), make_cache(t, shape)),
          "save_kv");
  for (DType t : {DType::kF32, DType::kF16})
    check(save_kv((npy_dir / (std::string("kv_") + dtype_name(t) + ".npy")).string(), make_cache(t, shape)),
          "save_kv");

  // Per-layer tensors, [T, H, D] and Hugging Face [1, H, T, D] (the bytes need not be a
  // transposition of anything: only the structure matters to the parser).
  for (bool hf : {false, true}) {
    std::vector<HostTensor> tensors;
    for (uint32_t l = 0; l < shape.layers; ++l)
      for (const char* role : {"key", "value"}) {
        HostTensor t;
        t.name = "layers." + std::to_string(l) + "." + role;
        t.dtype = DType::kF16;
        t.shape = hf ? std::vector<int64_t>{1, shape.kv_heads, shape.tokens, shape.head_dim}
                     : std::vector<int64_t>{shape.tokens, shape.kv_heads, shape.head_dim};
        t.data.assign(shape.tokens * shape.channels() * 2, uint8_t(l + 1));
        tensors.push_back(std::move(t));
      }
    check(write_safetensors((st_dir / (hf ? "layers_hf.safetensors" : "layers.safetensors")).string(), tensors),
          "write_safetensors");
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: kvcodec_fuzz_seeds DIR\n");
    return 2;
  }
  const std::filesystem::path root = argv[1];
  for (const char* sub : {"frame", "safetensors", "npy", "profile"}) std::filesystem::create_directories(root / sub);
  write_frames(root / "frame");
  write_profiles(root / "profile");
  write_files(root / "safetensors", root / "npy");
  return 0;
}
