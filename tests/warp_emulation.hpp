// The warp decoder of the CUDA backend (decode/warp_decode.hpp) run on the host by
// detail::HostWarp, for the tests of machines without a GPU.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "common/warp.hpp"
#include "decode/packed_model.hpp"
#include "decode/warp_decode.hpp"
#include "kvcodec/status.hpp"
#include "kvcodec/tensor.hpp"

namespace kvcodec::test {

// Decodes a whole frame with the warp decoder run by detail::HostWarp, unit after unit.
inline Status emulate_decode(std::span<const uint8_t> frame, const KVView& dst) {
  KVCODEC_ASSIGN_OR_RETURN(detail::PackedModel pm, detail::pack_model(frame));
  if (frame.size() < pm.info.frame_bytes) return BufferTooSmall("frame truncated");
  std::vector<int16_t> refs(pm.layout.channels);
  for (uint32_t k = 0; k < pm.layout.num_chunks; ++k)
    for (uint32_t l = 0; l < pm.layout.layers; ++l)
      for (uint32_t kv = 0; kv < 2; ++kv) {
        const detail::UnitJob job = detail::make_unit_job(pm.layout, pm.block.data(), nullptr, k,
                                                          frame.data() + pm.info.chunks[k].offset, l, kv, dst,
                                                          refs.data());
        detail::HostWarp w;
        if (uint32_t e = detail::warp_decode_unit(w, job)) return CorruptData(detail::unit_error_message(e));
      }
  return Status::Ok();
}

}  // namespace kvcodec::test
