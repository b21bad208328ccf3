// kvcodec::cuda::bench: the figures of `kvcodec bench --backend cuda` (docs/results/gpu.md).
// Every number is measured in the same run on the same stream with CUDA events, so the encode
// and decode throughputs sit next to their ceilings: a device-to-device copy of the same bytes
// and the host-to-device transfers of the raw and the compressed bytes.
#include <algorithm>
#include <cstring>
#include <vector>

#include "cuda_util.hpp"
#include "kvcodec/codec.hpp"
#include "kvcodec/cuda.hpp"

namespace kvcodec::cuda {
namespace {

// Times `op` (which enqueues work on `stream`) `iterations` times; returns the median in ms.
template <typename Op>
StatusOr<double> time_median_ms(cudaStream_t stream, int iterations, Op&& op) {
  cudaEvent_t a, b;
  KVCODEC_RETURN_IF_ERROR(check_cuda(cudaEventCreate(&a), "cudaEventCreate"));
  KVCODEC_RETURN_IF_ERROR(check_cuda(cudaEventCreate(&b), "cudaEventCreate"));
  std::vector<float> ms;
  Status st;
  for (int i = 0; i < iterations && st.ok(); ++i) {
    cudaEventRecord(a, stream);
    st = op();
    cudaEventRecord(b, stream);
    if (st.ok()) st = check_cuda(cudaEventSynchronize(b), "timed operation");
    float t = 0;
    if (st.ok()) st = check_cuda(cudaEventElapsedTime(&t, a, b), "cudaEventElapsedTime");
    ms.push_back(t);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  KVCODEC_RETURN_IF_ERROR(st);
  std::nth_element(ms.begin(), ms.begin() + ms.size() / 2, ms.end());
  return double(ms[ms.size() / 2]);
}

double gbps(uint64_t bytes, double ms) { return ms > 0 ? double(bytes) / (ms * 1e6) : 0.0; }

double median(std::vector<double> v) {
  std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
  return v[v.size() / 2];
}

// The elements of `v` in the contiguous layout [L, 2, T, H, D].
std::vector<uint8_t> gather_contiguous(const KVView& v) {
  const size_t es = dtype_size(v.dtype);
  std::vector<uint8_t> out(v.shape.elements() * es);
  uint8_t* o = out.data();
  for (uint32_t l = 0; l < v.shape.layers; ++l)
    for (uint32_t kv = 0; kv < 2; ++kv)
      for (uint32_t t = 0; t < v.shape.tokens; ++t)
        for (uint32_t h = 0; h < v.shape.kv_heads; ++h)
          for (uint32_t d = 0; d < v.shape.head_dim; ++d, o += es) std::memcpy(o, v.element(l, kv, t, h, d), es);
  return out;
}

// Times whole encodes of src_dev into dst_dev, and each device phase (analysis, tables, lanes
// and frame) with the events encode_async records between them. Checks the last frame against
// `expected` (kInternal if it differs).
Status time_encode(Encoder& enc, const KVView& src_dev, uint8_t* dst_dev, size_t capacity,
                   std::span<const uint8_t> expected, cudaStream_t stream, int iterations, BenchResult& r) {
  cudaEvent_t ev[4];
  for (auto& e : ev) KVCODEC_RETURN_IF_ERROR(check_cuda(cudaEventCreate(&e), "cudaEventCreate"));
  struct Guard {
    cudaEvent_t* ev;
    ~Guard() {
      for (int i = 0; i < 4; ++i) cudaEventDestroy(ev[i]);
    }
  } guard{ev};
  const Encoder::PhaseEvents phases{ev[1], ev[2]};
  std::vector<double> total, analyze, tables, lanes;
  size_t frame_bytes = 0;
  for (int i = 0; i < iterations; ++i) {
    cudaEventRecord(ev[0], stream);
    KVCODEC_RETURN_IF_ERROR(enc.encode_async(src_dev, dst_dev, capacity, stream, &phases));
    cudaEventRecord(ev[3], stream);
    KVCODEC_ASSIGN_OR_RETURN(frame_bytes, enc.synchronize(stream));
    float ms[4];
    for (int p = 0; p < 3; ++p)
      KVCODEC_RETURN_IF_ERROR(check_cuda(cudaEventElapsedTime(&ms[p], ev[p], ev[p + 1]), "cudaEventElapsedTime"));
    KVCODEC_RETURN_IF_ERROR(check_cuda(cudaEventElapsedTime(&ms[3], ev[0], ev[3]), "cudaEventElapsedTime"));
    analyze.push_back(ms[0]);
    tables.push_back(ms[1]);
    lanes.push_back(ms[2]);
    total.push_back(ms[3]);
  }
  std::vector<uint8_t> frame(frame_bytes);
  KVCODEC_RETURN_IF_ERROR(check_cuda(cudaMemcpy(frame.data(), dst_dev, frame_bytes, cudaMemcpyDeviceToHost), "D2H"));
  if (!std::equal(frame.begin(), frame.end(), expected.begin(), expected.end()))
    return Internal("GPU frame differs from the CPU encoder's");
  r.encode_ms = median(total);
  r.encode_analyze_ms = median(analyze);
  r.encode_tables_ms = median(tables);
  r.encode_lanes_ms = median(lanes);
  r.encode_gbps = gbps(r.raw_bytes, r.encode_ms);
  return Status::Ok();
}

}  // namespace

StatusOr<BenchResult> bench(const KVView& src, const EncodeOptions& options, int iterations) {
  KVCODEC_RETURN_IF_ERROR(device_status());
  if (iterations < 1) return InvalidArgument("iterations must be at least 1");
  KVCODEC_RETURN_IF_ERROR(validate_view(src));
  BenchResult r;
  r.iterations = iterations;
  int dev = 0;
  cudaDeviceProp prop{};
  KVCODEC_RETURN_IF_ERROR(check_cuda(cudaGetDevice(&dev), "cudaGetDevice"));
  KVCODEC_RETURN_IF_ERROR(check_cuda(cudaGetDeviceProperties(&prop, dev), "cudaGetDeviceProperties"));
  r.device = prop.name;

  // Encode on the CPU and decode there too: the references the GPU outputs must equal.
  std::vector<uint8_t> frame(max_encoded_size(src.shape, src.dtype, options));
  if (frame.empty()) return InvalidArgument("invalid shape, dtype or options");
  KVCODEC_ASSIGN_OR_RETURN(size_t frame_bytes, encode_into(src, options, frame));
  frame.resize(frame_bytes);
  r.frame_bytes = frame_bytes;
  r.raw_bytes = src.shape.elements() * dtype_size(src.dtype);
  std::vector<uint8_t> cpu_out(r.raw_bytes);
  DecodeOptions dopt;
  dopt.threads = 0;
  KVCODEC_RETURN_IF_ERROR(decode_into(frame, contiguous_view(cpu_out.data(), src.dtype, src.shape), dopt));

  cudaStream_t stream;
  KVCODEC_RETURN_IF_ERROR(check_cuda(cudaStreamCreate(&stream), "cudaStreamCreate"));
  struct StreamGuard {
    cudaStream_t s;
    ~StreamGuard() { cudaStreamDestroy(s); }
  } guard{stream};

  KVCODEC_ASSIGN_OR_RETURN(PinnedBuffer raw_host, PinnedBuffer::allocate(r.raw_bytes));
  KVCODEC_ASSIGN_OR_RETURN(PinnedBuffer frame_host, PinnedBuffer::allocate(frame_bytes));
  std::memcpy(raw_host.get(), cpu_out.data(), r.raw_bytes);  // copy source: any raw bytes of this size
  std::memcpy(frame_host.get(), frame.data(), frame_bytes);
  KVCODEC_ASSIGN_OR_RETURN(DeviceBuffer raw_dev, DeviceBuffer::allocate(r.raw_bytes));
  KVCODEC_ASSIGN_OR_RETURN(DeviceBuffer out_dev, DeviceBuffer::allocate(r.raw_bytes));
  KVCODEC_ASSIGN_OR_RETURN(DeviceBuffer frame_dev, DeviceBuffer::allocate(frame_bytes));

  const std::span<const uint8_t> head(frame.data(), frame.size());
  KVCODEC_ASSIGN_OR_RETURN(FrameInfo info, read_frame_info(head));
  const uint32_t n = uint32_t(info.chunks.size());
  KVCODEC_ASSIGN_OR_RETURN(size_t ws_bytes, Decoder::workspace_size(head, n));
  KVCODEC_ASSIGN_OR_RETURN(DeviceBuffer ws, DeviceBuffer::allocate(ws_bytes));
  KVCODEC_ASSIGN_OR_RETURN(Decoder dec, Decoder::create(head, ws.get(), ws_bytes, n, stream));
  std::vector<DeviceChunk> chunks(n);
  for (uint32_t k = 0; k < n; ++k) chunks[k] = {k, frame_dev.get() + info.chunks[k].offset};
  const KVView dst = contiguous_view(out_dev.get(), src.dtype, src.shape);

  KVCODEC_ASSIGN_OR_RETURN(r.h2d_raw_ms, time_median_ms(stream, iterations, [&] {
    return check_cuda(cudaMemcpyAsync(raw_dev.get(), raw_host.get(), r.raw_bytes, cudaMemcpyHostToDevice, stream), "H2D");
  }));
  KVCODEC_ASSIGN_OR_RETURN(r.h2d_frame_ms, time_median_ms(stream, iterations, [&] {
    return check_cuda(cudaMemcpyAsync(frame_dev.get(), frame_host.get(), frame_bytes, cudaMemcpyHostToDevice, stream),
                      "H2D");
  }));
  KVCODEC_ASSIGN_OR_RETURN(r.copy_ms, time_median_ms(stream, iterations, [&] {
    return check_cuda(cudaMemcpyAsync(out_dev.get(), raw_dev.get(), r.raw_bytes, cudaMemcpyDeviceToDevice, stream), "D2D");
  }));
  KVCODEC_RETURN_IF_ERROR(check_cuda(cudaMemsetAsync(out_dev.get(), 0, r.raw_bytes, stream), "memset"));
  KVCODEC_RETURN_IF_ERROR(dec.decode_async(chunks, dst, stream));  // warm-up, then checked
  KVCODEC_RETURN_IF_ERROR(dec.synchronize(stream));
  std::vector<uint8_t> gpu_out(r.raw_bytes);
  KVCODEC_RETURN_IF_ERROR(check_cuda(cudaMemcpy(gpu_out.data(), out_dev.get(), r.raw_bytes, cudaMemcpyDeviceToHost), "D2H"));
  if (gpu_out != cpu_out) return Internal("GPU decode differs from the CPU decoder");
  KVCODEC_ASSIGN_OR_RETURN(r.decode_ms, time_median_ms(stream, iterations, [&] { return dec.decode_async(chunks, dst, stream); }));
  KVCODEC_RETURN_IF_ERROR(dec.synchronize(stream));
  // The same without device checksums: what verification costs.
  KVCODEC_ASSIGN_OR_RETURN(DeviceBuffer ws_unverified, DeviceBuffer::allocate(ws_bytes));
  KVCODEC_ASSIGN_OR_RETURN(Decoder unverified,
                           Decoder::create(head, ws_unverified.get(), ws_bytes, n, stream, /*verify_checksums=*/false));
  KVCODEC_ASSIGN_OR_RETURN(r.decode_unverified_ms, time_median_ms(stream, iterations, [&] {
    return unverified.decode_async(chunks, dst, stream);
  }));
  KVCODEC_RETURN_IF_ERROR(unverified.synchronize(stream));

  // Encoding the source, uploaded in the contiguous layout, into a second frame buffer.
  const std::vector<uint8_t> src_raw = gather_contiguous(src);
  KVCODEC_RETURN_IF_ERROR(
      check_cuda(cudaMemcpy(raw_dev.get(), src_raw.data(), r.raw_bytes, cudaMemcpyHostToDevice), "uploading the source"));
  const size_t capacity = max_encoded_size(src.shape, src.dtype, options);
  KVCODEC_ASSIGN_OR_RETURN(DeviceBuffer enc_out, DeviceBuffer::allocate(capacity));
  KVCODEC_ASSIGN_OR_RETURN(size_t enc_ws_bytes, Encoder::workspace_size(src.shape, src.dtype, options));
  KVCODEC_ASSIGN_OR_RETURN(DeviceBuffer enc_ws, DeviceBuffer::allocate(enc_ws_bytes));
  KVCODEC_ASSIGN_OR_RETURN(Encoder enc,
                           Encoder::create(src.shape, src.dtype, options, enc_ws.get(), enc_ws_bytes, stream));
  KVCODEC_RETURN_IF_ERROR(time_encode(enc, contiguous_view(raw_dev.get(), src.dtype, src.shape), enc_out.get(),
                                      capacity, frame, stream, iterations, r));

  r.decode_gbps = gbps(r.raw_bytes, r.decode_ms);
  r.decode_unverified_gbps = gbps(r.raw_bytes, r.decode_unverified_ms);
  r.copy_gbps = gbps(r.raw_bytes, r.copy_ms);
  r.h2d_raw_gbps = gbps(r.raw_bytes, r.h2d_raw_ms);
  r.h2d_frame_gbps = gbps(r.raw_bytes, r.h2d_frame_ms);
  return r;
}

}  // namespace kvcodec::cuda
