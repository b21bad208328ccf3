// KV caches as files: safetensors and NumPy .npy (conventions in docs/file-conventions.md).
//
// Everything read from a file is untrusted. The readers parse the small header first and check
// every size it claims against the real file length before allocating anything from it, so a
// corrupt or hostile header costs at most one bounded header read; tensor bytes are then read
// straight into their final buffers. Writers go through AtomicFile: a temporary file beside the
// target, renamed over it only once everything was written, so readers never see a half file.
#include "kvcodec/io.hpp"
#include "kvcodec/profile.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <functional>
#include <memory>
#include <limits>
#include <new>
#include <optional>
#include <span>
#include <string_view>
#include <unordered_set>
#include <utility>

#include "common/bytes.hpp"
#include <nlohmann/json.hpp>

namespace kvcodec {
namespace {

// Safetensors headers are parsed with nlohmann/json, never throwing (parse(..., false)), into an
// ordered_json so that tensors keep their document order.
using Json = nlohmann::ordered_json;
// Arrays and objects nested deeper than this are refused (safetensors headers need 3 levels).
constexpr int kJsonMaxDepth = 64;

// safetensors' own reader refuses headers above 100 MB; so do we (a KV file needs a few KB).
constexpr uint64_t kMaxSafetensorsHeader = 100ull << 20;
// A .npy header is a short Python dict; numpy itself refuses ones above 10 KB by default.
constexpr uint64_t kMaxNpyHeader = 1ull << 20;
constexpr uint8_t kNpyMagic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};

std::string errno_text(int err) { return std::strerror(err); }


// a * b, or false on uint64 overflow.
bool mul_overflows(uint64_t a, uint64_t b, uint64_t* out) { return __builtin_mul_overflow(a, b, out); }

// Bytes of a tensor of `shape` and `dtype`, or kCorruptData when the product overflows (no
// file can hold such a tensor, so the header that claims it is corrupt).
StatusOr<uint64_t> tensor_bytes(const std::vector<int64_t>& shape, DType dtype) {
  uint64_t n = dtype_size(dtype);
  for (int64_t d : shape) {
    if (d < 0) return CorruptData("negative dimension in a tensor shape");
    if (mul_overflows(n, uint64_t(d), &n)) return CorruptData("tensor shape overflows 64 bits");
  }
  return n;
}

// std::vector growth that reports allocation failure as a Status instead of throwing.
Status resize_bytes(std::vector<uint8_t>& v, uint64_t n) {
  if (n > v.max_size()) return ResourceExhausted("tensor too large for this machine");
  try {
    v.resize(size_t(n));
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("out of memory allocating " + std::to_string(n) + " bytes");
  }
  return Status::Ok();
}

// `n` bytes that are not zero-filled by us (the kernel maps zero pages on first touch only):
// untouched capacity costs nothing, and buffers of 2 MiB or more ask for transparent huge pages,
// so filling them takes one page fault per 2 MiB instead of one per 4 KiB.
StatusOr<std::shared_ptr<uint8_t>> alloc_pages(size_t n) {
  const size_t len = std::max<size_t>(n, 1);
  void* p = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return ResourceExhausted("out of memory allocating " + std::to_string(n) + " bytes");
#if defined(MADV_HUGEPAGE)
  if (len >= (size_t(2) << 20)) ::madvise(p, len, MADV_HUGEPAGE);  // advice only: failure is harmless
#endif
  return std::shared_ptr<uint8_t>(static_cast<uint8_t*>(p), [len](uint8_t* q) { ::munmap(q, len); });
}

// ---- files ----------------------------------------------------------------------------------

// A regular file opened for reading, with its size known up front.
class InputFile {
 public:
  InputFile() = default;
  InputFile(const InputFile&) = delete;
  InputFile& operator=(const InputFile&) = delete;
  ~InputFile() {
    if (fd_ >= 0) ::close(fd_);
  }

  Status open(const std::string& path) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) {
      const int err = errno;
      return Status(err == ENOENT ? StatusCode::kNotFound : StatusCode::kIoError,
                    "cannot open: " + errno_text(err));
    }
    struct stat st;
    if (::fstat(fd_, &st) != 0) return IoError("cannot stat: " + errno_text(errno));
    // Pipes and devices have no size to validate headers against.
    if (!S_ISREG(st.st_mode)) return IoError("not a regular file");
    size_ = uint64_t(st.st_size);
    return Status::Ok();
  }

  uint64_t size() const { return size_; }

  // Reads exactly n bytes at offset; a short read means the file changed under us.
  Status read_at(uint64_t offset, uint8_t* dst, uint64_t n) const {
    while (n > 0) {
      const size_t want = size_t(std::min<uint64_t>(n, 1u << 30));
      const ssize_t got = ::pread(fd_, dst, want, off_t(offset));
      if (got < 0) {
        if (errno == EINTR) continue;
        return IoError("read failed: " + errno_text(errno));
      }
      if (got == 0) return IoError("file shrank while being read");
      dst += got;
      offset += uint64_t(got);
      n -= uint64_t(got);
    }
    return Status::Ok();
  }

 private:
  int fd_ = -1;
  uint64_t size_ = 0;
};

// Writes a file atomically: the bytes go to a fresh temporary file in the target's directory
// (so the final rename never crosses file systems), which replaces the target on commit().
// Destroying an uncommitted AtomicFile removes the temporary file. Atomic with respect to other
// processes; no fsync, so not a durability guarantee against power loss.
class AtomicFile {
 public:
  AtomicFile() = default;
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  ~AtomicFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!tmp_.empty()) ::unlink(tmp_.c_str());
  }

  Status open(const std::string& path) {
    if (path.empty()) return InvalidArgument("empty output path");
    path_ = path;
    // pid + per-process counter: unique among concurrent writers of the same target. O_EXCL
    // guards against a stale file of a crashed writer with the same name.
    static std::atomic<uint64_t> counter{0};
    for (int attempt = 0; attempt < 100; ++attempt) {
      std::string tmp = path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter++);
      fd_ = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
      if (fd_ >= 0) {
        tmp_ = std::move(tmp);
        return Status::Ok();
      }
      if (errno != EEXIST) return IoError("cannot create a temporary file: " + errno_text(errno));
    }
    return IoError("cannot create a unique temporary file");
  }

  Status write(const uint8_t* data, uint64_t n) {
    while (n > 0) {
      const size_t want = size_t(std::min<uint64_t>(n, 1u << 30));
      const ssize_t put = ::write(fd_, data, want);
      if (put < 0) {
        if (errno == EINTR) continue;
        return IoError("write failed: " + errno_text(errno));
      }
      data += put;
      n -= uint64_t(put);
    }
    return Status::Ok();
  }
  Status write(std::string_view s) { return write(reinterpret_cast<const uint8_t*>(s.data()), s.size()); }

  Status commit() {
    const int fd = std::exchange(fd_, -1);
    // close() is where NFS and quota errors surface: check it.
    if (::close(fd) != 0) return IoError("close failed: " + errno_text(errno));
    if (::rename(tmp_.c_str(), path_.c_str()) != 0) return IoError("rename failed: " + errno_text(errno));
    tmp_.clear();
    return Status::Ok();
  }

 private:
  int fd_ = -1;
  std::string path_, tmp_;
};

// Prefixes a failed status with the file it concerns.
Status in_file(const Status& s, const std::string& path) { return path.empty() ? s : s.with_context(path); }

// ---- safetensors ----------------------------------------------------------------------------
//
// [u64 LE header length N][N bytes of JSON][data]. The JSON maps tensor names to
// {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the data section) plus
// an optional "__metadata__" object. The data section must be exactly covered by the tensors,
// without holes or overlaps, as the reference implementation requires.

// A tensor to write: borrowed bytes, so save_kv writes a cache without copying it. `data` may be
// empty when the bytes come later (save_kv_by_layers): `bytes` is the tensor's size either way.
struct TensorRef {
  std::string_view name;
  DType dtype;
  std::span<const int64_t> shape;
  std::span<const uint8_t> data;
  uint64_t bytes = 0;
};

const char* safetensors_dtype(DType t) {
  switch (t) {
    case DType::kF32: return "F32";
    case DType::kF16: return "F16";
    case DType::kBF16: return "BF16";
    case DType::kF8E4M3: return "F8_E4M3";
  }
  return "?";
}

StatusOr<DType> parse_safetensors_dtype(std::string_view s) {
  for (DType t : {DType::kF32, DType::kF16, DType::kBF16, DType::kF8E4M3})
    if (s == safetensors_dtype(t)) return t;
  return InvalidArgument("unsupported tensor dtype '" + std::string(s) + "' (F32, F16, BF16, F8_E4M3)");
}

// One entry of the header; `data` is filled once the whole header has been validated.
struct PendingTensor {
  HostTensor tensor;
  uint64_t begin = 0, end = 0;
};

// A JSON array of non-negative integers (below 2^64: no sign, fraction or exponent).
StatusOr<std::vector<uint64_t>> read_uints(const Json& j, std::string_view what) {
  if (!j.is_array()) return CorruptData(std::string(what) + ": not an array");
  std::vector<uint64_t> v;
  for (const Json& x : j) {
    if (!x.is_number_unsigned()) return CorruptData(std::string(what) + ": not a non-negative integer");
    v.push_back(x.get<uint64_t>());
  }
  return v;
}

// One tensor entry, its keys in any order; other keys are ignored, as the reference reader does.
StatusOr<PendingTensor> parse_entry(const Json& entry, std::string name) {
  const std::string where = "tensor '" + name + "'";
  if (!entry.is_object()) return CorruptData(where + " is not a JSON object");
  const auto dtype = entry.find("dtype"), shape_it = entry.find("shape"), offsets_it = entry.find("data_offsets");
  if (dtype == entry.end() || shape_it == entry.end() || offsets_it == entry.end())
    return CorruptData(where + " lacks dtype, shape or data_offsets");
  if (!dtype->is_string()) return CorruptData(where + ": dtype is not a string");
  KVCODEC_ASSIGN_OR_RETURN(std::vector<uint64_t> shape, read_uints(*shape_it, where + ": shape"));
  KVCODEC_ASSIGN_OR_RETURN(std::vector<uint64_t> offsets, read_uints(*offsets_it, where + ": data_offsets"));
  if (offsets.size() != 2) return CorruptData(where + ": data_offsets is not [begin, end]");

  PendingTensor p;
  p.tensor.name = std::move(name);
  auto parsed_dtype = parse_safetensors_dtype(dtype->get_ref<const std::string&>());
  if (!parsed_dtype.ok()) return parsed_dtype.status().with_context(where);
  p.tensor.dtype = *parsed_dtype;
  for (uint64_t d : shape) {
    if (d > uint64_t(std::numeric_limits<int64_t>::max()))
      return CorruptData(where + ": shape entries must be non-negative integers below 2^63");
    p.tensor.shape.push_back(int64_t(d));
  }
  p.begin = offsets[0];
  p.end = offsets[1];
  if (p.end < p.begin) return CorruptData(where + ": data_offsets end before begin");
  auto bytes = tensor_bytes(p.tensor.shape, p.tensor.dtype);
  if (!bytes.ok()) return bytes.status().with_context(where);
  if (*bytes != p.end - p.begin)
    return CorruptData(where + ": data_offsets span " + std::to_string(p.end - p.begin) +
                       " bytes, shape and dtype need " + std::to_string(*bytes));
  return p;
}

// Parses JSON text strictly: the whole grammar, valid UTF-8 (nlohmann's lexer checks it, escaped
// surrogates included), nothing but whitespace after the document, and beyond nlohmann's
// defaults unique keys within each object and nesting bounded by kJsonMaxDepth.
StatusOr<Json> parse_json_strict(std::string_view text) {
  std::vector<std::vector<std::string>> keys;  // per open object: the keys seen so far
  const char* problem = nullptr;
  const Json::parser_callback_t check = [&](int depth, Json::parse_event_t event, Json& parsed) {
    switch (event) {
      case Json::parse_event_t::object_start:
      case Json::parse_event_t::array_start:
        if (depth >= kJsonMaxDepth && !problem) problem = "nested too deeply";
        if (event == Json::parse_event_t::object_start) keys.emplace_back();
        break;
      case Json::parse_event_t::object_end:
        if (!keys.empty()) keys.pop_back();
        break;
      case Json::parse_event_t::key: {
        auto& seen = keys.back();
        const std::string& k = parsed.get_ref<const std::string&>();
        if (std::find(seen.begin(), seen.end(), k) != seen.end() && !problem) problem = "repeated key";
        seen.push_back(k);
        break;
      }
      default: break;
    }
    return problem == nullptr;  // after a problem, build nothing more
  };
  Json j = Json::parse(text.begin(), text.end(), check, /*allow_exceptions=*/false);
  if (problem) return CorruptData(std::string("JSON: ") + problem);
  if (j.is_discarded()) return CorruptData("not valid JSON");
  return j;
}

// Parses the header's JSON: an object of tensor entries and an optional "__metadata__" object of
// strings, in file order.
StatusOr<std::vector<PendingTensor>> parse_header_json(std::string_view text) {
  KVCODEC_ASSIGN_OR_RETURN(Json j, parse_json_strict(text));
  if (!j.is_object()) return CorruptData("safetensors header is not a JSON object");
  std::vector<PendingTensor> tensors;
  for (auto& [name, value] : j.items()) {
    if (name == "__metadata__") {
      // A string -> string map, as the reference requires; kvcodec keeps nothing from it.
      if (!value.is_object()) return CorruptData("__metadata__ is not a JSON object");
      for (const Json& v : value)
        if (!v.is_string()) return CorruptData("__metadata__: a value is not a string");
      continue;
    }
    KVCODEC_ASSIGN_OR_RETURN(PendingTensor p, parse_entry(value, name));
    tensors.push_back(std::move(p));
  }
  return tensors;
}

// Parses and validates a header against the size of the data section that follows it.
StatusOr<std::vector<PendingTensor>> parse_safetensors_header(std::string_view text, uint64_t data_bytes) {
  std::vector<PendingTensor> tensors;
  try {
    auto parsed = parse_header_json(text);
    if (!parsed.ok()) return parsed.status().with_context("safetensors header");
    tensors = std::move(parsed).value();
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("out of memory parsing the safetensors header");
  }

  // The file's order (by offset) is the order we return; it also makes the coverage check a
  // single pass: each tensor must start where the previous one ended.
  std::stable_sort(tensors.begin(), tensors.end(), [](const PendingTensor& a, const PendingTensor& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t expect = 0;
  for (const PendingTensor& p : tensors) {
    if (p.begin != expect)
      return CorruptData("tensor '" + p.tensor.name + "' " +
                         (p.begin < expect ? "overlaps the previous tensor" : "leaves a hole before it"));
    expect = p.end;
  }
  if (expect != data_bytes)
    return CorruptData("tensors cover " + std::to_string(expect) + " bytes, data section has " +
                       std::to_string(data_bytes));
  return tensors;
}

// The tensors of a file (metadata; data empty) and where each lies: bytes [data_start + begin,
// data_start + end) of the file. The data section [data_start, file end) holds exactly them.
struct FileTensors {
  std::vector<PendingTensor> tensors;
  uint64_t data_start = 0;
};

StatusOr<FileTensors> safetensors_layout(const InputFile& f) {
  if (f.size() < 8) return CorruptData("file too short for a safetensors header");
  uint8_t len_bytes[8];
  KVCODEC_RETURN_IF_ERROR(f.read_at(0, len_bytes, 8));
  const uint64_t header_len = detail::load_le64(len_bytes);
  if (header_len > f.size() - 8)
    return CorruptData("header length " + std::to_string(header_len) + " exceeds the file");
  if (header_len > kMaxSafetensorsHeader)
    return ResourceExhausted("header length " + std::to_string(header_len) + " exceeds the 100 MB limit");

  std::string text;
  try {
    text.resize(size_t(header_len));
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("out of memory reading the safetensors header");
  }
  KVCODEC_RETURN_IF_ERROR(f.read_at(8, reinterpret_cast<uint8_t*>(text.data()), header_len));
  FileTensors ft;
  ft.data_start = 8 + header_len;
  KVCODEC_ASSIGN_OR_RETURN(ft.tensors, parse_safetensors_header(text, f.size() - ft.data_start));
  return ft;
}

// Reads every tensor of a layout into its own buffer.
StatusOr<std::vector<HostTensor>> read_tensors(const InputFile& f, FileTensors& ft) {
  // Every size is now known to fit in the file: allocating it is bounded by the file size.
  const uint64_t data_start = ft.data_start;
  std::vector<HostTensor> out;
  out.reserve(ft.tensors.size());
  for (PendingTensor& p : ft.tensors) {
    KVCODEC_RETURN_IF_ERROR(resize_bytes(p.tensor.data, p.end - p.begin));
    KVCODEC_RETURN_IF_ERROR(f.read_at(data_start + p.begin, p.tensor.data.data(), p.end - p.begin));
    out.push_back(std::move(p.tensor));
  }
  return out;
}

StatusOr<std::vector<HostTensor>> read_safetensors_file(const std::string& path) {
  InputFile f;
  KVCODEC_RETURN_IF_ERROR(f.open(path));
  KVCODEC_ASSIGN_OR_RETURN(FileTensors ft, safetensors_layout(f));
  return read_tensors(f, ft);
}

Status check_tensor_ref(const TensorRef& t) {
  if (!is_valid_dtype(uint8_t(t.dtype))) return InvalidArgument("tensor has an unknown dtype");
  KVCODEC_ASSIGN_OR_RETURN(uint64_t bytes, tensor_bytes({t.shape.begin(), t.shape.end()}, t.dtype));
  if (bytes != t.bytes || (!t.data.empty() && t.data.size() != t.bytes))
    return InvalidArgument("tensor holds " + std::to_string(t.bytes) + " bytes, its shape and dtype need " +
                           std::to_string(bytes));
  return Status::Ok();
}

// `s` as a JSON string literal: quoted, '"', '\\' and control characters escaped, other characters
// as they are. kInvalidArgument when s is not valid UTF-8.
StatusOr<std::string> json_string(std::string_view s) {
  try {
    return Json(std::string(s)).dump(-1, ' ', false, Json::error_handler_t::strict);
  } catch (const Json::exception&) {
    return InvalidArgument("tensor names must be valid UTF-8");
  }
}

// The header of a safetensors file of `tensors`: length, then compact JSON.
StatusOr<std::string> safetensors_head(std::span<const TensorRef> tensors) {
  // Compact JSON, tensors in the given order, each {"dtype":..,"shape":[..],"data_offsets":[b,e]}.
  std::string text = "{";
  std::unordered_set<std::string_view> names;
  uint64_t offset = 0;
  for (const TensorRef& t : tensors) {
    const std::string name(t.name);
    if (name.empty() || name == "__metadata__") return InvalidArgument("invalid tensor name '" + name + "'");
    if (!names.insert(t.name).second) return InvalidArgument("duplicate tensor name '" + name + "'");
    Status s = check_tensor_ref(t);
    if (!s.ok()) return s.with_context("tensor '" + name + "'");
    if (text.size() > 1) text += ',';
    KVCODEC_ASSIGN_OR_RETURN(std::string quoted, json_string(t.name));
    text += quoted;
    text += ":{\"dtype\":\"";
    text += safetensors_dtype(t.dtype);
    text += "\",\"shape\":[";
    for (size_t i = 0; i < t.shape.size(); ++i) {
      if (i > 0) text += ',';
      text += std::to_string(t.shape[i]);
    }
    text += "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + t.bytes) + "]}";
    offset += t.bytes;
  }
  text += '}';
  // Pad with spaces so the data section starts 8-byte aligned, as the reference writer does.
  text.append((8 - text.size() % 8) % 8, ' ');

  uint8_t len_bytes[8];
  detail::store_le64(len_bytes, text.size());
  return std::string(reinterpret_cast<const char*>(len_bytes), 8) + text;
}

Status write_safetensors_refs(const std::string& path, std::span<const TensorRef> tensors) {
  KVCODEC_ASSIGN_OR_RETURN(std::string head, safetensors_head(tensors));
  AtomicFile f;
  KVCODEC_RETURN_IF_ERROR(f.open(path));
  KVCODEC_RETURN_IF_ERROR(f.write(head));
  for (const TensorRef& t : tensors) KVCODEC_RETURN_IF_ERROR(f.write(t.data.data(), t.data.size()));
  return f.commit();
}

// ---- npy ------------------------------------------------------------------------------------
//
// "\x93NUMPY", major, minor, header length (u16 LE in v1.0, u32 LE in v2.0), then an ASCII
// Python dict literal {'descr': '<f4', 'fortran_order': False, 'shape': (a, b), } padded with
// spaces and a newline so the data starts 64-byte aligned, then the raw C-order data.

// The value of one key of the header dict.
struct PyValue {
  enum class Kind { kString, kBool, kTuple } kind = Kind::kString;
  std::string str;
  bool boolean = false;
  std::vector<int64_t> ints;
};

// A recursive-descent parser for exactly the literals numpy writes in .npy headers: a flat dict
// of string keys to strings, True/False and tuples of non-negative integers.
class NpyHeaderParser {
 public:
  explicit NpyHeaderParser(std::string_view s) : s_(s) {}

  StatusOr<std::vector<std::pair<std::string, PyValue>>> parse_dict() {
    std::vector<std::pair<std::string, PyValue>> items;
    if (!eat('{')) return bad("expected '{'");
    while (!eat('}')) {
      KVCODEC_ASSIGN_OR_RETURN(std::string key, parse_string());
      if (!eat(':')) return bad("expected ':'");
      KVCODEC_ASSIGN_OR_RETURN(PyValue value, parse_value());
      items.emplace_back(std::move(key), std::move(value));
      if (!eat(',')) {
        if (!eat('}')) return bad("expected ',' or '}'");
        break;
      }
    }
    skip_space();
    if (pos_ != s_.size()) return bad("trailing characters after the dict");
    return items;
  }

 private:
  Status bad(const std::string& what) const {
    return CorruptData("npy header: " + what + " at offset " + std::to_string(pos_));
  }
  void skip_space() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\n' || s_[pos_] == '\t')) ++pos_;
  }
  bool eat(char c) {
    skip_space();
    if (pos_ < s_.size() && s_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  bool eat_word(std::string_view w) {
    skip_space();
    if (s_.substr(pos_, w.size()) != w) return false;
    pos_ += w.size();
    return true;
  }

  StatusOr<std::string> parse_string() {
    skip_space();
    if (pos_ >= s_.size() || (s_[pos_] != '\'' && s_[pos_] != '"')) return bad("expected a string");
    const char quote = s_[pos_++];
    const size_t end = s_.find(quote, pos_);
    if (end == std::string_view::npos) return bad("unterminated string");
    std::string out(s_.substr(pos_, end - pos_));
    if (out.find('\\') != std::string::npos) return bad("escapes are not supported");
    pos_ = end + 1;
    return out;
  }

  StatusOr<int64_t> parse_int() {
    skip_space();
    const size_t start = pos_;
    uint64_t v = 0;
    while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') {
      if (mul_overflows(v, 10, &v) || __builtin_add_overflow(v, uint64_t(s_[pos_] - '0'), &v) ||
          v > uint64_t(std::numeric_limits<int64_t>::max()))
        return bad("dimension overflows 64 bits");
      ++pos_;
    }
    if (pos_ == start) return bad("expected a non-negative integer");
    if (pos_ < s_.size() && s_[pos_] == 'L') ++pos_;  // Python 2 longs, in old files
    return int64_t(v);
  }

  StatusOr<PyValue> parse_value() {
    PyValue v;
    skip_space();
    for (bool b : {true, false}) {
      if (eat_word(b ? "True" : "False")) {
        v.kind = PyValue::Kind::kBool;
        v.boolean = b;
        return v;
      }
    }
    if (eat('(')) {
      v.kind = PyValue::Kind::kTuple;
      while (!eat(')')) {
        KVCODEC_ASSIGN_OR_RETURN(int64_t d, parse_int());
        v.ints.push_back(d);
        if (!eat(',')) {
          if (!eat(')')) return bad("expected ',' or ')'");
          break;
        }
      }
      return v;
    }
    KVCODEC_ASSIGN_OR_RETURN(v.str, parse_string());
    return v;
  }

  std::string_view s_;
  size_t pos_ = 0;
};

// Maps an npy descr to a dtype; big-endian and anything else are clear errors.
StatusOr<DType> parse_npy_descr(const std::string& d) {
  if (d == "<f4" || d == "=f4") return DType::kF32;
  if (d == "<f2" || d == "=f2") return DType::kF16;
  if (d == ">f4" || d == ">f2")
    return InvalidArgument("big-endian npy data ('" + d + "') is not supported; save as little-endian");
  return InvalidArgument("unsupported npy dtype '" + d + "' (only '<f4' and '<f2')");
}

StatusOr<FileTensors> npy_layout(const InputFile& f) {
  uint8_t pre[12];
  if (f.size() < 10) return CorruptData("file too short for an npy header");
  KVCODEC_RETURN_IF_ERROR(f.read_at(0, pre, std::min<uint64_t>(f.size(), sizeof(pre))));
  if (std::memcmp(pre, kNpyMagic, sizeof(kNpyMagic)) != 0) return CorruptData("not an npy file (bad magic)");
  const uint8_t major = pre[6], minor = pre[7];
  if ((major != 1 && major != 2) || minor != 0)
    return UnsupportedVersion("npy version " + std::to_string(major) + "." + std::to_string(minor) +
                              " (reads 1.0 and 2.0)");
  const int len_bytes = major == 1 ? 2 : 4;
  if (f.size() < uint64_t(8 + len_bytes)) return CorruptData("file too short for an npy header");
  const uint64_t header_len = len_bytes == 2 ? detail::load_le16(pre + 8) : detail::load_le32(pre + 8);
  const uint64_t data_start = 8 + len_bytes + header_len;
  if (data_start > f.size()) return CorruptData("npy header length exceeds the file");
  if (header_len > kMaxNpyHeader) return ResourceExhausted("npy header longer than 1 MB");

  std::string text(size_t(header_len), '\0');
  KVCODEC_RETURN_IF_ERROR(f.read_at(8 + len_bytes, reinterpret_cast<uint8_t*>(text.data()), header_len));
  KVCODEC_ASSIGN_OR_RETURN(auto items, NpyHeaderParser(text).parse_dict());

  const PyValue* descr = nullptr;
  const PyValue* fortran = nullptr;
  const PyValue* shape = nullptr;
  for (const auto& [key, value] : items) {
    const PyValue** slot = key == "descr" ? &descr : key == "fortran_order" ? &fortran : key == "shape" ? &shape : nullptr;
    if (!slot) return CorruptData("npy header has an unknown key '" + key + "'");
    if (*slot) return CorruptData("npy header repeats key '" + key + "'");
    *slot = &value;
  }
  if (!descr || !fortran || !shape) return CorruptData("npy header lacks descr, fortran_order or shape");
  if (descr->kind != PyValue::Kind::kString || fortran->kind != PyValue::Kind::kBool ||
      shape->kind != PyValue::Kind::kTuple)
    return CorruptData("npy header values have the wrong types");
  if (fortran->boolean)
    return InvalidArgument("Fortran-order npy arrays are not supported; save in C order");

  PendingTensor t;
  t.tensor.name = "kv";
  KVCODEC_ASSIGN_OR_RETURN(t.tensor.dtype, parse_npy_descr(descr->str));
  t.tensor.shape = shape->ints;
  KVCODEC_ASSIGN_OR_RETURN(uint64_t bytes, tensor_bytes(t.tensor.shape, t.tensor.dtype));
  if (bytes != f.size() - data_start)
    return CorruptData("npy data holds " + std::to_string(f.size() - data_start) + " bytes, shape needs " +
                       std::to_string(bytes));
  t.end = bytes;
  FileTensors ft;
  ft.data_start = data_start;
  ft.tensors.push_back(std::move(t));
  return ft;
}

StatusOr<HostTensor> read_npy_file(const std::string& path) {
  InputFile f;
  KVCODEC_RETURN_IF_ERROR(f.open(path));
  KVCODEC_ASSIGN_OR_RETURN(FileTensors ft, npy_layout(f));
  KVCODEC_ASSIGN_OR_RETURN(std::vector<HostTensor> t, read_tensors(f, ft));
  HostTensor out = std::move(t[0]);
  out.name.clear();
  return out;
}

// The header of an npy file of t: magic, version, length and the padded dict.
StatusOr<std::string> npy_head(const TensorRef& t) {
  KVCODEC_RETURN_IF_ERROR(check_tensor_ref(t));
  const char* descr = t.dtype == DType::kF32 ? "<f4" : t.dtype == DType::kF16 ? "<f2" : nullptr;
  if (!descr)
    return InvalidArgument(std::string("npy has no ") + dtype_name(t.dtype) + " dtype; use .safetensors");

  // Python tuple syntax: () for a scalar, (a,) for one dimension, (a, b) otherwise.
  std::string shape;
  for (size_t i = 0; i < t.shape.size(); ++i) shape += (i ? ", " : "") + std::to_string(t.shape[i]);
  if (t.shape.size() == 1) shape += ',';
  std::string dict = std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': (" + shape + "), }";

  // Version 1.0 unless the header needs more than its 16-bit length field.
  const bool v1 = dict.size() + 1 + 10 <= 65535;
  const size_t prefix = v1 ? 10 : 12;
  const size_t total = (prefix + dict.size() + 1 + 63) / 64 * 64;
  dict.append(total - prefix - dict.size() - 1, ' ');
  dict += '\n';

  uint8_t pre[12];
  std::memcpy(pre, kNpyMagic, sizeof(kNpyMagic));
  pre[6] = v1 ? 1 : 2;
  pre[7] = 0;
  if (v1) detail::store_le16(pre + 8, uint16_t(dict.size()));
  else detail::store_le32(pre + 8, uint32_t(dict.size()));
  return std::string(reinterpret_cast<const char*>(pre), prefix) + dict;
}

Status write_npy_ref(const std::string& path, const TensorRef& t) {
  KVCODEC_ASSIGN_OR_RETURN(std::string head, npy_head(t));
  AtomicFile f;
  KVCODEC_RETURN_IF_ERROR(f.open(path));
  KVCODEC_RETURN_IF_ERROR(f.write(head));
  KVCODEC_RETURN_IF_ERROR(f.write(t.data.data(), t.data.size()));
  return f.commit();
}

// ---- KV conventions -------------------------------------------------------------------------

bool ends_with(std::string_view s, std::string_view suffix) {
  if (s.size() < suffix.size()) return false;
  return std::equal(suffix.begin(), suffix.end(), s.end() - suffix.size(), [](char lower, char c) {
    return std::tolower(static_cast<unsigned char>(c)) == lower;
  });
}

enum class FileKind { kSafetensors, kNpy };

StatusOr<FileKind> file_kind(const std::string& path) {
  if (ends_with(path, ".safetensors")) return FileKind::kSafetensors;
  if (ends_with(path, ".npy")) return FileKind::kNpy;
  return InvalidArgument("unknown file type '" + path + "' (expected .safetensors or .npy)");
}

// Builds a KVShape from file dimensions, rejecting ones beyond the library's limits before
// they are narrowed to 32 bits.
StatusOr<KVShape> kv_shape(int64_t layers, int64_t tokens, int64_t heads, int64_t head_dim) {
  for (int64_t d : {layers, tokens, heads, head_dim})
    if (d > int64_t(std::numeric_limits<uint32_t>::max()))
      return ResourceExhausted("KV dimension " + std::to_string(d) + " exceeds the library's limits");
  KVShape s{uint32_t(layers), uint32_t(tokens), uint32_t(heads), uint32_t(head_dim)};
  KVCODEC_RETURN_IF_ERROR(validate_shape(s));
  return s;
}

// How a file's tensors (metadata only) form a KV cache: one [layers, 2, tokens, kv_heads,
// head_dim] tensor "kv", or per-layer tensors "layers.{i}.key" / "layers.{i}.value", each
// [tokens, kv_heads, head_dim] or HF's [1, kv_heads, tokens, head_dim].
struct KVLayout {
  DType dtype = DType::kF16;
  KVShape shape;
  bool single = false;  // the one tensor "kv"
  bool hf = false;
  std::vector<size_t> key, value;  // per-layer: the index of layer l's K and V tensor
};

StatusOr<KVLayout> single_layout(const HostTensor& t) {
  const auto& d = t.shape;
  if (d.size() != 5 || d[1] != 2)
    return InvalidArgument("tensor 'kv' must be [layers, 2, tokens, kv_heads, head_dim]");
  KVLayout k;
  KVCODEC_ASSIGN_OR_RETURN(k.shape, kv_shape(d[0], d[2], d[3], d[4]));
  k.dtype = t.dtype;
  k.single = true;
  return k;
}

// Parses "layers.{i}.key" / "layers.{i}.value" (decimal i without leading zeros).
bool parse_layer_name(const std::string& name, uint64_t* layer, bool* is_value) {
  constexpr std::string_view kPrefix = "layers.";
  if (name.rfind(kPrefix, 0) != 0) return false;
  const size_t dot = name.find('.', kPrefix.size());
  if (dot == std::string::npos) return false;
  const std::string_view digits(name.data() + kPrefix.size(), dot - kPrefix.size());
  if (digits.empty() || digits.size() > 9 || (digits.size() > 1 && digits[0] == '0')) return false;
  uint64_t v = 0;
  for (char c : digits) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + uint64_t(c - '0');
  }
  const std::string_view role(name.data() + dot + 1, name.size() - dot - 1);
  if (role != "key" && role != "value") return false;
  *layer = v;
  *is_value = role == "value";
  return true;
}

// Per-layer tensors: layer indices must form 0..L-1 with both halves, all of one dtype and shape.
StatusOr<KVLayout> layers_layout(const std::vector<const HostTensor*>& tensors) {
  std::vector<const HostTensor*> slots;  // slot 2*l + is_value
  std::vector<size_t> index;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const HostTensor& t = *tensors[i];
    uint64_t layer = 0;
    bool is_value = false;
    if (!parse_layer_name(t.name, &layer, &is_value))
      return InvalidArgument("unexpected tensor '" + t.name + "' (expected 'kv' or 'layers.{i}.key/value')");
    if (layer >= kMaxLayers) return ResourceExhausted("layer index " + std::to_string(layer) + " beyond the limit");
    if (slots.size() <= 2 * layer + 1) {
      slots.resize(2 * layer + 2, nullptr);
      index.resize(2 * layer + 2, 0);
    }
    slots[2 * layer + is_value] = &t;
    index[2 * layer + is_value] = i;
  }
  for (size_t i = 0; i < slots.size(); ++i)
    if (!slots[i])
      return InvalidArgument("missing tensor 'layers." + std::to_string(i / 2) + (i % 2 ? ".value'" : ".key'"));

  const HostTensor& first = *slots[0];
  KVLayout k;
  k.hf = first.shape.size() == 4;
  if (!(first.shape.size() == 3 || (k.hf && first.shape[0] == 1)))
    return InvalidArgument("per-layer tensors must be [tokens, kv_heads, head_dim] or [1, kv_heads, tokens, head_dim]");
  for (const HostTensor* t : slots)
    if (t->dtype != first.dtype || t->shape != first.shape)
      return InvalidArgument("tensor '" + t->name + "' differs in dtype or shape from 'layers.0.key'");
  const auto& d = first.shape;
  KVCODEC_ASSIGN_OR_RETURN(k.shape, k.hf ? kv_shape(int64_t(slots.size() / 2), d[2], d[1], d[3])
                                         : kv_shape(int64_t(slots.size() / 2), d[0], d[1], d[2]));
  k.dtype = first.dtype;
  for (size_t l = 0; l < k.shape.layers; ++l) {
    k.key.push_back(index[2 * l]);
    k.value.push_back(index[2 * l + 1]);
  }
  return k;
}

// The layout of a file's tensors (at least one).
StatusOr<KVLayout> kv_layout(const std::vector<const HostTensor*>& tensors) {
  if (tensors.empty()) return InvalidArgument("file holds no tensors");
  for (const HostTensor* t : tensors) {
    if (t->name != "kv") continue;
    if (tensors.size() != 1) return InvalidArgument("tensor 'kv' must be the only tensor of the file");
    return single_layout(*t);
  }
  return layers_layout(tensors);
}

// The per-layer view of a KVLayout's tensors whose bytes start at data[i] (tensor i).
KVView layers_view(const KVLayout& k, const std::vector<uint8_t*>& data, std::vector<void*>& keys,
                   std::vector<void*>& values) {
  keys.clear();
  values.clear();
  for (size_t l = 0; l < k.shape.layers; ++l) {
    keys.push_back(data[k.key[l]]);
    values.push_back(data[k.value[l]]);
  }
  return per_layer_view(keys.data(), values.data(), k.dtype, k.shape, k.hf);
}

// Copies any view into a contiguous cache of the same dtype and shape, one head row at a time.
void gather(const KVView& src, KVCache& dst) {
  const KVView out = dst.view();
  const size_t row = size_t(src.shape.head_dim) * dtype_size(src.dtype);
  for (uint32_t l = 0; l < src.shape.layers; ++l)
    for (uint32_t kv = 0; kv < 2; ++kv)
      for (uint32_t t = 0; t < src.shape.tokens; ++t)
        for (uint32_t h = 0; h < src.shape.kv_heads; ++h)
          std::memcpy(out.element(l, kv, t, h, 0), src.element(l, kv, t, h, 0), row);
}

StatusOr<KVCache> load_kv_file(const std::string& path) {
  KVCODEC_ASSIGN_OR_RETURN(FileKind kind, file_kind(path));
  std::vector<HostTensor> tensors;
  if (kind == FileKind::kNpy) {
    KVCODEC_ASSIGN_OR_RETURN(HostTensor t, read_npy_file(path));
    t.name = "kv";
    tensors.push_back(std::move(t));
  } else {
    KVCODEC_ASSIGN_OR_RETURN(tensors, read_safetensors_file(path));
  }
  std::vector<const HostTensor*> meta;
  for (const HostTensor& t : tensors) meta.push_back(&t);
  KVCODEC_ASSIGN_OR_RETURN(KVLayout k, kv_layout(meta));
  KVCache kv;
  if (k.single) {  // taken over without a copy
    kv.dtype = k.dtype;
    kv.shape = k.shape;
    kv.data = std::move(tensors[0].data);
    return kv;
  }
  std::vector<uint8_t*> data;
  for (HostTensor& t : tensors) data.push_back(t.data.data());
  std::vector<void*> keys, values;
  const KVView src = layers_view(k, data, keys, values);
  KVCODEC_ASSIGN_OR_RETURN(kv, KVCache::allocate(k.dtype, k.shape));
  gather(src, kv);
  return kv;
}

TensorRef ref_of(const HostTensor& t) { return {t.name, t.dtype, t.shape, t.data, t.data.size()}; }

}  // namespace

StatusOr<std::vector<HostTensor>> read_safetensors(const std::string& path) {
  auto r = read_safetensors_file(path);
  if (!r.ok()) return in_file(r.status(), path);
  return r;
}

Status write_safetensors(const std::string& path, const std::vector<HostTensor>& tensors) {
  std::vector<TensorRef> refs;
  for (const HostTensor& t : tensors) refs.push_back(ref_of(t));
  return in_file(write_safetensors_refs(path, refs), path);
}

StatusOr<HostTensor> read_npy(const std::string& path) {
  auto r = read_npy_file(path);
  if (!r.ok()) return in_file(r.status(), path);
  return r;
}

Status write_npy(const std::string& path, const HostTensor& tensor) {
  return in_file(write_npy_ref(path, ref_of(tensor)), path);
}

StatusOr<KVCache> KVCache::allocate(DType dtype, const KVShape& shape) {
  if (!is_valid_dtype(uint8_t(dtype))) return InvalidArgument("unknown dtype");
  KVCODEC_RETURN_IF_ERROR(validate_shape(shape));
  KVCache kv;
  kv.dtype = dtype;
  kv.shape = shape;
  KVCODEC_RETURN_IF_ERROR(resize_bytes(kv.data, shape.elements() * dtype_size(dtype)));
  return kv;
}

StatusOr<KVCache> load_kv(const std::string& path) {
  auto r = load_kv_file(path);
  if (!r.ok()) return in_file(r.status(), path);
  return r;
}

Status save_kv(const std::string& path, const KVCache& kv) {
  KVCODEC_RETURN_IF_ERROR(validate_shape(kv.shape));
  const int64_t shape[5] = {kv.shape.layers, 2, kv.shape.tokens, kv.shape.kv_heads, kv.shape.head_dim};
  const TensorRef ref{"kv", kv.dtype, shape, kv.data, kv.data.size()};
  auto kind = file_kind(path);
  if (!kind.ok()) return kind.status();
  return in_file(*kind == FileKind::kNpy ? write_npy_ref(path, ref) : write_safetensors_refs(path, {&ref, 1}),
                 path);
}

StatusOr<std::vector<uint8_t>> read_file(const std::string& path) {
  InputFile f;
  std::vector<uint8_t> out;
  Status s = f.open(path);
  if (s.ok()) s = resize_bytes(out, f.size());
  if (s.ok()) s = f.read_at(0, out.data(), out.size());
  if (!s.ok()) return in_file(s, path);
  return out;
}

StatusOr<Profile> load_profile(const std::string& path) {
  StatusOr<std::vector<uint8_t>> bytes = read_file(path);
  if (!bytes.ok()) return bytes.status();
  StatusOr<Profile> p = parse_profile(*bytes);
  if (!p.ok()) return in_file(p.status(), path);
  return p;
}

Status write_file(const std::string& path, const uint8_t* data, size_t size) {
  AtomicFile f;
  Status s = f.open(path);
  if (s.ok()) s = f.write(data, size);
  if (s.ok()) s = f.commit();
  return in_file(s, path);
}

StatusOr<FileBytes> FileBytes::read(const std::string& path) {
  InputFile f;
  FileBytes b;
  Status s = f.open(path);
  if (s.ok()) {
    auto mem = alloc_pages(size_t(f.size()));
    if (mem.ok()) {
      b.data_ = std::move(mem).value();
      b.size_ = size_t(f.size());
      s = f.read_at(0, b.data_.get(), b.size_);
    } else {
      s = mem.status();
    }
  }
  if (!s.ok()) return in_file(s, path);
  return b;
}

StatusOr<KVFile> KVFile::open(const std::string& path) {
  auto kind = file_kind(path);
  if (!kind.ok()) return kind.status();
  InputFile f;
  if (Status s = f.open(path); !s.ok()) return in_file(s, path);
  auto layout = *kind == FileKind::kNpy ? npy_layout(f) : safetensors_layout(f);
  if (!layout.ok()) return in_file(layout.status(), path);
  std::vector<const HostTensor*> meta;
  for (const PendingTensor& p : layout->tensors) meta.push_back(&p.tensor);
  auto k = kv_layout(meta);
  if (!k.ok()) return in_file(k.status(), path);

  // Elements are aligned for their dtype: the buffer is page-aligned and the tensors (one, or
  // per-layer ones of equal dtype and size) cover the data section from offset 0 without holes.
  KVFile out;
  const uint64_t n = f.size() - layout->data_start;
  auto mem = alloc_pages(size_t(n));
  if (!mem.ok()) return in_file(mem.status(), path);
  if (Status s = f.read_at(layout->data_start, mem->get(), n); !s.ok()) return in_file(s, path);
  uint8_t* base = mem->get();
  if (k->single) {
    out.view_ = contiguous_view(base + layout->tensors[0].begin, k->dtype, k->shape);
  } else {
    std::vector<uint8_t*> data;
    for (const PendingTensor& p : layout->tensors) data.push_back(base + p.begin);
    out.view_ = layers_view(*k, data, out.keys_, out.values_);
  }
  out.hold_ = std::move(mem).value();
  return out;
}

Status write_file_with(const std::string& path, size_t capacity,
                       const std::function<StatusOr<size_t>(std::span<uint8_t>)>& fill) {
  auto mem = alloc_pages(capacity);
  if (!mem.ok()) return in_file(mem.status(), path);
  StatusOr<size_t> n = fill({mem->get(), capacity});
  if (!n.ok()) return n.status();
  if (*n > capacity) return InvalidArgument("write_file_with: fill() used more than the buffer's capacity");
  return write_file(path, mem->get(), *n);
}

Status save_kv_by_layers(const std::string& path, DType dtype, const KVShape& shape,
                         const std::function<Status(uint32_t, uint32_t, const KVView&)>& fill,
                         size_t buffer_bytes) {
  KVCODEC_RETURN_IF_ERROR(validate_shape(shape));
  if (!is_valid_dtype(uint8_t(dtype))) return InvalidArgument("unknown dtype");
  auto kind = file_kind(path);
  if (!kind.ok()) return kind.status();
  const int64_t dims[5] = {shape.layers, 2, shape.tokens, shape.kv_heads, shape.head_dim};
  const uint64_t layer_bytes = 2ull * shape.tokens * shape.channels() * dtype_size(dtype);
  const TensorRef ref{"kv", dtype, dims, {}, layer_bytes * shape.layers};
  auto head = *kind == FileKind::kNpy ? npy_head(ref) : safetensors_head({&ref, 1});
  if (!head.ok()) return in_file(head.status(), path);

  const uint32_t L = shape.layers;
  const uint32_t per = uint32_t(std::clamp<uint64_t>(buffer_bytes / layer_bytes, 1, L));
  auto mem = alloc_pages(size_t(per * layer_bytes));
  if (!mem.ok()) return in_file(mem.status(), path);
  uint8_t* base = mem->get();
  AtomicFile f;
  if (Status s = f.open(path); !s.ok()) return in_file(s, path);
  if (Status s = f.write(*head); !s.ok()) return in_file(s, path);
  std::vector<void*> keys(L), values(L);
  for (uint32_t lb = 0; lb < L; lb += per) {
    const uint32_t le = std::min(L, lb + per);
    for (uint32_t l = 0; l < L; ++l) {  // layers outside [lb, le) alias the buffer: never written
      uint8_t* k = base + (l >= lb && l < le ? (l - lb) * layer_bytes : 0);
      keys[l] = k;
      values[l] = k + layer_bytes / 2;
    }
    KVCODEC_RETURN_IF_ERROR(fill(lb, le, per_layer_view(keys.data(), values.data(), dtype, shape, false)));
    if (Status s = f.write(base, (le - lb) * layer_bytes); !s.ok()) return in_file(s, path);
  }
  return in_file(f.commit(), path);
}

}  // namespace kvcodec
