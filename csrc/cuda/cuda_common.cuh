// Device helpers shared by the CUDA kernels of both ops.
#pragma once

#include <c10/util/Exception.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace lowres::cuda {

// exp in the accumulation type (float or double), at full accuracy.
__device__ __forceinline__ float exp_acc(float v) { return expf(v); }
__device__ __forceinline__ double exp_acc(double v) { return exp(v); }

// max that propagates NaN from either side, as torch.max and the CPU kernels do.
template <typename T>
__device__ __forceinline__ T max_nan(T a, T b) {
  return (a > b || a != a) ? a : b;
}

struct MaxNan {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const {
    return max_nan(a, b);
  }
};

struct Sum {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const {
    return a + b;
  }
};

constexpr int kWarpSize = 32;

// Reduces `value` over the whole block and returns the result to every thread. `identity` is
// what threads without data contribute. `scratch` holds one value per warp (32 entries); it may
// be reused by the next call. Every thread of the block must call it; blockDim.x must be a
// multiple of 32.
template <typename T, typename Op>
__device__ T block_reduce(T value, Op op, T identity, T* scratch) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int num_warps = blockDim.x / kWarpSize;
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    value = op(value, __shfl_down_sync(0xffffffffu, value, offset));
  }
  __syncthreads();  // the previous call may still be reading scratch
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  if (warp == 0) {
    value = lane < num_warps ? scratch[lane] : identity;
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
      value = op(value, __shfl_down_sync(0xffffffffu, value, offset));
    }
    if (lane == 0) scratch[0] = value;
  }
  __syncthreads();
  return scratch[0];
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The launch grid, or a clear error naming the op and the sizes where they exceed what one CUDA
// launch takes (x below 2^31, y and z at most 65535 blocks) instead of the launch failing with
// "invalid configuration argument".
inline dim3 launch_grid(const char* op, int64_t x, int64_t y, int64_t z = 1) {
  TORCH_CHECK(x <= 2147483647 && y <= 65535 && z <= 65535, op, ": these inputs need a grid of ", x, " x ", y, " x ",
              z, " blocks, more than one CUDA launch takes (at most 2^31 - 1 x 65535 x 65535)");
  return dim3(static_cast<unsigned>(x), static_cast<unsigned>(y), static_cast<unsigned>(z));
}

}  // namespace lowres::cuda
