// GPU encoder: thin kernels around the per-thread, per-warp and per-block code of
// src/encode/warp_encode.hpp and src/encode/block_model.hpp (which the host emulation of
// the tests runs too). A whole encode is enqueued on the caller's stream: no host round trip.
// See cuda.hpp for the API, warp_encode.hpp for the pipeline and block_model.hpp for the tables.
#include <algorithm>
#include <string>
#include <vector>

#include "cuda_util.hpp"
#include "kvcodec/backend.hpp"
#include "kvcodec/codec.hpp"
#include "kvcodec/cuda.hpp"
#include "encode/block_model.hpp"
#include "encode/encode_plan.hpp"
#include "encode/warp_encode.hpp"

namespace kvcodec::cuda {
namespace {

using detail::ChannelSums;
using detail::EncodeLayout;
using detail::EncodeStaging;
using detail::EncodeTables;
using detail::HeaderTemplate;
using detail::LaneGrid;
using detail::ModelArgs;
using detail::ModelLayout;
using detail::UnitStage;

constexpr uint32_t kThreadsPerBlock = 128;
constexpr uint32_t kWarpsPerBlock = kThreadsPerBlock / 32;

// Outcome of the device work, copied back to pinned memory.
enum : uint32_t { kErrBadSource = 1, kErrTooSmall = 2, kErrTable = 4, kErrChunkTooLarge = 8 };
struct DeviceResult {
  uint64_t frame_bytes;  // first: Encoder::frame_bytes_dev
  uint64_t head_bytes, model_bytes;
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

__global__ void __launch_bounds__(kThreadsPerBlock)
    recount_kernel(const EncodeLayout el, const KVView src, const LaneGrid* lane, const uint32_t* codes,
                   const uint16_t* table_base, uint32_t* hist, DeviceResult* res) {
  const uint32_t c = blockIdx.x * blockDim.x + threadIdx.x;
  if (res->errors) return;
  if (c < el.channels && !detail::recount_deltas_channel(el, src, blockIdx.y, c, lane, codes, table_base, hist))
    atomicOr(&res->errors, kErrBadSource);
}

// One block per unit: its tables and serialised model (block_model.hpp). The group sums live in
// `smem_sums` bytes of dynamic shared memory, or when 0 in the unit's global scratch. keep_groups:
// the second pass after recount_kernel.
__global__ void __launch_bounds__(detail::kBlockThreads)
    model_kernel(const EncodeLayout el, const ModelLayout ml, const ModelArgs args, uint32_t smem_sums, bool keep_groups,
                 DeviceResult* res) {
  extern __shared__ uint64_t dyn_sums[];
  __shared__ detail::ModelShared sh;
  const uint32_t u = blockIdx.x;
  if (res->errors & kErrBadSource) return;  // set by earlier kernels only: uniform over the block
  uint64_t* sums = smem_sums ? dyn_sums
                             : reinterpret_cast<uint64_t*>(args.scratch + u * ml.scratch_stride + ml.sums_offset);
  detail::DeviceBlock blk;
  if (!detail::block_build_model(blk, el, ml, args, u, sh, sums, keep_groups) && threadIdx.x == 0)
    atomicOr(&res->errors, kErrTable);
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

// One thread: the models' places in the model section, the head size, then the chunks'.
__global__ void assign_kernel(const EncodeLayout el, const UnitStage* stages, const uint32_t* model_size,
                              uint64_t* model_offset, uint64_t capacity, uint64_t* chunk_offset, uint32_t* chunk_size,
                              DeviceResult* res) {
  res->model_bytes = detail::place_models(el.units(), model_size, model_offset);
  res->head_bytes = detail::head_bytes_for(el, res->model_bytes);
  switch (detail::assign_chunks(el, stages, res->head_bytes, capacity, chunk_offset, chunk_size, &res->frame_bytes)) {
    case detail::kAssignTooSmall: res->errors |= kErrTooSmall; break;
    case detail::kAssignChunkTooLarge: res->errors |= kErrChunkTooLarge; break;
    default: break;
  }
}

// One block per unit: its model into the frame's model section; block 0 writes the header.
__global__ void __launch_bounds__(detail::kBlockThreads)
    model_copy_kernel(const HeaderTemplate hdr, const ModelLayout ml, const uint8_t* models, const uint32_t* model_size,
                      const uint64_t* model_offset, uint8_t* dst, const DeviceResult* res) {
  if (res->errors) return;
  detail::DeviceBlock blk;
  detail::block_write_model(blk, hdr, ml, models, model_size, model_offset, res->model_bytes, blockIdx.x, dst);
}

__global__ void __launch_bounds__(kThreadsPerBlock)
    write_kernel(const EncodeLayout el, const KVView src, const EncodeStaging stg, const uint64_t* chunk_offset,
                 uint8_t* dst, const DeviceResult* res) {
  const uint64_t i = uint64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (res->errors || i >= uint64_t(el.num_chunks) * el.units()) return;
  detail::DeviceWarp w{threadIdx.x % 32};
  detail::warp_write_unit(w, el, src, stg, chunk_offset, uint32_t(i / el.units()), uint32_t(i % el.units()), dst);
}

// Threads over (chunk, checksum segment): blockIdx.x is the chunk (chunks can outnumber the
// 65535 blocks of grid y); grid y strides over the segments, whose worst-case count
// (max_segments) can exceed what grid y holds even though real chunks stay below 4 GiB.
__global__ void __launch_bounds__(kThreadsPerBlock)
    chunk_digest_kernel(const uint64_t* chunk_offset, const uint32_t* chunk_size, uint64_t max_segments,
                        const uint8_t* dst, uint64_t* digests, const DeviceResult* res) {
  if (res->errors) return;
  for (uint64_t s = uint64_t(blockIdx.y) * blockDim.x + threadIdx.x; s < max_segments;
       s += uint64_t(gridDim.y) * blockDim.x)
    detail::chunk_segment_digest(chunk_offset, chunk_size, blockIdx.x, s, max_segments, dst, digests);
}

__global__ void __launch_bounds__(kThreadsPerBlock)
    chunks_kernel(uint32_t num_chunks, const uint64_t* chunk_offset, const uint32_t* chunk_size,
                  const uint64_t* digests, uint64_t max_segments, uint8_t* dst, const DeviceResult* res) {
  const uint32_t k = blockIdx.x * blockDim.x + threadIdx.x;
  if (!res->errors && k < num_chunks)
    detail::finish_chunk(res->model_bytes, chunk_offset, chunk_size, digests, max_segments, res->frame_bytes, k, dst);
}

__global__ void __launch_bounds__(kThreadsPerBlock)
    head_digest_kernel(const uint8_t* dst, uint64_t* digests, const DeviceResult* res) {
  const uint64_t s = uint64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (!res->errors) detail::head_segment_digest(res->head_bytes, s, dst, digests);
}

__global__ void head_kernel(const uint64_t* digests, uint8_t* dst, const DeviceResult* res) {
  if (!res->errors) detail::finish_head(res->head_bytes, digests, dst);
}

uint32_t blocks_for(uint64_t n, uint32_t per_block) { return uint32_t((n + per_block - 1) / per_block); }

// Regions of the workspace, each 256-byte aligned.
struct Workspace {
  size_t rel = 0, sums = 0, grids = 0, lane = 0, hist = 0, feature = 0, codes = 0, table_base = 0, models = 0,
         model_size = 0, raw_planes = 0, model_offset = 0, model_scratch = 0, stages = 0, words = 0, escapes = 0, chunk_offset = 0,
         chunk_size = 0, digests = 0, result = 0, bytes = 0;
  uint64_t max_chunk_segments = 0;  // digests per chunk (checksum.hpp)
  uint64_t max_head_segments = 0;   // digests of the largest head
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
  const ModelLayout ml = detail::model_layout(el);
  w.models = place(ml.model_stride * el.units());
  w.model_size = place(sizeof(uint32_t) * el.units());
  w.raw_planes = place(sizeof(uint32_t) * el.units());
  w.model_offset = place(sizeof(uint64_t) * el.units());
  w.model_scratch = place(ml.scratch_stride * el.units());
  w.stages = place(sizeof(UnitStage) * unit_jobs);
  w.words = place(sizeof(uint16_t) * el.planes * elements);
  w.escapes = place(el.lossless ? 0 : uint64_t(el.elem_size) * elements);
  w.chunk_offset = place(sizeof(uint64_t) * el.num_chunks);
  w.chunk_size = place(sizeof(uint32_t) * el.num_chunks);
  // Chunk digests, then (reusing the region) the head's.
  w.max_chunk_segments = detail::max_chunk_segments(el);
  w.max_head_segments = detail::checksum_segments(detail::max_head_bytes(el, o));
  w.digests = place(sizeof(uint64_t) * std::max<uint64_t>(w.max_chunk_segments * el.num_chunks, w.max_head_segments));
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
  ModelLayout ml;
  HeaderTemplate header;
  Workspace ws;
  uint8_t* ws_dev = nullptr;
  uint32_t model_smem = 0;  // dynamic shared memory of model_kernel: the group sums, or 0 (global)
  PinnedBuffer result;      // the device result, on the host

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
  impl->ml = detail::model_layout(el);
  impl->header = detail::header_template(el, options);
  impl->ws = workspace_layout(el, options);
  if (workspace_bytes < impl->ws.bytes)
    return BufferTooSmall("encoder workspace needs " + std::to_string(impl->ws.bytes) + " bytes, got " +
                          std::to_string(workspace_bytes));
  impl->ws_dev = static_cast<uint8_t*>(workspace_dev);
  KVCODEC_ASSIGN_OR_RETURN(impl->result, PinnedBuffer::allocate(sizeof(DeviceResult)));
  // The model kernel keeps each unit's group sums (G * slots * bins * 8 bytes: up to 128 KiB) in
  // shared memory when the device allows that much per block (opt-in above 48 KiB: 227 KiB on
  // H100/H200), else in the unit's global scratch.
  int dev = 0, optin = 0;
  cudaFuncAttributes fa{};
  KVCODEC_RETURN_IF_ERROR(check_cuda(cudaGetDevice(&dev), "cudaGetDevice"));
  KVCODEC_RETURN_IF_ERROR(
      check_cuda(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), "device attributes"));
  KVCODEC_RETURN_IF_ERROR(check_cuda(cudaFuncGetAttributes(&fa, model_kernel), "model kernel attributes"));
  const uint64_t smem_room = uint64_t(optin) > fa.sharedSizeBytes ? uint64_t(optin) - fa.sharedSizeBytes : 0;
  if (impl->ml.sums_bytes <= smem_room) {
    impl->model_smem = uint32_t(impl->ml.sums_bytes);
    // The same value for every Encoder, so one cannot lower another's limit.
    KVCODEC_RETURN_IF_ERROR(check_cuda(
        cudaFuncSetAttribute(model_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem_room)),
        "model kernel shared memory"));
  }
  // Per-layer relative steps: fixed by the options, uploaded once (pageable source: staged by
  // the runtime before this call returns).
  const std::vector<double> rel = detail::layer_rel_steps(el, options);
  KVCODEC_RETURN_IF_ERROR(check_cuda(
      cudaMemcpyAsync(impl->at<double>(impl->ws.rel), rel.data(), sizeof(double) * rel.size(), cudaMemcpyHostToDevice,
                      stream),
      "uploading layer steps"));
  return Encoder(std::move(impl));
}

Status Encoder::encode_async(const KVView& src_dev, uint8_t* dst_dev, size_t dst_capacity, cudaStream_t stream,
                             const PhaseEvents* events) {
  Impl& m = *impl_;
  const EncodeLayout& el = m.el;
  KVCODEC_RETURN_IF_ERROR(check_device_view(DType(el.dtype), KVShape{el.layers, el.tokens, el.kv_heads, el.head_dim},
                                            src_dev));
  if (!dst_dev) return InvalidArgument("null destination");
  if (dst_capacity < detail::head_bytes_for(el, 0))
    return BufferTooSmall("a frame of this shape needs more than " + std::to_string(dst_capacity) + " bytes");
  const Workspace& ws = m.ws;
  DeviceResult* res = m.result_dev();
  KVCODEC_RETURN_IF_ERROR(check_cuda(cudaMemsetAsync(res, 0, sizeof(DeviceResult), stream), "clearing"));
  KVCODEC_RETURN_IF_ERROR(check_cuda(
      cudaMemsetAsync(m.ws_dev + ws.hist, 0, sizeof(uint32_t) * el.units() * el.hist_per_unit(), stream), "clearing"));

  // Phase 1: statistics, grids, histograms.
  const dim3 per_unit_channels(blocks_for(el.channels, kThreadsPerBlock), el.units());
  stats_kernel<<<per_unit_channels, kThreadsPerBlock, 0, stream>>>(el, src_dev, m.at<ChannelSums>(ws.sums), res);
  grids_kernel<<<el.units(), kThreadsPerBlock, 0, stream>>>(el, m.at<double>(ws.rel), m.at<ChannelSums>(ws.sums),
                                                            m.at<ChannelGrid>(ws.grids), m.at<LaneGrid>(ws.lane));
  histogram_kernel<<<per_unit_channels, kThreadsPerBlock, 0, stream>>>(
      el, src_dev, m.at<LaneGrid>(ws.lane), m.at<uint32_t>(ws.hist), m.at<uint64_t>(ws.feature), res);
  if (events && events->analyzed) cudaEventRecord(events->analyzed, stream);

  // Tables: one block per unit.
  const ModelArgs args{m.at<uint32_t>(ws.hist),      m.at<uint64_t>(ws.feature),   m.at<ChannelGrid>(ws.grids),
                       m.at<uint32_t>(ws.codes),     m.at<uint16_t>(ws.table_base), m.at<uint8_t>(ws.models),
                       m.at<uint32_t>(ws.model_size), m.at<uint8_t>(ws.model_scratch), m.at<uint32_t>(ws.raw_planes)};
  model_kernel<<<el.units(), detail::kBlockThreads, m.model_smem, stream>>>(el, m.ml, args, m.model_smem, false,
                                                                             res);
  if (!el.lossless && el.group_tokens > 1) {  // deltas of escaped anchors (recount_deltas_channel)
    recount_kernel<<<per_unit_channels, kThreadsPerBlock, 0, stream>>>(
        el, src_dev, m.at<LaneGrid>(ws.lane), args.codes, args.table_base, m.at<uint32_t>(ws.hist), res);
    model_kernel<<<el.units(), detail::kBlockThreads, m.model_smem, stream>>>(el, m.ml, args, m.model_smem, true,
                                                                               res);
  }
  if (events && events->tabled) cudaEventRecord(events->tabled, stream);

  // Phase 2: lanes, placement, frame.
  const EncodeTables tab{m.at<uint32_t>(ws.codes), m.at<uint16_t>(ws.table_base), m.at<LaneGrid>(ws.lane),
                         m.at<uint32_t>(ws.raw_planes)};
  const EncodeStaging stg{m.at<uint16_t>(ws.words), m.at<uint8_t>(ws.escapes), m.at<UnitStage>(ws.stages)};
  const uint32_t unit_blocks = blocks_for(uint64_t(el.num_chunks) * el.units(), kWarpsPerBlock);
  auto* offsets = m.at<uint64_t>(ws.chunk_offset);
  auto* sizes = m.at<uint32_t>(ws.chunk_size);
  auto* model_offset = m.at<uint64_t>(ws.model_offset);
  units_kernel<<<unit_blocks, kThreadsPerBlock, 0, stream>>>(el, src_dev, tab, stg, res);
  assign_kernel<<<1, 1, 0, stream>>>(el, stg.stages, args.model_size, model_offset, dst_capacity, offsets, sizes, res);
  model_copy_kernel<<<el.units(), detail::kBlockThreads, 0, stream>>>(m.header, m.ml, args.models, args.model_size,
                                                                       model_offset, dst_dev, res);
  write_kernel<<<unit_blocks, kThreadsPerBlock, 0, stream>>>(el, src_dev, stg, offsets, dst_dev, res);
  auto* digests = m.at<uint64_t>(ws.digests);
  const uint32_t segment_blocks = std::min<uint32_t>(blocks_for(ws.max_chunk_segments, kThreadsPerBlock), 65535);
  chunk_digest_kernel<<<dim3(el.num_chunks, segment_blocks), kThreadsPerBlock, 0,
                        stream>>>(offsets, sizes, ws.max_chunk_segments, dst_dev, digests, res);
  chunks_kernel<<<blocks_for(el.num_chunks, kThreadsPerBlock), kThreadsPerBlock, 0, stream>>>(
      el.num_chunks, offsets, sizes, digests, ws.max_chunk_segments, dst_dev, res);
  head_digest_kernel<<<blocks_for(ws.max_head_segments, kThreadsPerBlock), kThreadsPerBlock, 0, stream>>>(dst_dev,
                                                                                                          digests, res);
  head_kernel<<<1, 1, 0, stream>>>(digests, dst_dev, res);
  KVCODEC_RETURN_IF_ERROR(check_cuda(cudaGetLastError(), "launching the encode kernels"));
  return check_cuda(cudaMemcpyAsync(m.result.get(), res, sizeof(DeviceResult), cudaMemcpyDeviceToHost, stream),
                    "reading the frame size");
}

StatusOr<size_t> Encoder::synchronize(cudaStream_t stream) {
  Impl& m = *impl_;
  KVCODEC_RETURN_IF_ERROR(check_cuda(cudaStreamSynchronize(stream), "encode"));
  const DeviceResult& r = m.result_host();
  if (r.errors & kErrBadSource) return InvalidArgument("source view: block table entry outside [0, num_blocks)");
  if (r.errors & kErrTable) return Internal("GPU encoder: a probability table could not be normalised");
  if (r.errors & kErrChunkTooLarge) return ResourceExhausted("chunk larger than 4 GiB: use smaller chunk_tokens");
  if (r.errors & kErrTooSmall)
    return BufferTooSmall("frame needs " + std::to_string(r.frame_bytes) + " bytes, more than the destination's");
  return size_t(r.frame_bytes);
}

StatusOr<size_t> encode_frame(const KVView& src_dev, const EncodeOptions& options, uint8_t* dst_dev,
                              size_t dst_capacity, cudaStream_t stream) {
  KVCODEC_ASSIGN_OR_RETURN(size_t bytes, Encoder::workspace_size(src_dev.shape, src_dev.dtype, options));
  KVCODEC_ASSIGN_OR_RETURN(DeviceBuffer ws, DeviceBuffer::allocate(bytes));
  KVCODEC_ASSIGN_OR_RETURN(Encoder enc, Encoder::create(src_dev.shape, src_dev.dtype, options, ws.get(), bytes, stream));
  KVCODEC_RETURN_IF_ERROR(enc.encode_async(src_dev, dst_dev, dst_capacity, stream));
  return enc.synchronize(stream);
}

}  // namespace kvcodec::cuda
