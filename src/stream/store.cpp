// open_store and the two local stores: "mem:" (a process-local map) and "file:DIR".
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>

#include "kvcodec/store.hpp"
#include "percent.hpp"
#include "store_redis.hpp"

namespace kvcodec {

namespace {

Status too_large(std::string_view key, uint64_t bytes, uint64_t max_bytes) {
  return CorruptData("value of " + std::string(key) + ": " + std::to_string(bytes) + " bytes, more than the " +
                     std::to_string(max_bytes) + " expected");
}

// Values with an optional expiry, checked when a key is read (lazy, like Redis' passive expiry).
class MemStore final : public Store {
 public:
  Status put(std::string_view key, std::span<const uint8_t> value) override {
    KeyValue kv{key, value};
    return put_many({&kv, 1}, {});
  }
  Status put_many(std::span<const KeyValue> items, const WriteOptions& options) override {
    const auto expires = options.ttl_seconds ? Clock::now() + std::chrono::seconds(options.ttl_seconds)
                                             : Clock::time_point::max();
    std::lock_guard lock(mu_);
    for (const KeyValue& kv : items) {
      Entry& e = map_[std::string(kv.key)];
      e.value.assign(kv.value.begin(), kv.value.end());
      e.expires = expires;
    }
    return Status::Ok();
  }
  StatusOr<std::vector<uint8_t>> get(std::string_view key) override {
    std::lock_guard lock(mu_);
    auto it = live(key);
    if (it == map_.end()) return NotFound("mem: no key " + std::string(key));
    return it->second.value;
  }
  Status get_append(std::string_view key, std::vector<uint8_t>& out, uint64_t max_bytes) override {
    std::lock_guard lock(mu_);
    auto it = live(key);
    if (it == map_.end()) return NotFound("mem: no key " + std::string(key));
    if (it->second.value.size() > max_bytes) return too_large(key, it->second.value.size(), max_bytes);
    out.insert(out.end(), it->second.value.begin(), it->second.value.end());
    return Status::Ok();
  }
  StatusOr<bool> exists(std::string_view key) override {
    std::lock_guard lock(mu_);
    return live(key) != map_.end();
  }
  Status remove(std::string_view key) override {
    std::lock_guard lock(mu_);
    map_.erase(std::string(key));
    return Status::Ok();
  }
  StatusOr<std::vector<std::string>> list_keys(std::string_view prefix) override {
    std::lock_guard lock(mu_);
    std::vector<std::string> keys;
    const auto now = Clock::now();
    for (auto it = map_.lower_bound(prefix); it != map_.end() && it->first.rfind(prefix, 0) == 0; ++it)
      if (it->second.expires > now) keys.push_back(it->first);
    return keys;
  }
  const std::string& uri() const noexcept override { return uri_; }

 private:
  using Clock = std::chrono::steady_clock;
  struct Entry {
    std::vector<uint8_t> value;
    Clock::time_point expires;
  };
  using Map = std::map<std::string, Entry, std::less<>>;
  // The entry of `key` unless it is missing or expired (an expired one is erased).
  Map::iterator live(std::string_view key) {
    auto it = map_.find(key);
    if (it != map_.end() && it->second.expires <= Clock::now()) {
      map_.erase(it);
      return map_.end();
    }
    return it;
  }

  const std::string uri_ = "mem:";
  std::mutex mu_;
  Map map_;
};

std::string errno_text(const std::string& what) { return what + ": " + std::strerror(errno); }

// One file per key in DIR. Keys are escaped into file names (bytes outside [A-Za-z0-9._-] become
// %XX), writes go to a temporary file in the same directory that is fsync'ed, size-checked and
// renamed over the target, so readers see either the old or the new value, never a partial one.
class FileStore final : public Store {
 public:
  FileStore(std::string uri, std::filesystem::path dir) : uri_(std::move(uri)), dir_(std::move(dir)) {}

  Status put(std::string_view key, std::span<const uint8_t> value) override {
    const std::filesystem::path target = path_of(key);
    const std::filesystem::path tmp =
        dir_ / (".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter_++) + "." +
                target.filename().string());
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return IoError(errno_text("file store: create " + tmp.string()));
    Status s = write_all(fd, value);
    struct stat st {};
    if (s.ok() && ::fsync(fd) != 0) s = IoError(errno_text("file store: fsync " + tmp.string()));
    if (s.ok() && (::fstat(fd, &st) != 0 || uint64_t(st.st_size) != value.size()))
      s = IoError("file store: " + tmp.string() + " has the wrong size after writing");
    ::close(fd);
    if (s.ok() && ::rename(tmp.c_str(), target.c_str()) != 0)
      s = IoError(errno_text("file store: rename to " + target.string()));
    if (!s.ok()) ::unlink(tmp.c_str());
    return s;
  }

  StatusOr<std::vector<uint8_t>> get(std::string_view key) override {
    std::vector<uint8_t> out;
    KVCODEC_RETURN_IF_ERROR(get_append(key, out, UINT64_MAX));
    return out;
  }

  Status get_append(std::string_view key, std::vector<uint8_t>& out, uint64_t max_bytes) override {
    const std::filesystem::path p = path_of(key);
    int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      if (errno == ENOENT) return NotFound("file store: no key " + std::string(key));
      return IoError(errno_text("file store: open " + p.string()));
    }
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      ::close(fd);
      return IoError(errno_text("file store: stat " + p.string()));
    }
    const uint64_t bytes = uint64_t(st.st_size);
    if (bytes > max_bytes) {
      ::close(fd);
      return too_large(key, bytes, max_bytes);
    }
    // A value larger than the machine's memory is refused before any allocation is tried (a
    // sanitizer's allocator aborts on such a request instead of throwing).
    const uint64_t memory = uint64_t(::sysconf(_SC_PHYS_PAGES)) * uint64_t(::sysconf(_SC_PAGESIZE));
    if (bytes > memory) {
      ::close(fd);
      return ResourceExhausted("file store: " + p.string() + ": " + std::to_string(bytes) +
                               " bytes, more than this machine's memory");
    }
    const size_t at = out.size();
    try {
      out.resize(at + size_t(bytes));
    } catch (const std::exception&) {  // bad_alloc, length_error: a file larger than memory
      ::close(fd);
      return ResourceExhausted("file store: " + p.string() + ": " + std::to_string(bytes) + " bytes do not fit in memory");
    }
    size_t done = 0;
    while (done < bytes) {
      ssize_t n = ::read(fd, out.data() + at + done, size_t(bytes - done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        ::close(fd);
        out.resize(at);
        return IoError(n == 0 ? "file store: " + p.string() + " shrank while reading"
                              : errno_text("file store: read " + p.string()));
      }
      done += size_t(n);
    }
    ::close(fd);
    return Status::Ok();
  }

  StatusOr<bool> exists(std::string_view key) override {
    std::error_code ec;
    bool e = std::filesystem::exists(path_of(key), ec);
    if (ec) return IoError("file store: " + ec.message());
    return e;
  }

  Status remove(std::string_view key) override {
    if (::unlink(path_of(key).c_str()) != 0 && errno != ENOENT)
      return IoError(errno_text("file store: remove " + path_of(key).string()));
    return Status::Ok();
  }

  Status put_many(std::span<const KeyValue> items, const WriteOptions& options) override {
    if (options.ttl_seconds) return InvalidArgument("file store: values cannot expire (no TTL support)");
    return Store::put_many(items, options);
  }

  StatusOr<std::vector<std::string>> list_keys(std::string_view prefix) override {
    std::vector<std::string> keys;
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(dir_, ec)) {
      const std::string name = entry.path().filename().string();
      if (name.rfind(".tmp.", 0) == 0) continue;  // a write in progress
      auto key = percent_decode(name);  // path_of's inverse
      if (key && key->rfind(prefix, 0) == 0) keys.push_back(std::move(*key));
    }
    if (ec) return IoError("file store: list " + dir_.string() + ": " + ec.message());
    std::sort(keys.begin(), keys.end());
    return keys;
  }

  const std::string& uri() const noexcept override { return uri_; }

 private:
  std::filesystem::path path_of(std::string_view key) const {
    static const char kHex[] = "0123456789ABCDEF";
    std::string name;
    for (unsigned char c : key) {
      if (std::isalnum(c) || c == '.' || c == '_' || c == '-') {
        name += char(c);
      } else {
        name += '%';
        name += kHex[c >> 4];
        name += kHex[c & 15];
      }
    }
    return dir_ / name;
  }

  static Status write_all(int fd, std::span<const uint8_t> value) {
    size_t done = 0;
    while (done < value.size()) {
      ssize_t n = ::write(fd, value.data() + done, value.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return IoError(errno_text("file store: write"));
      done += size_t(n);
    }
    return Status::Ok();
  }

  std::string uri_;
  std::filesystem::path dir_;
  std::atomic<uint64_t> counter_{0};
};

}  // namespace

Status Store::put_many(std::span<const KeyValue> items, const WriteOptions& options) {
  if (options.ttl_seconds) return InvalidArgument(uri() + ": this store cannot expire values");
  for (const KeyValue& kv : items) KVCODEC_RETURN_IF_ERROR(put(kv.key, kv.value));
  return Status::Ok();
}

Status Store::get_append(std::string_view key, std::vector<uint8_t>& out, uint64_t max_bytes) {
  KVCODEC_ASSIGN_OR_RETURN(std::vector<uint8_t> value, get(key));
  if (value.size() > max_bytes) return too_large(key, value.size(), max_bytes);
  out.insert(out.end(), value.begin(), value.end());
  return Status::Ok();
}

std::vector<StatusOr<std::vector<uint8_t>>> Store::get_many(std::span<const std::string> keys) {
  std::vector<StatusOr<std::vector<uint8_t>>> out;
  out.reserve(keys.size());
  for (const std::string& k : keys) out.push_back(get(k));
  return out;
}

Status Store::remove_many(std::span<const std::string> keys) {
  for (const std::string& k : keys) KVCODEC_RETURN_IF_ERROR(remove(k));
  return Status::Ok();
}

StatusOr<std::unique_ptr<Store>> open_store(std::string_view uri, const StoreOptions& options) {
  if (uri == "mem:") return std::unique_ptr<Store>(new MemStore());
  if (uri.rfind("file:", 0) == 0) {
    std::filesystem::path dir(std::string(uri.substr(5)));
    if (dir.empty()) return InvalidArgument("file store: expected file:DIR");
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec || !std::filesystem::is_directory(dir))
      return IoError("file store: cannot create directory " + dir.string());
    return std::unique_ptr<Store>(new FileStore(std::string(uri), dir));
  }
  for (std::string_view scheme : {"redis://", "valkey://"})
    if (uri.rfind(scheme, 0) == 0) return open_redis_store(uri, options);
  for (std::string_view scheme : {"redis-cluster://", "valkey-cluster://"})
    if (uri.rfind(scheme, 0) == 0) return open_redis_cluster_store(uri, options);
  return InvalidArgument("unknown store URI '" + std::string(uri) +
                         "' (expected mem:, file:DIR, redis://HOST:PORT or redis-cluster://HOST:PORT,...)");
}

}  // namespace kvcodec
