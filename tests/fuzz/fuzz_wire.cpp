// Fuzzes the wire protocol's parsers (src/stream/transport_wire.hpp): the 32-byte message header
// and the request payloads, as the server's reader loop applies them to bytes from a socket: a
// header, then its payload, then the next header. Property: a header that decodes re-encodes to
// the same 32 bytes, and a request payload that decodes re-encodes to the same payload.
#include <cstdlib>
#include <cstring>
#include <span>

#include "stream/transport_wire.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvcodec::stream_detail;
  std::span<const uint8_t> in(data, size);
  while (in.size() >= kMessageHeaderBytes) {
    auto h = decode_header(in.first(kMessageHeaderBytes));
    if (!h.ok()) return 0;
    uint8_t again[kMessageHeaderBytes];
    encode_header(*h, again);
    if (std::memcmp(again, in.data(), kMessageHeaderBytes) != 0) std::abort();
    in = in.subspan(kMessageHeaderBytes);
    // The server's limits: requests only, small payloads (anything else closes the connection).
    if (h->payload_bytes > kMaxRequestPayload || h->payload_bytes > in.size()) return 0;
    const auto payload = in.first(size_t(h->payload_bytes));
    in = in.subspan(size_t(h->payload_bytes));
    auto r = decode_request_payload(h->type, payload);
    if (!r.ok()) continue;
    const std::vector<uint8_t> re = encode_request_payload(*r);
    if (re.size() != payload.size() || !std::equal(re.begin(), re.end(), payload.begin())) std::abort();
  }
  return 0;
}
