// Marks per-value functions compiled for both the CPU and (under nvcc) the GPU, so that the two
// backends share one definition of every bit-exact step.
#pragma once

#if defined(__CUDACC__)
#define KVCODEC_HD __host__ __device__ __forceinline__
#else
#define KVCODEC_HD inline
#endif
