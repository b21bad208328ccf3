// GPU encoder: thin kernels around the per-thread and per-warp code of
// include/kvcodec/detail/warp_encode.hpp (which the host warp emulation of the tests runs too),
// and the host step between the two device phases (detail/encode_plan.hpp). See cuda.hpp for
// the API and warp_encode.hpp for the pipeline.
#include <algorithm>
#include <string>
#include <vector>

#include "cuda_util.hpp"
#include "kvcodec/backend.hpp"
#include "kvcodec/codec.hpp"
#include "kvcodec/cuda.hpp"
#include "kvcodec/detail/encode_plan.hpp"
#include "kvcodec/detail/warp_encode.hpp"

namespace kvcodec::cuda {
namespace {

using detail::ChannelSums;
using detail::EncodeLayout;
using detail::EncodeStaging;
using detail::EncodeTables;
using detail::LaneGrid;
using detail::UnitStage;

constexpr uint32_t kThreadsPerBlock = 128;
constexpr uint32_t kWarpsPerBlock = kThreadsPerBlock / 32;

// Outcome of the device work, copied back to pinned memory.
enum : uint32_t { kErrBadSource = 1, kErrTooSmall = 2 };
struct DeviceResult {
  uint64_t frame_bytes;
  uint32_t errors;  // kErr* bits
  uint32_t reserved;
};

__global__ void __launch_bounds__(kThreadsPerBlock)
    stats_kernel(const EncodeLayout el, const KVView src, ChannelSums* sums, DeviceResult* res) {
  const uint32_t c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c < el.channels && !detail::stats_channel(el, src, blockIdx.y, c, sums)) atomicOr(&res->errors, kErrBadSource);
}

__global__ void __launch_bounds__(kThreadsPerBlock)
    grids_kernel(const EncodeLayout el, const double* rel_step, const ChannelSums* sums, ChannelGrid* grids,
                 LaneGrid* lane) {
  __shared__ double layer_rms;
  const uint32_t u = blockIdx.x;
  if (threadIdx.x == 0)
    layer_rms = el.step_mode == StepMode::kLayer ? detail::layer_scale(sums + uint64_t(u) * el.channels, el.channels)
                                                 : 0.0;
  __syncthreads();
  for (uint32_t c = threadIdx.x; c < el.channels; c += blockDim.x)
    detail::grid_channel(el, rel_step[u / 2], layer_rms, sums, u, c, grids, lane);
}

__global__ void __launch_bounds__(kThreadsPerBlock)
    histogram_kernel(const EncodeLayout el, const KVView src, const LaneGrid* lane, uint32_t* hist, uint64_t* feature,
                     DeviceResult* res) {
  const uint32_t c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c < el.channels && !detail::histogram_channel(el, src, blockIdx.y, c, lane, hist, feature))
    atomicOr(&res->errors, kErrBadSource);
}

// One warp per (chunk, unit), units of a chunk adjacent.
__global__ void __launch_bounds__(kThreadsPerBlock)
    units_kernel(const EncodeLayout el, const KVView src, const EncodeTables tab, const EncodeStaging stg,
                 DeviceResult* res) {
  const uint64_t i = uint64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (i >= uint64_t(el.num_chunks) * el.units()) return;
  detail::DeviceWarp w{threadIdx.x % 32};
  const uint32_t e = detail::warp_encode_unit(w, el, src, tab, stg, uint32_t(i / el.units()), uint32_t(i % el.units()));
  if (e && w.lane == 0) atomicOr(&res->errors, kErrBadSource);
}

__global__ void assign_kernel(const EncodeLayout el, const UnitStage* stages, uint64_t head_bytes, uint64_t capacity,
                              uint64_t* chunk_offset, uint32_t* chunk_size, DeviceResult* res) {
  if (!detail::assign_chunks(el, stages, head_bytes, capacity, chunk_offset, chunk_size, &res->frame_bytes))
    res->errors |= kErrTooSmall;
}

__global__ void __launch_bounds__(kThreadsPerBlock)
    write_kernel(const EncodeLayout el, const EncodeStaging stg, const uint64_t* chunk_offset, uint8_t* dst,
                 const DeviceResult* res) {
  const uint64_t i = uint64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (res->errors || i >= uint64_t(el.num_chunks) * el.units()) return;
  detail::DeviceWarp w{threadIdx.x % 32};
  detail::warp_write_unit(w, el, stg, chunk_offset, uint32_t(i / el.units()), uint32_t(i % el.units()), dst);
}

// One thread per (chunk, checksum segment): blockIdx.x is the chunk (chunks can outnumber the
// 65535 blocks of grid y; a chunk's segments cannot: chunks are < 4 GiB).
__global__ void __launch_bounds__(kThreadsPerBlock)
    chunk_digest_kernel(const uint64_t* chunk_offset, const uint32_t* chunk_size, uint64_t max_segments,
                        const uint8_t* dst, uint64_t* digests, const DeviceResult* res) {
  const uint64_t s = uint64_t(blockIdx.y) * blockDim.x + threadIdx.x;
  if (!res->errors && s < max_segments)
    detail::chunk_segment_digest(chunk_offset, chunk_size, blockIdx.x, s, max_segments, dst, digests);
}

__global__ void __launch_bounds__(kThreadsPerBlock)
    chunks_kernel(uint32_t num_chunks, uint64_t model_bytes, const uint64_t* chunk_offset, const uint32_t* chunk_size,
                  const uint64_t* digests, uint64_t max_segments, uint8_t* dst, const DeviceResult* res) {
  const uint32_t k = blockIdx.x * blockDim.x + threadIdx.x;
  if (!res->errors && k < num_chunks)
    detail::finish_chunk(model_bytes, chunk_offset, chunk_size, digests, max_segments, res->frame_bytes, k, dst);
}

__global__ void __launch_bounds__(kThreadsPerBlock)
    head_digest_kernel(uint64_t head_bytes, const uint8_t* dst, uint64_t* digests, const DeviceResult* res) {
  const uint64_t s = uint64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (!res->errors) detail::head_segment_digest(head_bytes, s, dst, digests);
}

__global__ void head_kernel(uint64_t head_bytes, const uint64_t* digests, uint8_t* dst, const DeviceResult* res) {
  if (!res->errors) detail::finish_head(head_bytes, digests, dst);
}

uint32_t blocks_for(uint64_t n, uint32_t per_block) { return uint32_t((n + per_block - 1) / per_block); }

// Regions of the workspace, each 256-byte aligned.
struct Workspace {
  size_t rel = 0, sums = 0, grids = 0, lane = 0, hist = 0, feature = 0, codes = 0, table_base = 0, head = 0,
         stages = 0, words = 0, escapes = 0, chunk_offset = 0, chunk_size = 0, digests = 0, result = 0, bytes = 0;
  uint64_t max_chunk_segments = 0;  // digests per chunk (checksum.hpp)
};

Workspace workspace_layout(const EncodeLayout& el, const EncodeOptions& o) {
  const uint64_t per_channel = uint64_t(el.units()) * el.channels;
  const uint64_t elements = per_channel * el.tokens;
  const uint64_t unit_jobs = uint64_t(el.num_chunks) * el.units();
  Workspace w;
  size_t off = 0;
  auto place = [&](uint64_t bytes) {
    const size_t at = off;
    off = (off + bytes + 255) & ~size_t(255);
    return at;
  };
  w.rel = place(sizeof(double) * el.layers);
  w.sums = place(sizeof(ChannelSums) * per_channel);
  w.grids = place(sizeof(ChannelGrid) * per_channel);
  w.lane = place(sizeof(LaneGrid) * per_channel);
  w.hist = place(sizeof(uint32_t) * el.units() * el.hist_per_unit());
  w.feature = place(sizeof(uint64_t) * per_channel);
  w.codes = place(sizeof(uint32_t) * uint64_t(el.units()) * el.max_tables * el.bins);
  w.table_base = place(sizeof(uint16_t) * per_channel);
  w.head = place(detail::max_head_bytes(el, o));
  w.stages = place(sizeof(UnitStage) * unit_jobs);
  w.words = place(sizeof(uint16_t) * el.planes * elements);
  w.escapes = place(el.lossless ? 0 : uint64_t(el.elem_size) * elements);
  w.chunk_offset = place(sizeof(uint64_t) * el.num_chunks);
  w.chunk_size = place(sizeof(uint32_t) * el.num_chunks);
  // Chunk digests, then (reusing the region) the head's.
  w.max_chunk_segments = detail::max_chunk_segments(el);
  w.digests = place(sizeof(uint64_t) * std::max<uint64_t>(w.max_chunk_segments * el.num_chunks,
                                                          detail::checksum_segments(detail::max_head_bytes(el, o))));
  w.result = place(sizeof(DeviceResult));
  w.bytes = off;
  return w;
}

// Launch limits: one warp per (chunk, unit) must fit a 1-D grid.
Status check_launchable(const EncodeLayout& el) {
  if (uint64_t(el.num_chunks) * el.units() / kWarpsPerBlock >= (1ull << 31) - 1)
    return InvalidArgument("too many (chunk, layer, K/V) units for the GPU encoder: use larger chunk_tokens");
  return Status::Ok();
}

}  // namespace

struct Encoder::Impl {
  EncodeLayout el;
  EncodeOptions opt;
  Workspace ws;
  uint8_t* ws_dev = nullptr;
  PinnedBuffer hist, feature, grids, result;  // phase 1 outputs and the device result, on the host
  detail::EncodePlan plan;
  KVView src;  // of the last analyze_async
  bool analyzed = false, planned = false;

  template <typename T>
  T* at(size_t offset) const {
    return reinterpret_cast<T*>(ws_dev + offset);
  }
  DeviceResult* result_dev() const { return at<DeviceResult>(ws.result); }
  const DeviceResult& result_host() const { return *reinterpret_cast<const DeviceResult*>(result.get()); }
};

Encoder::Encoder(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Encoder::Encoder(Encoder&&) noexcept = default;
Encoder& Encoder::operator=(Encoder&&) noexcept = default;
Encoder::~Encoder() = default;

const uint64_t* Encoder::frame_bytes_dev() const noexcept { return &impl_->result_dev()->frame_bytes; }

StatusOr<size_t> Encoder::workspace_size(const KVShape& shape, DType dtype, const EncodeOptions& options) {
  KVCODEC_ASSIGN_OR_RETURN(EncodeLayout el, detail::encode_layout(shape, dtype, options));
  KVCODEC_RETURN_IF_ERROR(check_launchable(el));
  return workspace_layout(el, options).bytes;
}

StatusOr<Encoder> Encoder::create(const KVShape& shape, DType dtype, const EncodeOptions& options,
                                  void* workspace_dev, size_t workspace_bytes, cudaStream_t stream) {
  KVCODEC_RETURN_IF_ERROR(device_status());
  KVCODEC_ASSIGN_OR_RETURN(EncodeLayout el, detail::encode_layout(shape, dtype, options));
  KVCODEC_RETURN_IF_ERROR(check_launchable(el));
  if (!workspace_dev || reinterpret_cast<uintptr_t>(workspace_dev) % 16)
    return InvalidArgument("workspace must be a 16-byte aligned device pointer");
  auto impl = std::make_unique<Impl>();
  impl->el = el;
  impl->opt = options;
  impl->ws = workspace_layout(el, options);
  if (workspace_bytes < impl->ws.bytes)
    return BufferTooSmall("encoder workspace needs " + std::to_string(impl->ws.bytes) + " bytes, got " +
                          std::to_string(workspace_bytes));
  impl->ws_dev = static_cast<uint8_t*>(workspace_dev);
  const uint64_t per_channel = uint64_t(el.units()) * el.channels;
  KVCODEC_ASSIGN_OR_RETURN(impl->hist, PinnedBuffer::allocate(sizeof(uint32_t) * el.units() * el.hist_per_unit()));
  KVCODEC_ASSIGN_OR_RETURN(impl->feature, PinnedBuffer::allocate(sizeof(uint64_t) * per_channel));
  KVCODEC_ASSIGN_OR_RETURN(impl->grids, PinnedBuffer::allocate(sizeof(ChannelGrid) * per_channel));
  KVCODEC_ASSIGN_OR_RETURN(impl->result, PinnedBuffer::allocate(sizeof(DeviceResult)));
  // Per-layer relative steps: fixed by the options, uploaded once (pageable source: staged by
  // the runtime before this call returns).
  const std::vector<double> rel = detail::layer_rel_steps(el, options);
  KVCODEC_RETURN_IF_ERROR(check_cuda(
      cudaMemcpyAsync(impl->at<double>(impl->ws.rel), rel.data(), sizeof(double) * rel.size(), cudaMemcpyHostToDevice,
                      stream),
      "uploading layer steps"));
  return Encoder(std::move(impl));
}

Status Encoder::analyze_async(const KVView& src_dev, cudaStream_t stream) {
  Impl& m = *impl_;
  const EncodeLayout& el = m.el;
  KVCODEC_RETURN_IF_ERROR(check_device_view(DType(el.dtype), KVShape{el.layers, el.tokens, el.kv_heads, el.head_dim},
                                            src_dev));
  m.src = src_dev;
  m.analyzed = m.planned = false;
  const Workspace& ws = m.ws;
  const uint64_t per_channel = uint64_t(el.units()) * el.channels;
  const size_t hist_bytes = sizeof(uint32_t) * el.units() * el.hist_per_unit();
  KVCODEC_RETURN_IF_ERROR(check_cuda(cudaMemsetAsync(m.result_dev(), 0, sizeof(DeviceResult), stream), "clearing"));
  KVCODEC_RETURN_IF_ERROR(check_cuda(cudaMemsetAsync(m.ws_dev + ws.hist, 0, hist_bytes, stream), "clearing"));
  const dim3 per_unit_channels(blocks_for(el.channels, kThreadsPerBlock), el.units());
  stats_kernel<<<per_unit_channels, kThreadsPerBlock, 0, stream>>>(el, src_dev, m.at<ChannelSums>(ws.sums),
                                                                    m.result_dev());
  grids_kernel<<<el.units(), kThreadsPerBlock, 0, stream>>>(el, m.at<double>(ws.rel), m.at<ChannelSums>(ws.sums),
                                                            m.at<ChannelGrid>(ws.grids), m.at<LaneGrid>(ws.lane));
  histogram_kernel<<<per_unit_channels, kThreadsPerBlock, 0, stream>>>(
      el, src_dev, m.at<LaneGrid>(ws.lane), m.at<uint32_t>(ws.hist), m.at<uint64_t>(ws.feature), m.result_dev());
  KVCODEC_RETURN_IF_ERROR(check_cuda(cudaGetLastError(), "launching the analysis kernels"));
  const struct {
    void* host;
    size_t offset, bytes;
  } copies[] = {{m.hist.get(), ws.hist, hist_bytes},
                {m.feature.get(), ws.feature, sizeof(uint64_t) * per_channel},
                {m.grids.get(), ws.grids, sizeof(ChannelGrid) * per_channel},
                {m.result.get(), ws.result, sizeof(DeviceResult)}};
  for (const auto& c : copies)
    KVCODEC_RETURN_IF_ERROR(check_cuda(
        cudaMemcpyAsync(c.host, m.ws_dev + c.offset, c.bytes, cudaMemcpyDeviceToHost, stream), "copying histograms"));
  m.analyzed = true;
  return Status::Ok();
}

Status Encoder::build_tables(cudaStream_t stream) {
  Impl& m = *impl_;
  if (!m.analyzed) return InvalidArgument("build_tables needs a preceding analyze_async");
  KVCODEC_RETURN_IF_ERROR(check_cuda(cudaStreamSynchronize(stream), "encoder analysis"));
  if (m.result_host().errors & kErrBadSource)
    return InvalidArgument("source view: block table entry outside [0, num_blocks)");
  const EncodeLayout& el = m.el;
  KVCODEC_RETURN_IF_ERROR(detail::build_encode_plan(el, m.opt, reinterpret_cast<const uint32_t*>(m.hist.get()),
                                                    reinterpret_cast<const uint64_t*>(m.feature.get()),
                                                    reinterpret_cast<const ChannelGrid*>(m.grids.get()), m.plan));
  const detail::EncodePlan& p = m.plan;
  const Workspace& ws = m.ws;
  // Pageable sources: the runtime stages them before returning (this is the host step anyway).
  const struct {
    const void* host;
    size_t offset, bytes;
  } uploads[] = {{p.codes.data(), ws.codes, sizeof(uint32_t) * p.codes.size()},
                 {p.table_base.data(), ws.table_base, sizeof(uint16_t) * p.table_base.size()},
                 {p.head.data(), ws.head, p.head.size()}};
  for (const auto& u : uploads)
    KVCODEC_RETURN_IF_ERROR(check_cuda(
        cudaMemcpyAsync(m.ws_dev + u.offset, u.host, u.bytes, cudaMemcpyHostToDevice, stream), "uploading tables"));
  m.planned = true;
  return Status::Ok();
}

Status Encoder::encode_async(uint8_t* dst_dev, size_t dst_capacity, cudaStream_t stream) {
  Impl& m = *impl_;
  if (!m.planned) return InvalidArgument("encode_async needs analyze_async and build_tables first");
  const detail::EncodePlan& p = m.plan;
  if (!dst_dev) return InvalidArgument("null destination");
  if (p.head.size() > dst_capacity)
    return BufferTooSmall("frame head needs " + std::to_string(p.head.size()) + " bytes, buffer has " +
                          std::to_string(dst_capacity));
  const EncodeLayout& el = m.el;
  const Workspace& ws = m.ws;
  const EncodeTables tab{m.at<uint32_t>(ws.codes), m.at<uint16_t>(ws.table_base), m.at<LaneGrid>(ws.lane)};
  const EncodeStaging stg{m.at<uint16_t>(ws.words), m.at<uint8_t>(ws.escapes), m.at<UnitStage>(ws.stages)};
  const uint32_t unit_blocks = blocks_for(uint64_t(el.num_chunks) * el.units(), kWarpsPerBlock);
  KVCODEC_RETURN_IF_ERROR(check_cuda(cudaMemsetAsync(m.result_dev(), 0, sizeof(DeviceResult), stream), "clearing"));
  auto* offsets = m.at<uint64_t>(ws.chunk_offset);
  auto* sizes = m.at<uint32_t>(ws.chunk_size);
  units_kernel<<<unit_blocks, kThreadsPerBlock, 0, stream>>>(el, m.src, tab, stg, m.result_dev());
  assign_kernel<<<1, 1, 0, stream>>>(el, stg.stages, p.head.size(), dst_capacity, offsets, sizes, m.result_dev());
  KVCODEC_RETURN_IF_ERROR(check_cuda(
      cudaMemcpyAsync(dst_dev, m.ws_dev + ws.head, p.head.size(), cudaMemcpyDeviceToDevice, stream), "copying head"));
  write_kernel<<<unit_blocks, kThreadsPerBlock, 0, stream>>>(el, stg, offsets, dst_dev, m.result_dev());
  auto* digests = m.at<uint64_t>(ws.digests);
  chunk_digest_kernel<<<dim3(el.num_chunks, blocks_for(ws.max_chunk_segments, kThreadsPerBlock)), kThreadsPerBlock, 0,
                        stream>>>(offsets, sizes, ws.max_chunk_segments, dst_dev, digests, m.result_dev());
  chunks_kernel<<<blocks_for(el.num_chunks, kThreadsPerBlock), kThreadsPerBlock, 0, stream>>>(
      el.num_chunks, p.info.model_bytes, offsets, sizes, digests, ws.max_chunk_segments, dst_dev, m.result_dev());
  head_digest_kernel<<<blocks_for(detail::checksum_segments(p.head.size()), kThreadsPerBlock), kThreadsPerBlock, 0,
                       stream>>>(p.head.size(), dst_dev, digests, m.result_dev());
  head_kernel<<<1, 1, 0, stream>>>(p.head.size(), digests, dst_dev, m.result_dev());
  KVCODEC_RETURN_IF_ERROR(check_cuda(cudaGetLastError(), "launching the encode kernels"));
  return check_cuda(cudaMemcpyAsync(m.result.get(), m.result_dev(), sizeof(DeviceResult), cudaMemcpyDeviceToHost, stream),
                    "reading the frame size");
}

StatusOr<size_t> Encoder::synchronize(cudaStream_t stream) {
  Impl& m = *impl_;
  KVCODEC_RETURN_IF_ERROR(check_cuda(cudaStreamSynchronize(stream), "encode"));
  const DeviceResult& r = m.result_host();
  if (r.errors & kErrBadSource) return InvalidArgument("source view: block table entry outside [0, num_blocks)");
  if (r.errors & kErrTooSmall)
    return BufferTooSmall("frame needs " + std::to_string(r.frame_bytes) + " bytes, more than the destination's");
  return size_t(r.frame_bytes);
}

StatusOr<size_t> encode_frame(const KVView& src_dev, const EncodeOptions& options, uint8_t* dst_dev,
                              size_t dst_capacity, cudaStream_t stream) {
  KVCODEC_ASSIGN_OR_RETURN(size_t bytes, Encoder::workspace_size(src_dev.shape, src_dev.dtype, options));
  KVCODEC_ASSIGN_OR_RETURN(DeviceBuffer ws, DeviceBuffer::allocate(bytes));
  KVCODEC_ASSIGN_OR_RETURN(Encoder enc, Encoder::create(src_dev.shape, src_dev.dtype, options, ws.get(), bytes, stream));
  KVCODEC_RETURN_IF_ERROR(enc.analyze_async(src_dev, stream));
  KVCODEC_RETURN_IF_ERROR(enc.build_tables(stream));
  KVCODEC_RETURN_IF_ERROR(enc.encode_async(dst_dev, dst_capacity, stream));
  return enc.synchronize(stream);
}

}  // namespace kvcodec::cuda
