// Shared by the CPU and CUDA kernels: argument checks and the sizes derived from them.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <array>
#include <cstdint>
#include <string_view>

namespace lowres {

enum class Pool { Max, Avg };

// Sizes of one subkernel_tokenize call (SPEC §1).
struct SubkernelGeometry {
  int64_t batch, channels, height, width;  // x: [B, C, H, W]
  int64_t dim;                             // D: output channels of the patch kernel
  int64_t patch;                           // q: kernel size and stride of the frozen patch conv
  int64_t sub;                             // u: sub-kernel size and stride
  int64_t step;                            // offset between neighbouring sub-kernels
  int64_t per_side;                        // n, with T = n * n sub-kernels
  int64_t ratio;                           // r = q / u: pooling window on the fine map
  int64_t grid_h, grid_w;                  // H / q, W / q
  int64_t fine_w;                          // W / u
  Pool pool;
  double blend;
};

// Validates the inputs (same rules and wording as lowres_kernels/_validation.py).
SubkernelGeometry check_subkernel_tokenize(const at::Tensor& x, const at::Tensor& weight,
                                           const at::Tensor& logits, const std::optional<at::Tensor>& bias,
                                           int64_t sub, int64_t step, std::string_view pool, double blend);

// Validates the inputs of domain_attention and returns the grid size h.
int64_t check_domain_attention(const at::Tensor& v, const at::Tensor& maps, const at::Tensor& mix_logits,
                               int64_t num_prefix_tokens);

// A zero-element tensor standing for a gradient the caller did not ask for.
at::Tensor not_requested(const at::Tensor& like);

}  // namespace lowres
