// The wire protocol between `kvcodec serve` and the fetch client, and blocking socket helpers
// (private to src/stream; the protocol is specified in docs/streaming.md).
//
// Every message is a 32-byte header followed by `payload_bytes` of payload:
//   0  magic "KVCT"   4       12 code (StatusCode of an error, else 0)   u32
//   4  version (1)    u16     16 payload_bytes                            u64
//   6  type           u16     24 XXH64 (seed 0) of bytes 0..23            u64
//   8  request_id     u32
// Requests:  kGetManifest  payload: id length u16, id bytes
//            kGetChunk     payload: id length u16, id bytes, level u8, with_head u8, chunk u32
// Responses carry the request's id, in request order:
//            kManifest     payload: the manifest (store.hpp)
//            kChunk        payload: head_bytes u64, the level's head (when asked), chunk body
//            kError        payload: UTF-8 message; `code` holds the StatusCode
// Bodies and heads are verified by the client against the manifest's checksums; the manifest
// carries its own checksum; the header checksum catches a corrupt length before it is used.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "kvcodec/status.hpp"

namespace kvcodec::stream_detail {

inline constexpr uint8_t kWireMagic[4] = {'K', 'V', 'C', 'T'};
inline constexpr uint16_t kWireVersion = 1;
inline constexpr size_t kMessageHeaderBytes = 32;
inline constexpr uint64_t kMaxRequestPayload = 1024;
inline constexpr uint64_t kMaxResponsePayload = 4ull << 30;
// An error response's message (the client rejects longer ones before reading them).
inline constexpr uint64_t kMaxErrorPayload = 4096;

enum class MsgType : uint16_t {
  kGetManifest = 1,
  kGetChunk = 2,
  kManifest = 0x81,
  kChunk = 0x82,
  kError = 0xFF,
};

struct MessageHeader {
  MsgType type = MsgType::kError;
  uint32_t request_id = 0;
  uint32_t code = 0;
  uint64_t payload_bytes = 0;
};

void encode_header(const MessageHeader& h, uint8_t out[kMessageHeaderBytes]);
// Validates magic, version, checksum, type and code (an error code in an Error, else 0).
StatusOr<MessageHeader> decode_header(std::span<const uint8_t> in);

struct Request {
  MsgType type = MsgType::kGetManifest;
  std::string id;
  int level = 0;
  uint32_t chunk = 0;
  bool with_head = false;
};
std::vector<uint8_t> encode_request_payload(const Request& r);
StatusOr<Request> decode_request_payload(MsgType type, std::span<const uint8_t> payload);

// A header and its payload as one buffer.
std::vector<uint8_t> make_message(const MessageHeader& h, std::span<const uint8_t> payload);

// ---- sockets (blocking, MSG_NOSIGNAL; every wait bounded) ----
// Connects to host:port (numeric address or name) within timeout_ms, with TCP_NODELAY.
StatusOr<int> connect_tcp(const std::string& host, uint16_t port, int timeout_ms);
Status send_all(int fd, std::span<const uint8_t> bytes);
// Reads exactly out.size() bytes, waiting at most timeout_ms for each piece to arrive.
Status recv_exact(int fd, std::span<uint8_t> out, int timeout_ms);

}  // namespace kvcodec::stream_detail
