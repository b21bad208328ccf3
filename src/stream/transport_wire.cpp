// Wire messages and blocking socket helpers (transport_wire.hpp).
#include "transport_wire.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "byte_io.hpp"
#include "common/xxh64.hpp"
#include "kvcodec/store.hpp"

namespace kvcodec::stream_detail {

void encode_header(const MessageHeader& h, uint8_t out[kMessageHeaderBytes]) {
  std::vector<uint8_t> buf;
  buf.reserve(kMessageHeaderBytes);
  ByteWriter w(buf);
  for (uint8_t b : kWireMagic) w.u8(b);
  w.u16(kWireVersion);
  w.u16(uint16_t(h.type));
  w.u32(h.request_id);
  w.u32(h.code);
  w.u64(h.payload_bytes);
  w.u64(detail::xxh64(buf.data(), buf.size()));
  std::memcpy(out, buf.data(), kMessageHeaderBytes);
}

StatusOr<MessageHeader> decode_header(std::span<const uint8_t> in) {
  if (in.size() < kMessageHeaderBytes) return CorruptData("wire: short message header");
  if (std::memcmp(in.data(), kWireMagic, 4) != 0) return CorruptData("wire: bad magic");
  ByteReader r(in.first(kMessageHeaderBytes));
  r.bytes(4);
  const uint16_t version = r.u16();
  const uint16_t type = r.u16();
  MessageHeader h;
  h.request_id = r.u32();
  h.code = r.u32();
  h.payload_bytes = r.u64();
  if (detail::xxh64(in.data(), 24) != r.u64()) return ChecksumMismatch("wire: message header checksum mismatch");
  if (version != kWireVersion)
    return UnsupportedVersion("wire: protocol version " + std::to_string(version) + ", expected " +
                              std::to_string(kWireVersion));
  switch (MsgType(type)) {
    case MsgType::kGetManifest:
    case MsgType::kGetChunk:
    case MsgType::kManifest:
    case MsgType::kChunk:
    case MsgType::kError:
      h.type = MsgType(type);
      break;
    default:
      return CorruptData("wire: unknown message type " + std::to_string(type));
  }
  // An Error carries one of StatusCode's errors (a code of 0 would read as success); every other
  // message carries 0.
  const bool error = h.type == MsgType::kError;
  if (error ? (h.code == 0 || h.code > uint32_t(StatusCode::kInternal)) : h.code != 0)
    return CorruptData("wire: status code " + std::to_string(h.code) + " in " + (error ? "an error" : "a non-error") +
                       " message");
  if (h.payload_bytes > kMaxResponsePayload) return CorruptData("wire: payload too large");
  return h;
}

std::vector<uint8_t> encode_request_payload(const Request& r) {
  std::vector<uint8_t> out;
  out.reserve(2 + r.id.size() + 6);
  ByteWriter w(out);
  w.u16(uint16_t(r.id.size()));
  w.bytes(std::string_view(r.id));
  if (r.type == MsgType::kGetChunk) {
    w.u8(uint8_t(r.level));
    w.u8(r.with_head ? 1 : 0);
    w.u32(r.chunk);
  }
  return out;
}

StatusOr<Request> decode_request_payload(MsgType type, std::span<const uint8_t> payload) {
  ByteReader r(payload);
  Request q;
  q.type = type;
  const uint16_t n = r.u16();
  auto id = r.bytes(n);
  q.id.assign(id.begin(), id.end());
  if (type == MsgType::kGetChunk) {
    q.level = r.u8();
    const uint8_t with_head = r.u8();
    q.chunk = r.u32();
    if (with_head > 1) return CorruptData("wire: bad with_head flag");
    q.with_head = with_head == 1;
  } else if (type != MsgType::kGetManifest) {
    return InvalidArgument("wire: not a request");
  }
  if (!r.ok() || r.remaining() != 0) return CorruptData("wire: malformed request");
  KVCODEC_RETURN_IF_ERROR(validate_context_id(q.id));
  return q;
}

std::vector<uint8_t> make_message(const MessageHeader& h, std::span<const uint8_t> payload) {
  std::vector<uint8_t> out(kMessageHeaderBytes + payload.size());
  MessageHeader hh = h;
  hh.payload_bytes = payload.size();
  encode_header(hh, out.data());
  if (!payload.empty()) std::memcpy(out.data() + kMessageHeaderBytes, payload.data(), payload.size());
  return out;
}

StatusOr<int> connect_tcp(const std::string& host, uint16_t port, int timeout_ms) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const std::string service = std::to_string(port);
  if (int rc = ::getaddrinfo(host.c_str(), service.c_str(), &hints, &res); rc != 0)
    return Unavailable("cannot resolve " + host + ": " + ::gai_strerror(rc));
  Status last = Unavailable("no address for " + host);
  for (addrinfo* a = res; a; a = a->ai_next) {
    int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
    if (fd < 0) continue;
    int rc = ::connect(fd, a->ai_addr, a->ai_addrlen);
    if (rc != 0 && errno == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      rc = ::poll(&p, 1, timeout_ms);
      if (rc == 0) {
        ::close(fd);
        last = Timeout("connect to " + host + ":" + service + ": no answer within " +
                       std::to_string(timeout_ms) + " ms");
        continue;
      }
      int err = 0;
      socklen_t len = sizeof err;
      ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
      rc = err ? -1 : 0;
      errno = err;
    }
    if (rc != 0) {
      last = Unavailable("connect to " + host + ":" + service + ": " + std::strerror(errno));
      ::close(fd);
      continue;
    }
    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    ::freeaddrinfo(res);
    return fd;
  }
  ::freeaddrinfo(res);
  return last;
}

Status send_all(int fd, std::span<const uint8_t> bytes) {
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::send(fd, bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return IoError(std::string("send: ") + std::strerror(errno));
    done += size_t(n);
  }
  return Status::Ok();
}

Status recv_exact(int fd, std::span<uint8_t> out, int timeout_ms) {
  size_t done = 0;
  while (done < out.size()) {
    pollfd p{fd, POLLIN, 0};
    int rc = ::poll(&p, 1, timeout_ms);
    if (rc < 0 && errno == EINTR) continue;
    if (rc == 0) return Timeout("receive: nothing within " + std::to_string(timeout_ms) + " ms");
    if (rc < 0) return IoError(std::string("poll: ") + std::strerror(errno));
    ssize_t n = ::recv(fd, out.data() + done, out.size() - done, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n == 0) return Unavailable("connection closed by peer");
    if (n < 0) return IoError(std::string("recv: ") + std::strerror(errno));
    done += size_t(n);
  }
  return Status::Ok();
}

}  // namespace kvcodec::stream_detail
