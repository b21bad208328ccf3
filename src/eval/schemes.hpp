// Constructors of the individual schemes (one source file per family); make_schemes parses the
// option syntax and calls these.
#pragma once

#include <array>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kvcodec/baselines.hpp"
#include "kvcodec/config.hpp"

namespace kvcodec::eval::internal {

// "L<level>", the setting label of leveled schemes.
inline std::string level_label(int level) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "L%d", level);
  return buf;
}

std::unique_ptr<Scheme> make_fp16(std::string name);
std::unique_ptr<Scheme> make_zstd(std::string name, int zstd_level);
std::unique_ptr<Scheme> make_int8(std::string name);

struct KiviParams {
  int bits = 2;           // 1..8
  uint32_t group = 32;    // tokens per key group, channels per value group
  uint32_t residual = 0;  // last tokens kept in fp16
};
std::unique_ptr<Scheme> make_kivi(std::string name, const KiviParams& p);

// CacheGen levels 1..3 (the CacheGen repository's three bin schedules; level 2 is LMCache's).
std::unique_ptr<Scheme> make_cachegen(std::string name, int level, uint32_t chunk_tokens);

// tolerance = rms_fraction * RMS of each (layer, K/V) array; `level` orders the settings.
std::unique_ptr<Scheme> make_zfp(std::string name, int level, double rms_fraction);

// kvcodec frames with these options (options.level is the level). With `layer_levels`, each
// layer is instead encoded as a frame of its own (so the library's layer factor is 1) at
// options.level + layer_levels[third of the layer], clamped to 1..kMaxLevel: an experiment on
// the layer-wise schedule without changing the library.
struct KvcodecParams {
  EncodeOptions options;
  std::optional<std::array<int, 3>> layer_levels;
};
std::unique_ptr<Scheme> make_kvcodec(std::string name, const KvcodecParams& params);

// Transform coding on a calibrated per-head PCA profile (pca_schemes.cpp, transform.hpp).
struct PcaParams {
  EncodeOptions options;        // kvcodec options for the coefficients (options.level the level)
  bool undo_rope = true;        // keys decorrelated before RoPE
  bool basis_in_frame = false;  // count the fp16 basis in every context's bytes
  bool library = false;         // format=v4: the library's profile frames (encode_into with a profile)
  bool profile_models = false;  // models=on: a version 2 profile (stored layer models, docs/format.md 2.2)
  bool rd = false;              // rd=on (with models=on): steps allocated on the measured sensitivity
  bool key_weights = false;     // kw=on (with rd=on): key components weighted by the queries' energy
};
std::unique_ptr<Scheme> make_kvpca(std::string name, const PcaParams& params);
struct KvtcParams {
  double bits = 1.0;      // average bits per coefficient before zstd
  bool undo_rope = true;
  uint32_t sink = 4;      // first tokens kept in fp16
  bool minmax = true;     // each component's grid spans its min..max; range=gauss: the step optimal
                          // for a Gaussian of its variance, values beyond 2^(b-1) steps clipped
};
std::unique_ptr<Scheme> make_kvtc(std::string name, int level, const KvtcParams& params);

}  // namespace kvcodec::eval::internal
