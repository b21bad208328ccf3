// Writes one float as an element of a storage dtype (the inverse of detail::load_as_f32), for
// the model library's exports to KVCache.
#pragma once

#include <cstdint>
#include <cstring>

#include "kvcodec/detail/dtype.hpp"
#include "kvcodec/tensor.hpp"

namespace kvcodec::model_detail {

// Rounds to nearest even (f16, bf16) or saturates (f8e4m3), as detail/dtype.hpp defines.
inline void store_as(float f, DType dtype, uint8_t* dst) {
  switch (dtype) {
    case DType::kF32: std::memcpy(dst, &f, 4); break;
    case DType::kF16: {
      const uint16_t h = detail::f32_to_f16(f);
      std::memcpy(dst, &h, 2);
      break;
    }
    case DType::kBF16: {
      const uint16_t h = detail::f32_to_bf16(f);
      std::memcpy(dst, &h, 2);
      break;
    }
    case DType::kF8E4M3: *dst = detail::f32_to_f8e4m3(f); break;
  }
}

}  // namespace kvcodec::model_detail
