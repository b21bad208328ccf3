// GPU decoder: the head is parsed on the host and its tables uploaded into the caller's
// workspace (Decoder::create); each decode_async verifies the chunks' checksums (one thread per
// checksum segment, then one per chunk: common/checksum.hpp) unless disabled, and launches one
// kernel in which every warp decodes one (chunk, layer, K/V) unit with warp_decode_unit
// (src/decode/warp_decode.hpp), the code the host emulation tests run too. Units of
// a chunk whose checksum failed write nothing.
#include <algorithm>
#include <string>
#include <vector>

#include "cuda_util.hpp"
#include "kvcodec/backend.hpp"
#include "kvcodec/cuda.hpp"
#include "decode/packed_model.hpp"
#include "decode/warp_decode.hpp"
#include "common/checksum.hpp"

namespace kvcodec::cuda {
namespace {

using detail::DecTable;
using detail::PackedLayout;

// Warps per block. A block decodes one (layer, K/V) for kWarpsPerBlock chunks, so the layer's
// tables are loaded into shared memory once for all of them.
constexpr uint32_t kWarpsPerBlock = 4;

// Chunks per launch, passed by value as a kernel parameter: no host-to-device copy of the chunk
// list, hence no synchronisation with the host (2 KiB is within every architecture's parameter
// limit). Larger batches take several launches; `base` is the first entry's index in the batch.
constexpr uint32_t kLaunchChunks = 128;
struct LaunchChunks {
  DeviceChunk c[kLaunchChunks];
};

__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    decode_units(const PackedLayout pl, const uint8_t* model, const LaunchChunks batch, uint32_t count, uint32_t base,
                 uint32_t layer_begin, const KVView dst, int16_t* refs, uint32_t* errors, const uint32_t* bad_chunk,
                 uint32_t shared_tables) {
  extern __shared__ uint2 smem[];
  const uint32_t y = blockIdx.y, l = layer_begin + y / 2, kv = y % 2;
  const detail::ModelView mv = detail::model_view(model, pl);
  const detail::LayerDesc ld = mv.layers[2 * l + kv];
  const DecTable* tables = mv.tables + ld.first_table;
  if (shared_tables) {
    const uint2* src = reinterpret_cast<const uint2*>(tables);
    const uint32_t words = ld.num_tables * uint32_t(sizeof(DecTable) / sizeof(uint2));
    for (uint32_t i = threadIdx.x; i < words; i += blockDim.x) smem[i] = src[i];
    __syncthreads();
    tables = reinterpret_cast<const DecTable*>(smem);
  }
  const uint32_t b = blockIdx.x * kWarpsPerBlock + threadIdx.x / 32;
  if (b >= count || (bad_chunk && bad_chunk[base + b])) return;
  const DeviceChunk ch = batch.c[b];
  const uint64_t slot = uint64_t(base + b) * gridDim.y + y;
  int16_t* r = refs ? refs + slot * pl.channels : nullptr;
  const detail::UnitJob job = detail::make_unit_job(pl, model, tables, ch.index, ch.body_dev, l, kv, dst, r);
  detail::DeviceWarp w{threadIdx.x % 32};
  const uint32_t e = detail::warp_decode_unit(w, job);
  if (e && w.lane == 0) {
    errors[1 + slot] = e;
    atomicOr(errors, 1u);
  }
}

// Per-chunk data of the frame's index, on the device for checksum verification.
struct ChunkCheck {
  uint64_t checksum;
  uint32_t size;
  uint32_t reserved;
};

// One thread per (batch entry, checksum segment); blockIdx.x is the entry within the launch.
__global__ void __launch_bounds__(128)
    digest_chunks(const LaunchChunks batch, uint32_t base, const ChunkCheck* checks, uint64_t max_segments,
                  uint64_t* digests) {
  const DeviceChunk ch = batch.c[blockIdx.x];
  const uint64_t s = uint64_t(blockIdx.y) * blockDim.x + threadIdx.x;
  const uint32_t size = checks[ch.index].size;
  if (s < detail::checksum_segments(size))
    digests[(base + blockIdx.x) * max_segments + s] = detail::segment_digest(detail::ChecksumInput{ch.body_dev, size}, s);
}

// One thread per batch entry: the checksum from the digests (version 2) or of the whole body
// (version 1 frames: sequential, slow, correct) against the index; a mismatch marks the chunk.
__global__ void __launch_bounds__(128)
    check_chunks(const LaunchChunks batch, uint32_t count, uint32_t base, const ChunkCheck* checks, uint16_t version,
                 uint64_t max_segments, const uint64_t* digests, uint32_t* bad_chunk, uint32_t* errors) {
  const uint32_t b = blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= count) return;
  const DeviceChunk ch = batch.c[b];
  const ChunkCheck c = checks[ch.index];
  const uint64_t sum = version >= 2 ? detail::combine_digests(digests + (base + b) * max_segments,
                                                              detail::checksum_segments(c.size))
                                    : detail::frame_checksum(version, ch.body_dev, c.size);
  bad_chunk[base + b] = sum != c.checksum;
  if (sum != c.checksum) atomicOr(errors, 1u);
}

// Regions of the workspace, each 256-byte aligned.
struct Workspace {
  size_t model = 0, errors = 0, refs = 0, checks = 0, digests = 0, bad = 0, bytes = 0;
  uint64_t max_segments = 0;  // checksum segments of the frame's largest chunk
};

Workspace workspace_layout(const detail::PackedModel& pm, uint32_t max_batch) {
  const PackedLayout& pl = pm.layout;
  const uint64_t units = uint64_t(max_batch) * 2 * pl.layers;
  const bool deltas = !pl.lossless && pl.group_tokens > 1;
  Workspace w;
  for (const ChunkInfo& c : pm.info.chunks) w.max_segments = std::max(w.max_segments, detail::checksum_segments(c.size));
  size_t off = 0;
  auto place = [&](uint64_t bytes) {
    const size_t at = off;
    off = (off + bytes + 255) & ~size_t(255);
    return at;
  };
  w.model = place(pl.bytes);
  w.errors = place(4 * (1 + units));
  w.refs = place(deltas ? 2 * units * pl.channels : 0);
  w.checks = place(sizeof(ChunkCheck) * pm.info.chunks.size());
  w.digests = place(sizeof(uint64_t) * max_batch * w.max_segments);
  w.bad = place(sizeof(uint32_t) * max_batch);
  w.bytes = off;
  return w;
}

}  // namespace

Status device_status() { return backend_status(Backend::kCuda); }

struct Decoder::Impl {
  detail::PackedModel model;  // host copy (info, layout; the block is uploaded)
  Workspace ws;
  uint8_t* ws_dev = nullptr;
  uint32_t max_batch = 0;
  uint32_t shared_bytes = 0;  // dynamic shared memory per block; 0: tables read from global memory
  std::vector<DeviceChunk> staged;  // the last batch (capacity max_batch: no allocation per call)
  std::vector<ChunkCheck> checks;   // sizes and checksums of the index, uploaded by create()
  bool verify = true;
  uint32_t units_y = 0, layer_begin = 0;
  PinnedWord error_word;
};

Decoder::Decoder(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Decoder::Decoder(Decoder&&) noexcept = default;
Decoder& Decoder::operator=(Decoder&&) noexcept = default;
Decoder::~Decoder() = default;

const FrameInfo& Decoder::info() const noexcept { return impl_->model.info; }
const uint32_t* Decoder::error_flag_dev() const noexcept {
  return reinterpret_cast<const uint32_t*>(impl_->ws_dev + impl_->ws.errors);
}

StatusOr<size_t> Decoder::workspace_size(std::span<const uint8_t> head, uint32_t max_batch) {
  if (max_batch == 0) return InvalidArgument("max_batch must be at least 1");
  KVCODEC_ASSIGN_OR_RETURN(detail::PackedModel pm, detail::pack_model(head));
  return workspace_layout(pm, max_batch).bytes;
}

StatusOr<Decoder> Decoder::create(std::span<const uint8_t> head, void* workspace_dev, size_t workspace_bytes,
                                  uint32_t max_batch, cudaStream_t stream, bool verify_checksums) {
  KVCODEC_RETURN_IF_ERROR(device_status());
  if (max_batch == 0) return InvalidArgument("max_batch must be at least 1");
  if (!workspace_dev || reinterpret_cast<uintptr_t>(workspace_dev) % 16)
    return InvalidArgument("workspace must be a 16-byte aligned device pointer");
  auto impl = std::make_unique<Impl>();
  KVCODEC_ASSIGN_OR_RETURN(impl->model, detail::pack_model(head));
  const PackedLayout& pl = impl->model.layout;
  impl->ws = workspace_layout(impl->model, max_batch);
  impl->verify = verify_checksums;
  if (workspace_bytes < impl->ws.bytes)
    return BufferTooSmall("decoder workspace needs " + std::to_string(impl->ws.bytes) + " bytes, got " +
                          std::to_string(workspace_bytes));
  impl->ws_dev = static_cast<uint8_t*>(workspace_dev);
  impl->max_batch = max_batch;
  impl->staged.reserve(max_batch);

  // Tables in shared memory when the largest (layer, K/V) set fits the device's opt-in limit.
  int dev = 0, optin = 0;
  KVCODEC_RETURN_IF_ERROR(check_cuda(cudaGetDevice(&dev), "cudaGetDevice"));
  KVCODEC_RETURN_IF_ERROR(
      check_cuda(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), "device attribute"));
  const uint64_t need = uint64_t(pl.max_layer_tables) * sizeof(DecTable);
  if (need <= uint64_t(optin)) {
    impl->shared_bytes = uint32_t(need);
    KVCODEC_RETURN_IF_ERROR(check_cuda(
        cudaFuncSetAttribute(decode_units, cudaFuncAttributeMaxDynamicSharedMemorySize, int(need)), "shared memory"));
  }
  KVCODEC_ASSIGN_OR_RETURN(impl->error_word, PinnedWord::allocate());
  KVCODEC_RETURN_IF_ERROR(check_cuda(cudaMemcpyAsync(impl->ws_dev + impl->ws.model, impl->model.block.data(), pl.bytes,
                                                     cudaMemcpyHostToDevice, stream),
                                     "uploading decode tables"));
  for (const ChunkInfo& c : impl->model.info.chunks) impl->checks.push_back({c.checksum, c.size, 0});
  KVCODEC_RETURN_IF_ERROR(check_cuda(cudaMemcpyAsync(impl->ws_dev + impl->ws.checks, impl->checks.data(),
                                                     sizeof(ChunkCheck) * impl->checks.size(), cudaMemcpyHostToDevice,
                                                     stream),
                                     "uploading the chunk index"));
  KVCODEC_RETURN_IF_ERROR(
      check_cuda(cudaMemsetAsync(impl->ws_dev + impl->ws.errors, 0, 4, stream), "clearing error flags"));
  return Decoder(std::move(impl));
}

Status Decoder::verify_chunk(uint32_t chunk, std::span<const uint8_t> host_body) const {
  const FrameInfo& f = impl_->model.info;
  if (chunk >= f.chunks.size()) return OutOfRange("chunk " + std::to_string(chunk) + " beyond the frame");
  if (host_body.size() != f.chunks[chunk].size) return CorruptData("chunk " + std::to_string(chunk) + " has the wrong size");
  if (detail::frame_checksum(f.format_version, host_body.data(), host_body.size()) != f.chunks[chunk].checksum)
    return ChecksumMismatch("chunk " + std::to_string(chunk) + " checksum mismatch");
  return Status::Ok();
}

Status Decoder::decode_async(std::span<const DeviceChunk> chunks, const KVView& dst_dev, cudaStream_t stream,
                             uint32_t layer_begin, uint32_t layer_end) {
  Impl& m = *impl_;
  const FrameInfo& f = m.model.info;
  KVCODEC_RETURN_IF_ERROR(check_device_view(f.dtype, f.shape, dst_dev));
  if (chunks.empty() || chunks.size() > m.max_batch)
    return InvalidArgument("decode_async takes 1.." + std::to_string(m.max_batch) + " chunks, got " +
                           std::to_string(chunks.size()));
  const uint32_t le = std::min(layer_end, f.shape.layers);
  if (layer_begin >= le) return InvalidArgument("empty layer range");
  for (const DeviceChunk& c : chunks) {
    if (c.index >= f.chunks.size()) return OutOfRange("chunk " + std::to_string(c.index) + " beyond the frame");
    if (!c.body_dev) return InvalidArgument("chunk " + std::to_string(c.index) + " has a null body");
  }
  m.staged.assign(chunks.begin(), chunks.end());  // within capacity: no allocation (names errors)
  m.layer_begin = layer_begin;
  m.units_y = 2 * (le - layer_begin);
  const uint32_t n = uint32_t(chunks.size());
  auto* errors = reinterpret_cast<uint32_t*>(m.ws_dev + m.ws.errors);
  KVCODEC_RETURN_IF_ERROR(
      check_cuda(cudaMemsetAsync(errors, 0, 4 * (1 + size_t(n) * m.units_y), stream), "clearing error flags"));
  const PackedLayout& pl = m.model.layout;
  int16_t* refs = !pl.lossless && pl.group_tokens > 1 ? reinterpret_cast<int16_t*>(m.ws_dev + m.ws.refs) : nullptr;
  uint32_t* bad = m.verify ? reinterpret_cast<uint32_t*>(m.ws_dev + m.ws.bad) : nullptr;
  const auto* checks = reinterpret_cast<const ChunkCheck*>(m.ws_dev + m.ws.checks);
  auto* digests = reinterpret_cast<uint64_t*>(m.ws_dev + m.ws.digests);
  const uint32_t segment_blocks = uint32_t((m.ws.max_segments + 127) / 128);
  for (uint32_t base = 0; base < n; base += kLaunchChunks) {
    const uint32_t count = std::min(kLaunchChunks, n - base);
    LaunchChunks lc{};
    std::copy(chunks.begin() + base, chunks.begin() + base + count, lc.c);
    if (m.verify) {
      if (f.format_version >= 2)
        digest_chunks<<<dim3(count, segment_blocks), 128, 0, stream>>>(lc, base, checks, m.ws.max_segments, digests);
      check_chunks<<<(count + 127) / 128, 128, 0, stream>>>(lc, count, base, checks, f.format_version,
                                                            m.ws.max_segments, digests, bad, errors);
    }
    const dim3 grid((count + kWarpsPerBlock - 1) / kWarpsPerBlock, m.units_y);
    decode_units<<<grid, kWarpsPerBlock * 32, m.shared_bytes, stream>>>(
        pl, m.ws_dev + m.ws.model, lc, count, base, layer_begin, dst_dev, refs, errors, bad, m.shared_bytes != 0);
  }
  return check_cuda(cudaGetLastError(), "launching the decode kernels");
}

Status Decoder::synchronize(cudaStream_t stream) {
  Impl& m = *impl_;
  const auto* errors = reinterpret_cast<const uint32_t*>(m.ws_dev + m.ws.errors);
  KVCODEC_RETURN_IF_ERROR(
      check_cuda(cudaMemcpyAsync(m.error_word.get(), errors, 4, cudaMemcpyDeviceToHost, stream), "reading error flags"));
  KVCODEC_RETURN_IF_ERROR(check_cuda(cudaStreamSynchronize(stream), "decode"));
  if (*m.error_word.get() == 0) return Status::Ok();
  // Error path only: fetch the chunks' checksum flags and every unit's flag; name the first failure.
  if (m.verify) {
    std::vector<uint32_t> bad(m.staged.size());
    KVCODEC_RETURN_IF_ERROR(check_cuda(
        cudaMemcpy(bad.data(), m.ws_dev + m.ws.bad, 4 * bad.size(), cudaMemcpyDeviceToHost), "reading checksum flags"));
    for (size_t b = 0; b < bad.size(); ++b)
      if (bad[b])
        return ChecksumMismatch("chunk " + std::to_string(m.staged[b].index) +
                                " checksum mismatch (verified on the device; nothing of it was written)");
  }
  std::vector<uint32_t> flags(m.staged.size() * m.units_y);
  KVCODEC_RETURN_IF_ERROR(
      check_cuda(cudaMemcpy(flags.data(), errors + 1, 4 * flags.size(), cudaMemcpyDeviceToHost), "reading error flags"));
  for (size_t i = 0; i < flags.size(); ++i) {
    if (!flags[i]) continue;
    const uint32_t y = uint32_t(i % m.units_y);
    return CorruptData("chunk " + std::to_string(m.staged[i / m.units_y].index) + " layer " +
                       std::to_string(m.layer_begin + y / 2) + (y % 2 ? " V" : " K") + ": " +
                       detail::unit_error_message(flags[i]));
  }
  return Internal("device error flag set without a failing unit");
}

Status decode_frame(const uint8_t* frame_dev, std::span<const uint8_t> head, const KVView& dst_dev, cudaStream_t stream,
                    bool verify_checksums) {
  KVCODEC_ASSIGN_OR_RETURN(FrameInfo f, read_frame_info(head));
  const uint32_t n = uint32_t(f.chunks.size());
  KVCODEC_ASSIGN_OR_RETURN(size_t bytes, Decoder::workspace_size(head, n));
  KVCODEC_ASSIGN_OR_RETURN(DeviceBuffer ws, DeviceBuffer::allocate(bytes));
  KVCODEC_ASSIGN_OR_RETURN(Decoder dec, Decoder::create(head, ws.get(), bytes, n, stream, verify_checksums));
  std::vector<DeviceChunk> chunks(n);
  for (uint32_t k = 0; k < n; ++k) chunks[k] = {k, frame_dev + f.chunks[k].offset};
  KVCODEC_RETURN_IF_ERROR(dec.decode_async(chunks, dst_dev, stream));
  return dec.synchronize(stream);
}

}  // namespace kvcodec::cuda
