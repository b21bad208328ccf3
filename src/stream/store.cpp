// open_store and the two local stores: "mem:" (a process-local map) and "file:DIR".
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>

#include "kvcodec/store.hpp"
#include "store_redis.hpp"

namespace kvcodec {

namespace {

class MemStore final : public Store {
 public:
  Status put(std::string_view key, std::span<const uint8_t> value) override {
    std::lock_guard lock(mu_);
    map_[std::string(key)].assign(value.begin(), value.end());
    return Status::Ok();
  }
  StatusOr<std::vector<uint8_t>> get(std::string_view key) override {
    std::lock_guard lock(mu_);
    auto it = map_.find(std::string(key));
    if (it == map_.end()) return NotFound("mem: no key " + std::string(key));
    return it->second;
  }
  StatusOr<bool> exists(std::string_view key) override {
    std::lock_guard lock(mu_);
    return map_.count(std::string(key)) > 0;
  }
  Status remove(std::string_view key) override {
    std::lock_guard lock(mu_);
    map_.erase(std::string(key));
    return Status::Ok();
  }
  const std::string& uri() const noexcept override { return uri_; }

 private:
  const std::string uri_ = "mem:";
  std::mutex mu_;
  std::map<std::string, std::vector<uint8_t>, std::less<>> map_;
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
    std::vector<uint8_t> out(size_t(st.st_size));
    size_t done = 0;
    while (done < out.size()) {
      ssize_t n = ::read(fd, out.data() + done, out.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        ::close(fd);
        return IoError(n == 0 ? "file store: " + p.string() + " shrank while reading"
                              : errno_text("file store: read " + p.string()));
      }
      done += size_t(n);
    }
    ::close(fd);
    return out;
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
  if (uri.rfind("redis://", 0) == 0) return open_redis_store(uri, options);
  return InvalidArgument("unknown store URI '" + std::string(uri) +
                         "' (expected mem:, file:DIR or redis://HOST:PORT)");
}

}  // namespace kvcodec
