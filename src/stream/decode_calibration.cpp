// calibrate_decode_gbps (stream.hpp): the seed of the controller's online decode estimate.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <mutex>
#include <random>
#include <tuple>
#include <vector>

#include "common/dtype.hpp"
#include "kvcodec/codec.hpp"
#include "kvcodec/profile.hpp"
#include "kvcodec/stream.hpp"

namespace kvcodec {
namespace {

// A context of `shape` whose channels are Gaussian with their own mean and scale (a few
// channels much larger, as in real keys), deterministic.
KVCache calibration_context(DType dtype, const KVShape& shape) {
  KVCache kv;
  kv.dtype = dtype;
  kv.shape = shape;
  const size_t elem = dtype_size(dtype);
  kv.data.resize(shape.elements() * elem);
  std::mt19937_64 rng(0x6b76636f);
  const uint32_t channels = shape.channels();
  std::vector<float> mean(channels), scale(channels);
  std::uniform_real_distribution<float> uni(-1, 1);
  for (uint32_t c = 0; c < channels; ++c) {
    mean[c] = 0.3f * uni(rng);
    scale[c] = std::exp(1.5f * uni(rng)) * (c % 37 == 0 ? 8.0f : 1.0f);
  }
  std::normal_distribution<float> normal(0, 1);
  size_t i = 0;
  for (uint64_t row = 0; row < uint64_t(shape.layers) * 2 * shape.tokens; ++row)
    for (uint32_t c = 0; c < channels; ++c, ++i)
      detail::store_from_f32(kv.data.data() + i * elem, uint8_t(dtype), mean[c] + scale[c] * normal(rng));
  return kv;
}

// `profile` (levels 1..9): the chunk is transform-coded with it and decoded with it (the
// coefficients' decode and the inverse transform, as a fetch of such a level decodes).
StatusOr<double> measure(DType dtype, const KVShape& shape, int level, int threads,
                         const std::shared_ptr<const Profile>& profile) {
  KVCache kv = calibration_context(dtype, shape);
  EncodeOptions eo;
  eo.level = level;
  eo.chunk_tokens = shape.tokens;
  eo.threads = threads;
  std::vector<uint8_t> frame(profile ? max_encoded_size(shape, dtype, eo, *profile) : max_encoded_size(shape, dtype, eo));
  if (frame.empty()) return InvalidArgument("calibration: invalid shape or level");
  KVCODEC_ASSIGN_OR_RETURN(size_t n, profile ? encode_into(kv.view(), eo, *profile, frame) : encode_into(kv.view(), eo, frame));
  frame.resize(n);
  KVCODEC_ASSIGN_OR_RETURN(FrameInfo info, read_frame_info(frame));
  if (info.chunks.size() != 1) return Internal("calibration frame has more than one chunk");
  const std::span<const uint8_t> all(frame);
  KVCODEC_ASSIGN_OR_RETURN(FrameDecoder decoder, FrameDecoder::open(all.first(info.head_bytes), profile));
  const auto body = all.subspan(info.chunks[0].offset, info.chunks[0].size);
  KVCache out = kv;  // a destination already in memory: no first-touch faults in the figure
  DecodeOptions dopt;
  dopt.threads = threads;
  // One warm-up, then the median of three.
  std::vector<double> seconds;
  for (int rep = 0; rep < 4; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    KVCODEC_RETURN_IF_ERROR(decoder.decode_chunk(0, body, out.view(), dopt));
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (rep > 0) seconds.push_back(s);
  }
  std::sort(seconds.begin(), seconds.end());
  const double median = seconds[seconds.size() / 2];
  return median > 0 ? double(kv.data.size()) / median / 1e9 : 0.0;
}

}  // namespace

StatusOr<double> calibrate_decode_gbps(DType dtype, const KVShape& per_token, int level, int threads,
                                       std::shared_ptr<const Profile> profile) {
  if (level < 0 || level > kMaxLevel) return InvalidArgument("calibration: level out of range");
  if (threads < 0) return InvalidArgument("calibration: threads must be >= 0");
  if (level == 0) profile = nullptr;  // level 0 is never transform-coded
  KVShape shape = per_token;
  shape.tokens = kCalibrationTokens;
  // The profile by digest (and presence: a digest of 0 is as unlikely as any other).
  using Key = std::tuple<int, uint32_t, uint32_t, uint32_t, int, int, bool, uint64_t>;
  static std::mutex mu;
  static std::map<Key, double> memo;
  const Key key{int(dtype), shape.layers, shape.kv_heads, shape.head_dim, level, threads, bool(profile),
                profile ? profile->digest : 0};
  {
    std::lock_guard lock(mu);
    if (auto it = memo.find(key); it != memo.end()) return it->second;
  }
  KVCODEC_ASSIGN_OR_RETURN(double gbps, measure(dtype, shape, level, threads, profile));
  std::lock_guard lock(mu);
  memo[key] = gbps;
  return gbps;
}

}  // namespace kvcodec
