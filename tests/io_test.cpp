// Tests of include/kvcodec/io.hpp: safetensors and .npy round trips, every accepted KV-cache
// convention, and malformed files (which must come back as errors, never crashes or huge
// allocations).
#include "kvcodec/io.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/dtype.hpp"
#include "test_util.hpp"

namespace kvcodec {
namespace {

namespace fs = std::filesystem;

// A fresh directory per test, removed afterwards.
class IoTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           ("kvcodec_io_test_" + std::to_string(::getpid()) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  void write_raw(const std::string& name, const std::string& bytes) const {
    std::ofstream(path(name), std::ios::binary) << bytes;
  }
  std::string read_raw(const std::string& name) const {
    std::ifstream in(path(name), std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  }
  // A safetensors file with the given header text and `data_bytes` zero bytes of data.
  void write_safetensors_raw(const std::string& name, const std::string& header, size_t data_bytes) const {
    std::string bytes(8, '\0');
    for (int i = 0; i < 8; ++i) bytes[i] = char((uint64_t(header.size()) >> (8 * i)) & 0xff);
    write_raw(name, bytes + header + std::string(data_bytes, '\0'));
  }

  fs::path dir_;
};

// Deterministic, distinct bytes for a tensor.
HostTensor make_tensor(const std::string& name, DType dtype, std::vector<int64_t> shape) {
  HostTensor t;
  t.name = name;
  t.dtype = dtype;
  t.shape = std::move(shape);
  size_t n = dtype_size(dtype);
  for (int64_t d : t.shape) n *= size_t(d);
  t.data.resize(n);
  for (size_t i = 0; i < n; ++i) t.data[i] = uint8_t(i * 131 + name.size() * 7 + 1);
  return t;
}

void expect_same(const HostTensor& a, const HostTensor& b) {
  EXPECT_EQ(a.dtype, b.dtype);
  EXPECT_EQ(a.shape, b.shape);
  EXPECT_EQ(a.data, b.data);
}

constexpr DType kAllDTypes[] = {DType::kF32, DType::kF16, DType::kBF16, DType::kF8E4M3};

// ---- safetensors ----------------------------------------------------------------------------

TEST_F(IoTest, SafetensorsRoundTripsEveryDtypeInFileOrder) {
  std::vector<HostTensor> in;
  for (DType t : kAllDTypes) in.push_back(make_tensor(std::string("t_") + dtype_name(t), t, {3, 5, 7}));
  in.push_back(make_tensor("scalar", DType::kF32, {}));
  in.push_back(make_tensor("empty", DType::kF16, {0, 4}));
  ASSERT_TRUE(write_safetensors(path("a.safetensors"), in).ok());

  auto out = read_safetensors(path("a.safetensors"));
  ASSERT_TRUE(out.ok()) << out.status().to_string();
  ASSERT_EQ(out->size(), in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    EXPECT_EQ((*out)[i].name, in[i].name);
    expect_same((*out)[i], in[i]);
  }
  // The data section starts 8-byte aligned, as the reference writer does.
  const std::string raw = read_raw("a.safetensors");
  uint64_t header_len = 0;
  std::memcpy(&header_len, raw.data(), 8);
  EXPECT_EQ(header_len % 8, 0u);
}

TEST_F(IoTest, SafetensorsReadsReferenceStyleHeaderWithMetadata) {
  // As written by the Python safetensors package: metadata first, keys in any order.
  const std::string header =
      R"({"__metadata__":{"format":"pt"},"b":{"dtype":"F16","shape":[2],"data_offsets":[8,12]},)"
      R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  write_safetensors_raw("ref.safetensors", header, 12);
  auto out = read_safetensors(path("ref.safetensors"));
  ASSERT_TRUE(out.ok()) << out.status().to_string();
  ASSERT_EQ(out->size(), 2u);
  EXPECT_EQ((*out)[0].name, "a");  // returned in data order
  EXPECT_EQ((*out)[1].name, "b");
  EXPECT_EQ((*out)[1].dtype, DType::kF16);
}

TEST_F(IoTest, SafetensorsWriterRejectsInvalidTensors) {
  auto bad_size = make_tensor("x", DType::kF32, {2, 2});
  bad_size.data.pop_back();
  EXPECT_EQ(write_safetensors(path("a.safetensors"), {bad_size}).code(), StatusCode::kInvalidArgument);
  auto t = make_tensor("x", DType::kF32, {2});
  EXPECT_EQ(write_safetensors(path("a.safetensors"), {t, t}).code(), StatusCode::kInvalidArgument);
  t.name = "__metadata__";
  EXPECT_EQ(write_safetensors(path("a.safetensors"), {t}).code(), StatusCode::kInvalidArgument);
  t.name = "\xff\xfe";
  EXPECT_EQ(write_safetensors(path("a.safetensors"), {t}).code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(fs::exists(path("a.safetensors")));
  EXPECT_TRUE(fs::is_empty(dir_)) << "a failed write left a temporary file behind";
}

struct BadHeader {
  const char* what;
  const char* header;
  size_t data_bytes;
  StatusCode code;
};

TEST_F(IoTest, SafetensorsMalformedHeadersAreErrors) {
  const BadHeader cases[] = {
      {"not json", R"({"a": {"dtype": "F32",)", 8, StatusCode::kCorruptData},
      {"not an object", R"([1, 2])", 0, StatusCode::kCorruptData},
      {"entry not an object", R"({"a": 3})", 0, StatusCode::kCorruptData},
      {"missing offsets", R"({"a":{"dtype":"F32","shape":[2]}})", 8, StatusCode::kCorruptData},
      {"unknown dtype", R"({"a":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}})", 8,
       StatusCode::kInvalidArgument},
      {"dtype not a string", R"({"a":{"dtype":4,"shape":[1],"data_offsets":[0,4]}})", 4, StatusCode::kCorruptData},
      {"negative dim", R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4, StatusCode::kCorruptData},
      {"fractional dim", R"({"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", 4, StatusCode::kCorruptData},
      {"offsets past the data", R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8,
       StatusCode::kCorruptData},
      {"end before begin", R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", 8, StatusCode::kCorruptData},
      {"size disagrees with shape", R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8,
       StatusCode::kCorruptData},
      {"shape overflows", R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", 8,
       StatusCode::kCorruptData},
      {"huge shape, small data", R"({"a":{"dtype":"F16","shape":[1099511627776],"data_offsets":[0,8]}})", 8,
       StatusCode::kCorruptData},
      {"overlap",
       R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
       12, StatusCode::kCorruptData},
      {"hole", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8, StatusCode::kCorruptData},
      {"trailing data", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 8, StatusCode::kCorruptData},
      {"metadata not an object", R"({"__metadata__":[]})", 0, StatusCode::kCorruptData},
      {"metadata value not a string", R"({"__metadata__":{"step":3}})", 0, StatusCode::kCorruptData},
      {"repeated tensor name",
       R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
       4, StatusCode::kCorruptData},
      {"repeated field", R"({"a":{"dtype":"F32","shape":[1],"shape":[1],"data_offsets":[0,4]}})", 4,
       StatusCode::kCorruptData},
      {"trailing characters", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}} x)", 4,
       StatusCode::kCorruptData},
  };
  for (const BadHeader& c : cases) {
    write_safetensors_raw("bad.safetensors", c.header, c.data_bytes);
    auto r = read_safetensors(path("bad.safetensors"));
    ASSERT_FALSE(r.ok()) << c.what;
    EXPECT_EQ(r.status().code(), c.code) << c.what << ": " << r.status().to_string();
  }
}

TEST_F(IoTest, SafetensorsAbsurdHeaderLengths) {
  // Longer than the file.
  std::string bytes(8, '\xff');
  write_raw("a.safetensors", bytes + "{}");
  EXPECT_EQ(read_safetensors(path("a.safetensors")).status().code(), StatusCode::kCorruptData);
  // Within a (sparse) file but above the 100 MB header limit: refused before reading it.
  bytes.assign(8, '\0');
  const uint64_t len = 150ull << 20;
  std::memcpy(bytes.data(), &len, 8);
  write_raw("big.safetensors", bytes);
  fs::resize_file(path("big.safetensors"), 200ull << 20);
  EXPECT_EQ(read_safetensors(path("big.safetensors")).status().code(), StatusCode::kResourceExhausted);
  // Shorter than the length field itself.
  write_raw("short.safetensors", "\x02\0\0");
  EXPECT_EQ(read_safetensors(path("short.safetensors")).status().code(), StatusCode::kCorruptData);
}

TEST_F(IoTest, SafetensorsEveryTruncationIsAnError) {
  ASSERT_TRUE(write_safetensors(path("a.safetensors"), {make_tensor("x", DType::kF16, {4, 3}),
                                                        make_tensor("y", DType::kF32, {5})})
                  .ok());
  const std::string full = read_raw("a.safetensors");
  for (size_t n = 0; n < full.size(); ++n) {
    write_raw("t.safetensors", full.substr(0, n));
    EXPECT_FALSE(read_safetensors(path("t.safetensors")).ok()) << "prefix of " << n << " bytes";
  }
}

TEST_F(IoTest, MissingAndNonRegularFiles) {
  auto r = read_safetensors(path("nope.safetensors"));
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  EXPECT_NE(std::string(r.status().message()).find("nope.safetensors"), std::string::npos);
  EXPECT_EQ(read_npy(path("nope.npy")).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(read_file(dir_.string()).status().code(), StatusCode::kIoError);
}

// ---- npy ------------------------------------------------------------------------------------

TEST_F(IoTest, NpyRoundTripsF32AndF16InEveryRank) {
  const std::vector<std::vector<int64_t>> shapes = {{}, {7}, {3, 4}, {2, 2, 3, 4, 5}, {0, 3}};
  for (DType t : {DType::kF32, DType::kF16}) {
    for (const auto& shape : shapes) {
      const HostTensor in = make_tensor("", t, shape);
      ASSERT_TRUE(write_npy(path("a.npy"), in).ok());
      auto out = read_npy(path("a.npy"));
      ASSERT_TRUE(out.ok()) << out.status().to_string();
      expect_same(*out, in);
      // numpy's layout: 10-byte preamble + header padded so the data starts 64-aligned.
      const std::string raw = read_raw("a.npy");
      EXPECT_EQ((raw.size() - in.data.size()) % 64, 0u);
    }
  }
}

TEST_F(IoTest, NpyWritesNumpyTupleSyntax) {
  ASSERT_TRUE(write_npy(path("a.npy"), make_tensor("", DType::kF32, {7})).ok());
  EXPECT_NE(read_raw("a.npy").find("'shape': (7,), }"), std::string::npos);
  ASSERT_TRUE(write_npy(path("b.npy"), make_tensor("", DType::kF16, {2, 3})).ok());
  EXPECT_NE(read_raw("b.npy").find("{'descr': '<f2', 'fortran_order': False, 'shape': (2, 3), }"),
            std::string::npos);
}

TEST_F(IoTest, NpyRejectsDtypesWithoutNpyEquivalent) {
  EXPECT_EQ(write_npy(path("a.npy"), make_tensor("", DType::kBF16, {2})).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(write_npy(path("a.npy"), make_tensor("", DType::kF8E4M3, {2})).code(), StatusCode::kInvalidArgument);
}

// An .npy file with a literal header (version, dict) and `data_bytes` zero bytes.
std::string npy_bytes(int major, const std::string& dict, size_t data_bytes) {
  std::string out = "\x93NUMPY";
  out += char(major);
  out += '\0';
  const size_t len = dict.size();
  for (int i = 0; i < (major == 1 ? 2 : 4); ++i) out += char((len >> (8 * i)) & 0xff);
  return out + dict + std::string(data_bytes, '\0');
}

TEST_F(IoTest, NpyReadsVersion2AndPython2Headers) {
  write_raw("v2.npy", npy_bytes(2, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }\n", 24));
  auto a = read_npy(path("v2.npy"));
  ASSERT_TRUE(a.ok()) << a.status().to_string();
  EXPECT_EQ(a->shape, (std::vector<int64_t>{2, 3}));
  write_raw("py2.npy", npy_bytes(1, "{'descr': '<f2', 'fortran_order': False, 'shape': (3L,), }\n", 6));
  auto b = read_npy(path("py2.npy"));
  ASSERT_TRUE(b.ok()) << b.status().to_string();
  EXPECT_EQ(b->dtype, DType::kF16);
  EXPECT_EQ(b->shape, (std::vector<int64_t>{3}));
}

struct BadNpy {
  const char* what;
  std::string bytes;
  StatusCode code;
};

TEST_F(IoTest, NpyMalformedFilesAreErrors) {
  const std::string ok_dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }\n";
  const BadNpy cases[] = {
      {"big-endian", npy_bytes(1, "{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", 8),
       StatusCode::kInvalidArgument},
      {"fortran order", npy_bytes(1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }", 16),
       StatusCode::kInvalidArgument},
      {"int dtype", npy_bytes(1, "{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }", 16),
       StatusCode::kInvalidArgument},
      {"version 3", npy_bytes(3, ok_dict, 8), StatusCode::kUnsupportedVersion},
      {"bad magic", "\x93NUMPX" + npy_bytes(1, ok_dict, 8).substr(6), StatusCode::kCorruptData},
      {"header past the file", npy_bytes(1, ok_dict, 8).substr(0, 20), StatusCode::kCorruptData},
      {"too little data", npy_bytes(1, ok_dict, 7), StatusCode::kCorruptData},
      {"too much data", npy_bytes(1, ok_dict, 9), StatusCode::kCorruptData},
      {"garbage dict", npy_bytes(1, "{'descr': <f4}", 8), StatusCode::kCorruptData},
      {"unterminated", npy_bytes(1, "{'descr': '<f4", 8), StatusCode::kCorruptData},
      {"missing shape", npy_bytes(1, "{'descr': '<f4', 'fortran_order': False}", 8), StatusCode::kCorruptData},
      {"unknown key", npy_bytes(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}", 8),
       StatusCode::kCorruptData},
      {"repeated key", npy_bytes(1, "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2,)}", 8),
       StatusCode::kCorruptData},
      {"negative dim", npy_bytes(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }", 8),
       StatusCode::kCorruptData},
      {"shape overflow",
       npy_bytes(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296), }", 8),
       StatusCode::kCorruptData},
      {"dim beyond int64", npy_bytes(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }", 8),
       StatusCode::kCorruptData},
      {"huge shape, small data", npy_bytes(1, "{'descr': '<f2', 'fortran_order': False, 'shape': (1099511627776,), }", 8),
       StatusCode::kCorruptData},
  };
  for (const BadNpy& c : cases) {
    write_raw("bad.npy", c.bytes);
    auto r = read_npy(path("bad.npy"));
    ASSERT_FALSE(r.ok()) << c.what;
    EXPECT_EQ(r.status().code(), c.code) << c.what << ": " << r.status().to_string();
  }
  write_raw("be.npy", cases[0].bytes);
  EXPECT_NE(std::string(read_npy(path("be.npy")).status().message()).find("big-endian"), std::string::npos);
}

TEST_F(IoTest, NpyEveryTruncationIsAnError) {
  ASSERT_TRUE(write_npy(path("a.npy"), make_tensor("", DType::kF32, {3, 2})).ok());
  const std::string full = read_raw("a.npy");
  for (size_t n = 0; n < full.size(); ++n) {
    write_raw("t.npy", full.substr(0, n));
    EXPECT_FALSE(read_npy(path("t.npy")).ok()) << "prefix of " << n << " bytes";
  }
}

// ---- KV caches ------------------------------------------------------------------------------

constexpr KVShape kShape{3, 5, 2, 4};  // layers, tokens, kv_heads, head_dim

// The f32 value stored for element (l, kv, t, h, d): unique, so any misplacement shows.
float tag(uint32_t l, uint32_t kv, uint32_t t, uint32_t h, uint32_t d) {
  return float(l * 10000 + kv * 1000 + t * 100 + h * 10 + d);
}

// Checks that a loaded cache holds tag() at every element of the contiguous layout.
void expect_tagged(const KVCache& kv) {
  ASSERT_EQ(kv.dtype, DType::kF32);
  ASSERT_EQ(kv.shape, kShape);
  ASSERT_EQ(kv.data.size(), kShape.elements() * 4);
  const float* p = reinterpret_cast<const float*>(kv.data.data());
  size_t i = 0;
  for (uint32_t l = 0; l < kShape.layers; ++l)
    for (uint32_t k = 0; k < 2; ++k)
      for (uint32_t t = 0; t < kShape.tokens; ++t)
        for (uint32_t h = 0; h < kShape.kv_heads; ++h)
          for (uint32_t d = 0; d < kShape.head_dim; ++d, ++i)
            ASSERT_EQ(p[i], tag(l, k, t, h, d)) << "l" << l << " kv" << k << " t" << t << " h" << h << " d" << d;
}

// Per-layer tensors "layers.{l}.key/value" in [T, H, D] or HF [1, H, T, D].
std::vector<HostTensor> per_layer_tensors(bool hf) {
  std::vector<HostTensor> out;
  for (uint32_t l = 0; l < kShape.layers; ++l) {
    for (uint32_t k = 0; k < 2; ++k) {
      HostTensor t;
      t.name = "layers." + std::to_string(l) + (k ? ".value" : ".key");
      t.dtype = DType::kF32;
      t.shape = hf ? std::vector<int64_t>{1, kShape.kv_heads, kShape.tokens, kShape.head_dim}
                   : std::vector<int64_t>{kShape.tokens, kShape.kv_heads, kShape.head_dim};
      t.data.resize(kShape.tokens * kShape.channels() * 4);
      float* p = reinterpret_cast<float*>(t.data.data());
      for (uint32_t tok = 0; tok < kShape.tokens; ++tok)
        for (uint32_t h = 0; h < kShape.kv_heads; ++h)
          for (uint32_t d = 0; d < kShape.head_dim; ++d) {
            const size_t i = hf ? (size_t(h) * kShape.tokens + tok) * kShape.head_dim + d
                                : (size_t(tok) * kShape.kv_heads + h) * kShape.head_dim + d;
            p[i] = tag(l, k, tok, h, d);
          }
      out.push_back(std::move(t));
    }
  }
  return out;
}

KVCache tagged_cache() {
  auto kv = KVCache::allocate(DType::kF32, kShape);
  EXPECT_TRUE(kv.ok());
  KVView v = kv->view();
  for (uint32_t l = 0; l < kShape.layers; ++l)
    for (uint32_t k = 0; k < 2; ++k)
      for (uint32_t t = 0; t < kShape.tokens; ++t)
        for (uint32_t h = 0; h < kShape.kv_heads; ++h)
          for (uint32_t d = 0; d < kShape.head_dim; ++d)
            *static_cast<float*>(v.element(l, k, t, h, d)) = tag(l, k, t, h, d);
  return std::move(kv).value();
}

TEST_F(IoTest, LoadsSingleKvTensorFromBothFormats) {
  const KVCache kv = tagged_cache();
  for (const char* name : {"kv.safetensors", "kv.npy", "KV.NPY"}) {
    Status saved = save_kv(path(name), kv);
    ASSERT_TRUE(saved.ok()) << name << ": " << saved.to_string();
    auto back = load_kv(path(name));
    ASSERT_TRUE(back.ok()) << name << ": " << back.status().to_string();
    expect_tagged(*back);
  }
  auto st = read_safetensors(path("kv.safetensors"));
  ASSERT_TRUE(st.ok());
  ASSERT_EQ(st->size(), 1u);
  EXPECT_EQ((*st)[0].name, "kv");
  EXPECT_EQ((*st)[0].shape, (std::vector<int64_t>{3, 2, 5, 2, 4}));
}

TEST_F(IoTest, LoadsPerLayerTensorsInBothLayouts) {
  for (bool hf : {false, true}) {
    auto tensors = per_layer_tensors(hf);
    std::reverse(tensors.begin(), tensors.end());  // file order must not matter
    ASSERT_TRUE(write_safetensors(path("layers.safetensors"), tensors).ok());
    auto kv = load_kv(path("layers.safetensors"));
    ASSERT_TRUE(kv.ok()) << "hf=" << hf << ": " << kv.status().to_string();
    expect_tagged(*kv);
  }
}

TEST_F(IoTest, SaveLoadRoundTripsEveryDtype) {
  for (DType t : kAllDTypes) {
    auto kv = KVCache::allocate(t, KVShape{2, 3, 1, 8});
    ASSERT_TRUE(kv.ok());
    for (size_t i = 0; i < kv->data.size(); ++i) kv->data[i] = uint8_t(i * 37 + 11);
    const bool npy_ok = t == DType::kF32 || t == DType::kF16;
    for (const char* ext : {".safetensors", ".npy"}) {
      const std::string p = path(std::string("kv") + ext);
      Status s = save_kv(p, *kv);
      if (std::string(ext) == ".npy" && !npy_ok) {
        EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << dtype_name(t);
        continue;
      }
      ASSERT_TRUE(s.ok()) << dtype_name(t) << ext << ": " << s.to_string();
      auto back = load_kv(p);
      ASSERT_TRUE(back.ok()) << back.status().to_string();
      EXPECT_EQ(back->dtype, t);
      EXPECT_EQ(back->shape, kv->shape);
      EXPECT_EQ(back->data, kv->data);
    }
  }
}

TEST_F(IoTest, InconsistentConventionsAreErrors) {
  struct Case {
    const char* what;
    std::vector<HostTensor> tensors;
  };
  std::vector<Case> cases;
  auto layers = per_layer_tensors(false);
  {
    auto t = layers;
    t.erase(t.begin() + 3);  // layers.1.value
    cases.push_back({"missing value", t});
  }
  {
    auto t = layers;
    t.erase(t.begin(), t.begin() + 2);  // no layer 0
    cases.push_back({"missing layer 0", t});
  }
  {
    auto t = layers;
    t[4].shape = {kShape.tokens - 1, kShape.kv_heads, kShape.head_dim};
    t[4].data.resize(t[4].data.size() - kShape.channels() * 4);
    cases.push_back({"different token count", t});
  }
  {
    auto t = layers;
    t[2].dtype = DType::kF16;
    t[2].shape[0] *= 2;
    cases.push_back({"mixed dtypes", t});
  }
  {
    auto t = layers;
    t.push_back(make_tensor("lm_head", DType::kF32, {2}));
    cases.push_back({"unexpected tensor", t});
  }
  {
    auto t = layers;
    t[0].name = "layers.00.key";
    cases.push_back({"leading zero", t});
  }
  {
    auto t = layers;
    t.push_back(make_tensor("kv", DType::kF32, {1, 2, 1, 1, 1}));
    cases.push_back({"kv beside layers", t});
  }
  cases.push_back({"kv without the K/V axis", {make_tensor("kv", DType::kF32, {1, 3, 1, 1, 1})}});
  cases.push_back({"kv of rank 4", {make_tensor("kv", DType::kF32, {1, 2, 1, 1})}});
  cases.push_back({"HF with batch 2", {make_tensor("layers.0.key", DType::kF32, {2, 1, 1, 1}),
                                       make_tensor("layers.0.value", DType::kF32, {2, 1, 1, 1})}});
  cases.push_back({"zero tokens", {make_tensor("kv", DType::kF32, {1, 2, 0, 1, 1})}});
  cases.push_back({"no tensors", {}});
  for (const Case& c : cases) {
    ASSERT_TRUE(write_safetensors(path("bad.safetensors"), c.tensors).ok()) << c.what;
    auto r = load_kv(path("bad.safetensors"));
    ASSERT_FALSE(r.ok()) << c.what;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << c.what << ": " << r.status().to_string();
  }
}

TEST_F(IoTest, ShapesBeyondTheLimitsAreResourceExhausted) {
  // Small files whose shapes exceed kMaxLayers / kMaxHeadDim.
  ASSERT_TRUE(write_safetensors(path("a.safetensors"), {make_tensor("kv", DType::kF8E4M3, {kMaxLayers + 1, 2, 1, 1, 1})}).ok());
  EXPECT_EQ(load_kv(path("a.safetensors")).status().code(), StatusCode::kResourceExhausted);
  ASSERT_TRUE(write_safetensors(path("b.safetensors"), {make_tensor("layers.0.key", DType::kF8E4M3, {1, 1, kMaxHeadDim + 1}),
                                                        make_tensor("layers.0.value", DType::kF8E4M3, {1, 1, kMaxHeadDim + 1})})
                  .ok());
  EXPECT_EQ(load_kv(path("b.safetensors")).status().code(), StatusCode::kResourceExhausted);
  ASSERT_TRUE(write_safetensors(path("c.safetensors"), {make_tensor("layers.5000.key", DType::kF32, {1, 1, 1})}).ok());
  EXPECT_EQ(load_kv(path("c.safetensors")).status().code(), StatusCode::kResourceExhausted);
}

TEST_F(IoTest, LoadAndSaveNeedAKnownExtension) {
  const KVCache kv = tagged_cache();
  EXPECT_EQ(save_kv(path("kv.bin"), kv).code(), StatusCode::kInvalidArgument);
  write_raw("kv.bin", "x");
  EXPECT_EQ(load_kv(path("kv.bin")).status().code(), StatusCode::kInvalidArgument);
}

TEST_F(IoTest, SaveKvChecksTheCache) {
  KVCache kv = tagged_cache();
  kv.data.pop_back();
  EXPECT_EQ(save_kv(path("kv.safetensors"), kv).code(), StatusCode::kInvalidArgument);
  kv.shape.tokens = 0;
  EXPECT_EQ(save_kv(path("kv.safetensors"), kv).code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(fs::exists(path("kv.safetensors")));
}

TEST_F(IoTest, AllocateChecksTheShape) {
  auto ok = KVCache::allocate(DType::kBF16, KVShape{2, 3, 4, 5});
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok->data.size(), 2u * 2 * 3 * 4 * 5 * 2);
  EXPECT_TRUE(std::all_of(ok->data.begin(), ok->data.end(), [](uint8_t b) { return b == 0; }));
  EXPECT_EQ(KVCache::allocate(DType::kF16, KVShape{0, 3, 4, 5}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(KVCache::allocate(DType::kF16, KVShape{1, kMaxTokens + 1, 1, 1}).status().code(),
            StatusCode::kResourceExhausted);
  EXPECT_EQ(KVCache::allocate(DType(9), KVShape{1, 1, 1, 1}).status().code(), StatusCode::kInvalidArgument);
}

// ---- whole files ----------------------------------------------------------------------------

TEST_F(IoTest, WriteFileIsAtomicAndReadFileReadsItBack) {
  std::vector<uint8_t> a(1000), b(10);
  for (size_t i = 0; i < a.size(); ++i) a[i] = uint8_t(i);
  ASSERT_TRUE(write_file(path("f"), a.data(), a.size()).ok());
  ASSERT_TRUE(write_file(path("f"), b.data(), b.size()).ok());  // replaces, not appends
  auto back = read_file(path("f"));
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, b);
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 1)
      << "temporary files left behind";
  ASSERT_TRUE(write_file(path("empty"), nullptr, 0).ok());
  auto empty = read_file(path("empty"));
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->empty());
}

TEST_F(IoTest, WriteFileReportsErrors) {
  const uint8_t byte = 1;
  Status s = write_file(path("no/such/dir/f"), &byte, 1);
  EXPECT_EQ(s.code(), StatusCode::kIoError);
  EXPECT_NE(std::string(s.message()).find("no/such/dir/f"), std::string::npos);
  EXPECT_EQ(write_file("", &byte, 1).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(read_file(path("missing")).status().code(), StatusCode::kNotFound);
}

// A view's elements copied into the contiguous layout.
KVCache contiguous_copy(const KVView& v) {
  auto kv = KVCache::allocate(v.dtype, v.shape);
  EXPECT_TRUE(kv.ok());
  const KVView out = kv->view();
  const size_t es = dtype_size(v.dtype);
  for (uint32_t l = 0; l < v.shape.layers; ++l)
    for (uint32_t k = 0; k < 2; ++k)
      for (uint32_t t = 0; t < v.shape.tokens; ++t)
        for (uint32_t h = 0; h < v.shape.kv_heads; ++h)
          for (uint32_t d = 0; d < v.shape.head_dim; ++d)
            std::memcpy(out.element(l, k, t, h, d), v.element(l, k, t, h, d), es);
  return std::move(kv).value();
}

TEST_F(IoTest, KVFileViewsEveryConventionInPlace) {
  const KVCache kv = tagged_cache();
  ASSERT_TRUE(save_kv(path("kv.safetensors"), kv).ok());
  ASSERT_TRUE(save_kv(path("kv.npy"), kv).ok());
  for (bool hf : {false, true}) {
    auto tensors = per_layer_tensors(hf);
    std::reverse(tensors.begin(), tensors.end());
    ASSERT_TRUE(write_safetensors(path(hf ? "hf.safetensors" : "layers.safetensors"), tensors).ok());
  }
  for (const char* name : {"kv.safetensors", "kv.npy", "layers.safetensors", "hf.safetensors"}) {
    auto f = KVFile::open(path(name));
    ASSERT_TRUE(f.ok()) << name << ": " << f.status().to_string();
    EXPECT_EQ(f->bytes(), kShape.elements() * 4);
    ASSERT_TRUE(validate_view(f->view()).ok());
    KVFile moved = std::move(f).value();  // the view stays valid when the object moves
    expect_tagged(contiguous_copy(moved.view()));
  }
}

TEST_F(IoTest, KVFileReportsWhatLoadKvReports) {
  EXPECT_EQ(KVFile::open(path("missing.safetensors")).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(KVFile::open(path("kv.bin")).status().code(), StatusCode::kInvalidArgument);
  write_safetensors_raw("bad.safetensors", R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 8);
  EXPECT_EQ(KVFile::open(path("bad.safetensors")).status().code(), load_kv(path("bad.safetensors")).status().code());
  write_safetensors_raw("short.safetensors", R"({"kv":{"dtype":"F32","shape":[1,2,1,1,2],"data_offsets":[0,16]}})", 8);
  const Status s = KVFile::open(path("short.safetensors")).status();
  EXPECT_EQ(s.code(), StatusCode::kCorruptData);
  EXPECT_NE(std::string(s.message()).find("short.safetensors"), std::string::npos);
}

TEST_F(IoTest, FileBytesReadsTheWholeFile) {
  std::vector<uint8_t> a(5 << 20);  // above the huge-page threshold
  for (size_t i = 0; i < a.size(); ++i) a[i] = uint8_t(i * 7 + i / 4096);
  ASSERT_TRUE(write_file(path("f"), a.data(), a.size()).ok());
  auto b = FileBytes::read(path("f"));
  ASSERT_TRUE(b.ok());
  EXPECT_TRUE(std::equal(a.begin(), a.end(), b->bytes().begin(), b->bytes().end()));
  ASSERT_TRUE(write_file(path("empty"), nullptr, 0).ok());
  auto e = FileBytes::read(path("empty"));
  ASSERT_TRUE(e.ok());
  EXPECT_TRUE(e->bytes().empty());
  EXPECT_EQ(FileBytes::read(path("missing")).status().code(), StatusCode::kNotFound);
}

TEST_F(IoTest, WriteFileWithWritesWhatFillUsed) {
  ASSERT_TRUE(write_file_with(path("f"), 100, [](std::span<uint8_t> buf) -> StatusOr<size_t> {
                EXPECT_EQ(buf.size(), 100u);
                for (size_t i = 0; i < 10; ++i) buf[i] = uint8_t(i + 1);
                return size_t(10);
              }).ok());
  auto back = read_file(path("f"));
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, (std::vector<uint8_t>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}));
  // fill's error comes back unchanged and no file (nor temporary) is written.
  const Status s = write_file_with(path("g"), 10, [](std::span<uint8_t>) -> StatusOr<size_t> {
    return CorruptData("bad frame");
  });
  EXPECT_EQ(s.code(), StatusCode::kCorruptData);
  EXPECT_EQ(std::string(s.message()), "bad frame");
  EXPECT_EQ(write_file_with(path("h"), 10, [](std::span<uint8_t>) -> StatusOr<size_t> { return size_t(11); }).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 1);
}

TEST_F(IoTest, SaveKvByLayersWritesWhatSaveKvWrites) {
  const KVCache kv = tagged_cache();
  const size_t layer_bytes = kv.data.size() / kShape.layers;
  for (const char* ext : {".safetensors", ".npy"}) {
    ASSERT_TRUE(save_kv(path(std::string("a") + ext), kv).ok());
    // Buffers of 1, 2 and all layers: every slab is filled in order with its layers only.
    for (size_t buffer : {layer_bytes, 2 * layer_bytes + 1, size_t(1) << 20}) {
      uint32_t next = 0;
      const Status s = save_kv_by_layers(
          path(std::string("b") + ext), kv.dtype, kv.shape,
          [&](uint32_t lb, uint32_t le, const KVView& v) {
            EXPECT_EQ(lb, next);
            EXPECT_LE(size_t(le - lb) * layer_bytes, std::max(buffer, layer_bytes));
            next = le;
            const KVView src = contiguous_view(const_cast<uint8_t*>(kv.data.data()), kv.dtype, kv.shape);
            for (uint32_t l = lb; l < le; ++l)
              for (uint32_t k = 0; k < 2; ++k)
                for (uint32_t t = 0; t < kShape.tokens; ++t)
                  for (uint32_t h = 0; h < kShape.kv_heads; ++h)
                    std::memcpy(v.element(l, k, t, h, 0), src.element(l, k, t, h, 0), kShape.head_dim * 4);
            return Status::Ok();
          },
          buffer);
      ASSERT_TRUE(s.ok()) << s.to_string();
      EXPECT_EQ(next, kShape.layers);
      EXPECT_EQ(read_raw(std::string("a") + ext), read_raw(std::string("b") + ext)) << ext << " buffer " << buffer;
    }
  }
  const Status s = save_kv_by_layers(path("c.safetensors"), kv.dtype, kv.shape,
                                     [](uint32_t, uint32_t, const KVView&) { return CorruptData("bad unit"); });
  EXPECT_EQ(s.code(), StatusCode::kCorruptData);
  EXPECT_FALSE(fs::exists(path("c.safetensors")));
  EXPECT_EQ(save_kv_by_layers(path("c.bin"), kv.dtype, kv.shape,
                              [](uint32_t, uint32_t, const KVView&) { return Status::Ok(); })
                .code(),
            StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvcodec
