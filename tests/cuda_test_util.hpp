// Test helpers shared by the CUDA backend's tests (cuda_test.cpp: decoder, cuda_encode_test.cpp:
// encoder): KV-like random caches, a real cache, CPU reference encode/decode, host storage for
// every KV layout and, in CUDA builds, its mirror in device memory.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "kvcodec/codec.hpp"
#include "common/quant.hpp"
#include "kvcodec/io.hpp"
#include "kvcodec/model.hpp"
#include "kvcodec/synthetic.hpp"
#include "test_util.hpp"

#if defined(KVCODEC_HAS_CUDA)
#include <cuda_runtime_api.h>

#include "kvcodec/cuda.hpp"
#endif

namespace kvcodec::test {

// ---- test data ---------------------------------------------------------------------------------

// A KV-like cache: per-channel means and scales over two orders of magnitude, outlier channels,
// AR(1) along tokens, a few exact repeats and specials (escapes), contiguous [L, 2, T, H, D].
inline KVCache random_cache(const KVShape& s, DType dt, uint64_t seed) {
  auto kv = KVCache::allocate(dt, s);
  EXPECT_TRUE(kv.ok());
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> n01(0.f, 1.f);
  const size_t C = s.channels(), es = dtype_size(dt);
  const float unit = dt == DType::kF8E4M3 ? 0.1f : 1.f;
  for (uint32_t u = 0; u < 2 * s.layers; ++u) {
    std::vector<float> mean(C), scale(C), prev(C, 0.f);
    for (size_t c = 0; c < C; ++c) {
      scale[c] = unit * std::exp(n01(rng)) * (c % 13 == 5 ? 30.f : 1.f);
      mean[c] = n01(rng) * scale[c] * 0.5f;
    }
    for (uint32_t t = 0; t < s.tokens; ++t)
      for (size_t c = 0; c < C; ++c) {
        prev[c] = 0.8f * prev[c] + 0.6f * n01(rng);
        float v = mean[c] + scale[c] * prev[c];
        if (rng() % 997 == 0) v *= 200.f;  // far outliers: escaped at lossy levels
        uint8_t* p = kv->data.data() + ((size_t(u) * s.tokens + t) * C + c) * es;
        detail::store_from_f32(p, uint8_t(dt), v);
      }
  }
  return std::move(*kv);
}

// A cache that coding expands in its last tokens: every element of tokens [0, from) is the same
// per channel, tokens [from, tokens) hold random values (random bits at lossless, uniform values
// within a few hundred grid steps at lossy levels), so the tables, fitted to the whole context,
// give those symbols long codes: their units are stored raw (docs/format.md 4.4).
// (dtype, level) pairs whose skewed_cache has stored units: lossless random bits cost more than
// raw under tables fitted mostly to constants. (Lossy units rarely expand: a symbol's code plus
// an escaped value must cost more than the raw element on average.)
inline constexpr std::pair<DType, int> kExpandingCases[] = {
    {DType::kF32, 0}, {DType::kF16, 0}, {DType::kBF16, 0}, {DType::kF8E4M3, 0}};

inline KVCache skewed_cache(const KVShape& s, DType dt, uint32_t from, bool lossless, uint64_t seed) {
  auto kv = KVCache::allocate(dt, s);
  EXPECT_TRUE(kv.ok());
  std::mt19937_64 rng(seed);
  const size_t C = s.channels(), es = dtype_size(dt);
  for (uint32_t u = 0; u < 2 * s.layers; ++u)
    for (uint32_t t = 0; t < s.tokens; ++t)
      for (size_t c = 0; c < C; ++c) {
        uint8_t* p = kv->data.data() + ((size_t(u) * s.tokens + t) * C + c) * es;
        if (t < from) {
          detail::store_from_f32(p, uint8_t(dt), 0.25f * float(c % 5));
        } else if (lossless) {
          const uint64_t r = rng();
          std::memcpy(p, &r, es);
        } else if (dt == DType::kF8E4M3) {  // any finite value
          const uint8_t b = uint8_t(rng());
          *p = (b & 0x7F) == 0x7F ? 0 : b;
        } else {
          detail::store_from_f32(p, uint8_t(dt), float(int(rng() % 4001) - 2000) / 64.f);
        }
      }
  return std::move(*kv);
}

inline std::vector<uint8_t> encode(const KVView& v, const EncodeOptions& o) {
  std::vector<uint8_t> frame(max_encoded_size(v.shape, v.dtype, o));
  auto n = encode_into(v, o, frame);
  EXPECT_TRUE(n.ok()) << n.status().to_string();
  frame.resize(n.ok() ? *n : 0);
  return frame;
}

inline std::vector<uint8_t> cpu_decode(std::span<const uint8_t> frame, const KVShape& s, DType dt, bool verify = true) {
  std::vector<uint8_t> out(s.elements() * dtype_size(dt));
  DecodeOptions o;
  o.verify_checksums = verify;
  Status st = decode_into(frame, contiguous_view(out.data(), dt, s), o);
  if (!st.ok()) out.clear();
  return out;
}

// ---- describing differences ---------------------------------------------------------------------
// A GPU session is short: when a device output differs from the CPU's, say where, in the
// format's terms, so that one failing run locates the faulty kernel.

inline std::string unit_name(uint32_t u) { return "layer " + std::to_string(u / 2) + (u % 2 ? " V" : " K"); }

// "" when the frames are identical; otherwise where `got` first departs from `want` (a valid
// frame): header byte, model section, chunk index entry, or chunk -> unit directory / unit
// (by `want`'s directory) and the byte within it, plus how many bytes differ in all.
inline std::string frame_difference(std::span<const uint8_t> got, std::span<const uint8_t> want) {
  if (got.size() == want.size() && std::equal(got.begin(), got.end(), want.begin())) return "";
  size_t i = 0;
  const size_t common = std::min(got.size(), want.size());
  while (i < common && got[i] == want[i]) ++i;
  size_t differing = got.size() > want.size() ? got.size() - want.size() : want.size() - got.size();
  for (size_t k = i; k < common; ++k) differing += got[k] != want[k];
  std::string where;
  auto info = read_frame_info(want);
  if (i == common) {
    where = "one frame is a prefix of the other";
  } else if (!info.ok()) {
    where = "byte " + std::to_string(i) + " (the reference frame does not parse: " + info.status().to_string() + ")";
  } else if (i < kHeaderBytes) {
    where = "header byte " + std::to_string(i);
  } else if (i < kHeaderBytes + info->model_bytes) {
    where = "model section byte " + std::to_string(i - kHeaderBytes) + " of " + std::to_string(info->model_bytes);
  } else if (i < info->head_bytes) {
    const size_t e = i - kHeaderBytes - info->model_bytes;
    static const char* kField[] = {"offset", "offset", "size", "reserved", "checksum", "checksum"};
    where = "chunk index entry " + std::to_string(e / kIndexEntryBytes) + " (" + kField[e % kIndexEntryBytes / 4] + ")";
  } else {
    for (size_t k = 0; k < info->chunks.size(); ++k) {
      const ChunkInfo& c = info->chunks[k];
      if (i >= c.offset + c.size) continue;
      const size_t at = i - c.offset, units = 2 * size_t(info->shape.layers);
      where = "chunk " + std::to_string(k);
      if (at < 4 * units) {
        where += " unit directory entry " + std::to_string(at / 4) + " (" + unit_name(uint32_t(at / 4)) + ")";
        break;
      }
      size_t begin = 4 * units;
      for (size_t u = 0; u < units; ++u) {
        uint32_t size;
        std::memcpy(&size, want.data() + c.offset + 4 * u, 4);
        if (at < begin + size) {
          where += " unit " + std::to_string(u) + " (" + unit_name(uint32_t(u)) + ") byte " + std::to_string(at - begin) +
                   " of " + std::to_string(size);
          break;
        }
        begin += size;
      }
      break;
    }
  }
  return "frames differ (" + std::to_string(got.size()) + " vs " + std::to_string(want.size()) +
         " bytes) first at " + where + "; " + std::to_string(differing) + " bytes differ";
}

// "" when the tensors (contiguous [L, 2, T, H, D]) are identical; otherwise the first element
// that differs, by (layer, K/V, token, channel), with both bit patterns, and how many differ.
inline std::string tensor_difference(std::span<const uint8_t> got, std::span<const uint8_t> want, const KVShape& s,
                                     DType dt) {
  if (got.size() != want.size())
    return "tensor sizes differ: " + std::to_string(got.size()) + " vs " + std::to_string(want.size()) + " bytes";
  const size_t es = dtype_size(dt), C = s.channels();
  size_t first = SIZE_MAX, differing = 0;
  for (size_t e = 0; e < got.size() / es; ++e)
    if (std::memcmp(got.data() + e * es, want.data() + e * es, es) != 0) {
      if (first == SIZE_MAX) first = e;
      ++differing;
    }
  if (first == SIZE_MAX) return "";
  auto bits = [&](std::span<const uint8_t> t) {
    uint32_t v = 0;
    std::memcpy(&v, t.data() + first * es, es);
    char hex[16];
    std::snprintf(hex, sizeof hex, "0x%0*x", int(2 * es), v);
    return std::string(hex);
  };
  const size_t c = first % C, t = first / C % s.tokens, u = first / C / s.tokens;
  return "tensors differ first at " + unit_name(uint32_t(u)) + " token " + std::to_string(t) + " channel " +
         std::to_string(c) + " (got " + bits(got) + ", want " + bits(want) + "); " + std::to_string(differing) + " of " +
         std::to_string(got.size() / es) + " elements differ";
}

// ---- destinations in every layout ------------------------------------------------------------

// kPagedSplit: separate K and V pools; kFlashInfer: (num_blocks, 2, block_size, H, D);
// kPagedSlots: vLLM NHD indexed by a slot mapping (token -> any free slot) instead of a table.
enum class Layout {
  kContiguous, kLMCache, kPerLayer, kPerLayerHF, kPagedNHD, kPagedHND, kPagedSplit, kFlashInfer, kFlashInferHND,
  kPagedSlots
};
inline constexpr Layout kAllLayouts[] = {Layout::kContiguous, Layout::kLMCache,     Layout::kPerLayer,
                                         Layout::kPerLayerHF, Layout::kPagedNHD,    Layout::kPagedHND,
                                         Layout::kPagedSplit, Layout::kFlashInfer, Layout::kFlashInferHND,
                                         Layout::kPagedSlots};
inline bool is_paged(Layout l) { return l >= Layout::kPagedNHD; }

// Storage for one layout as a list of buffers, and views over any copy of those buffers (host
// memory here, device memory in the GPU tests).
struct Dest {
  KVShape shape;
  DType dtype;
  Layout layout;
  std::vector<std::vector<uint8_t>> bufs;
  std::vector<int32_t> block_table;
  std::vector<int64_t> slot_mapping;  // kPagedSlots
  uint32_t block_size = 0, num_blocks = 0;
  std::vector<void*> host_k, host_v;  // pointer arrays of the host view

  Dest(const KVShape& s, DType dt, Layout l) : shape(s), dtype(dt), layout(l) {
    const size_t es = dtype_size(dt), per_tensor = size_t(s.tokens) * s.channels() * es;
    switch (l) {
      case Layout::kContiguous:
      case Layout::kLMCache: bufs.assign(1, std::vector<uint8_t>(2 * s.layers * per_tensor, 0xAB)); break;
      case Layout::kPerLayer:
      case Layout::kPerLayerHF: bufs.assign(2 * s.layers, std::vector<uint8_t>(per_tensor, 0xAB)); break;
      default: {  // paged
        block_size = 16;
        const uint32_t used = (s.tokens + block_size - 1) / block_size;
        num_blocks = used + 3;
        std::vector<int32_t> perm(num_blocks);
        std::iota(perm.begin(), perm.end(), 0);
        std::shuffle(perm.begin(), perm.end(), std::mt19937(7));
        block_table.assign(perm.begin(), perm.begin() + used);
        const size_t pool = size_t(num_blocks) * block_size * s.channels() * es;
        if (l == Layout::kPagedSplit) {
          bufs.assign(2 * s.layers, std::vector<uint8_t>(pool, 0xAB));
        } else {
          bufs.assign(s.layers, std::vector<uint8_t>(2 * pool, 0xAB));
        }
        if (l == Layout::kPagedSlots) {
          std::vector<int64_t> slots(size_t(num_blocks) * block_size);
          std::iota(slots.begin(), slots.end(), 0);
          std::shuffle(slots.begin(), slots.end(), std::mt19937(8));
          slot_mapping.assign(slots.begin(), slots.begin() + s.tokens);
          block_table.clear();
        }
        break;
      }
    }
    std::vector<void*> bases;
    for (auto& b : bufs) bases.push_back(b.data());
    split(bases, host_k, host_v);
  }
  // Per-layer pointer arrays for the buffers at `bases`.
  void split(const std::vector<void*>& bases, std::vector<void*>& k, std::vector<void*>& v) const {
    k.clear();
    v.clear();
    if (layout == Layout::kPerLayer || layout == Layout::kPerLayerHF || layout == Layout::kPagedSplit) {
      for (uint32_t l = 0; l < shape.layers; ++l) {
        k.push_back(bases[2 * l]);
        v.push_back(bases[2 * l + 1]);
      }
    } else if (is_paged(layout)) {
      k = bases;
    }
  }
  // A view over buffers whose per-layer arrays are `k`, `v`, block table `bt` and slot mapping
  // `sm` (for the strided layouts, `data`).
  KVView view(void* data, void* const* k, void* const* v, const int32_t* bt, const int64_t* sm) const {
    const uint32_t nb = num_blocks, bs = block_size;
    switch (layout) {
      case Layout::kContiguous: return contiguous_view(data, dtype, shape);
      case Layout::kLMCache: return lmcache_view(data, dtype, shape);
      case Layout::kPerLayer: return per_layer_view(k, v, dtype, shape, false);
      case Layout::kPerLayerHF: return per_layer_view(k, v, dtype, shape, true);
      case Layout::kPagedNHD: return vllm_paged_view(k, dtype, shape, bt, nb, bs, PagedOrder::kNHD);
      case Layout::kPagedHND: return vllm_paged_view(k, dtype, shape, bt, nb, bs, PagedOrder::kHND);
      case Layout::kPagedSplit: return paged_kv_split_view(k, v, dtype, shape, bt, nb, bs);
      case Layout::kFlashInfer: return flashinfer_paged_view(k, dtype, shape, bt, nb, bs, PagedOrder::kNHD);
      case Layout::kFlashInferHND: return flashinfer_paged_view(k, dtype, shape, bt, nb, bs, PagedOrder::kHND);
      case Layout::kPagedSlots: return with_slot_mapping(vllm_paged_view(k, dtype, shape, bt, nb, bs), sm);
    }
    return {};
  }
  KVView host_view() {
    return view(bufs[0].data(), host_k.data(), host_v.data(), block_table.data(), slot_mapping.data());
  }
  // Writes the elements of a contiguous [L, 2, T, H, D] array into this layout.
  void scatter(const std::vector<uint8_t>& contiguous) {
    const KVView v = host_view();
    const size_t es = dtype_size(dtype);
    const uint8_t* in = contiguous.data();
    for (uint32_t l = 0; l < shape.layers; ++l)
      for (uint32_t kv = 0; kv < 2; ++kv)
        for (uint32_t t = 0; t < shape.tokens; ++t)
          for (uint32_t h = 0; h < shape.kv_heads; ++h)
            for (uint32_t d = 0; d < shape.head_dim; ++d, in += es) std::memcpy(v.element(l, kv, t, h, d), in, es);
  }
  // "" when the elements equal `want` (contiguous [L, 2, T, H, D]), else where they differ.
  std::string difference(const std::vector<uint8_t>& want) { return tensor_difference(gather(), want, shape, dtype); }
  // The elements in the contiguous layout [L, 2, T, H, D].
  std::vector<uint8_t> gather() {
    const KVView v = host_view();
    const size_t es = dtype_size(dtype);
    std::vector<uint8_t> out(shape.elements() * es);
    uint8_t* o = out.data();
    for (uint32_t l = 0; l < shape.layers; ++l)
      for (uint32_t kv = 0; kv < 2; ++kv)
        for (uint32_t t = 0; t < shape.tokens; ++t)
          for (uint32_t h = 0; h < shape.kv_heads; ++h)
            for (uint32_t d = 0; d < shape.head_dim; ++d, o += es) std::memcpy(o, v.element(l, kv, t, h, d), es);
    return out;
  }
};

// A real cache: kvc-bytes-a's K/V over the start of its held-back text.
inline StatusOr<KVCache> real_cache(DType dt, uint32_t tokens) {
  KVCODEC_ASSIGN_OR_RETURN(Model m, Model::load(test::data_path("models/kvc-bytes-a.bin")));
  KVCODEC_ASSIGN_OR_RETURN(std::vector<uint8_t> text, read_file(test::data_path("text/techdocs_valid.txt")));
  if (text.size() < tokens) return InvalidArgument("text too short");
  std::vector<int32_t> ids(text.begin(), text.begin() + tokens);
  KVState st = m.new_state();
  KVCODEC_RETURN_IF_ERROR(m.forward(ids, st, nullptr));
  return st.to_cache(dt);
}

// The caches both backends' GPU tests run at every level: a synthetic Llama-3-8B-shaped one and,
// when the data is there, kvc-bytes-a's real cache in every dtype.
inline std::vector<KVCache> synthetic_and_real_caches() {
  std::vector<KVCache> caches;
  auto syn = make_synthetic("llama3-8b", 300, DType::kF16, 5);
  EXPECT_TRUE(syn.ok()) << syn.status().to_string();
  if (syn.ok()) caches.push_back(std::move(*syn));
  if (!std::filesystem::exists(test::data_path("models/kvc-bytes-a.bin"))) {
    // Said on every run (and a failure under CI=true): without the data only the synthetic
    // cache is tested.
    if (test::running_in_ci()) {
      ADD_FAILURE() << "shared data missing under CI=true: " << test::data_path("models/kvc-bytes-a.bin");
    }
    std::printf("[   NOTE   ] %s not found: the real kvc-bytes-a caches are left out\n",
                test::data_path("models/kvc-bytes-a.bin").c_str());
  } else {
    for (DType dt : {DType::kF32, DType::kF16, DType::kBF16, DType::kF8E4M3}) {
      auto real = real_cache(dt, 512);
      EXPECT_TRUE(real.ok()) << real.status().to_string();
      if (real.ok()) caches.push_back(std::move(*real));
    }
  }
  return caches;
}

#if defined(KVCODEC_HAS_CUDA)
// ---- device memory -------------------------------------------------------------------------

inline bool have_gpu() { return cuda::device_status().ok(); }
#define KVCODEC_REQUIRE_GPU() \
  if (!::kvcodec::test::have_gpu()) GTEST_SKIP() << "no CUDA device: " << ::kvcodec::cuda::device_status().to_string()

template <typename T>
T* dev_alloc(size_t n) {
  void* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, n * sizeof(T) + 1), cudaSuccess);
  return static_cast<T*>(p);
}

// A Dest mirrored in device memory.
struct DeviceDest {
  Dest& host;
  std::vector<void*> bufs_dev, k_dev_ptrs, v_dev_ptrs;
  void** k_dev = nullptr;
  void** v_dev = nullptr;
  int32_t* table_dev = nullptr;
  int64_t* slots_dev = nullptr;

  explicit DeviceDest(Dest& h) : host(h) {
    for (auto& b : h.bufs) {
      void* p = dev_alloc<uint8_t>(b.size());
      cudaMemcpy(p, b.data(), b.size(), cudaMemcpyHostToDevice);
      bufs_dev.push_back(p);
    }
    h.split(bufs_dev, k_dev_ptrs, v_dev_ptrs);
    if (!k_dev_ptrs.empty()) {
      k_dev = dev_alloc<void*>(k_dev_ptrs.size());
      cudaMemcpy(k_dev, k_dev_ptrs.data(), k_dev_ptrs.size() * sizeof(void*), cudaMemcpyHostToDevice);
    }
    if (!v_dev_ptrs.empty()) {
      v_dev = dev_alloc<void*>(v_dev_ptrs.size());
      cudaMemcpy(v_dev, v_dev_ptrs.data(), v_dev_ptrs.size() * sizeof(void*), cudaMemcpyHostToDevice);
    }
    if (!h.block_table.empty()) {
      table_dev = dev_alloc<int32_t>(h.block_table.size());
      cudaMemcpy(table_dev, h.block_table.data(), h.block_table.size() * 4, cudaMemcpyHostToDevice);
    }
    if (!h.slot_mapping.empty()) {
      slots_dev = dev_alloc<int64_t>(h.slot_mapping.size());
      cudaMemcpy(slots_dev, h.slot_mapping.data(), h.slot_mapping.size() * 8, cudaMemcpyHostToDevice);
    }
  }
  ~DeviceDest() {
    for (void* p : bufs_dev) cudaFree(p);
    cudaFree(k_dev);
    cudaFree(v_dev);
    cudaFree(table_dev);
    cudaFree(slots_dev);
  }
  KVView view() const { return host.view(bufs_dev[0], k_dev, v_dev, table_dev, slots_dev); }
  std::string difference(const std::vector<uint8_t>& want) {
    return tensor_difference(gather(), want, host.shape, host.dtype);
  }
  // Copies the device buffers back and gathers them.
  std::vector<uint8_t> gather() {
    for (size_t i = 0; i < bufs_dev.size(); ++i)
      EXPECT_EQ(cudaMemcpy(host.bufs[i].data(), bufs_dev[i], host.bufs[i].size(), cudaMemcpyDeviceToHost), cudaSuccess);
    return host.gather();
  }
};

struct DeviceFrame {
  uint8_t* p = nullptr;
  explicit DeviceFrame(const std::vector<uint8_t>& f) {
    p = dev_alloc<uint8_t>(f.size());
    cudaMemcpy(p, f.data(), f.size(), cudaMemcpyHostToDevice);
  }
  ~DeviceFrame() { cudaFree(p); }
};

// Decodes `frame` on the GPU into a fresh destination in `layout`: "" when the result equals
// `ref` (the CPU decoder's, contiguous), else the decoder's error or where the two differ.
inline std::string gpu_decode_difference(const std::vector<uint8_t>& frame, const KVShape& s, DType dt, Layout layout,
                                         const std::vector<uint8_t>& ref) {
  Dest d(s, dt, layout);
  DeviceDest dd(d);
  DeviceFrame df(frame);
  if (Status st = cuda::decode_frame(df.p, frame, dd.view(), nullptr); !st.ok()) return st.to_string();
  return dd.difference(ref);
}

#endif

}  // namespace kvcodec::test
