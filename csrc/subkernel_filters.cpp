// The device-independent part of subkernel_tokenize (docs/ops.md), shared by the CPU and CUDA kernels:
// which kernels a call multiplies the image with, and how their gradients map back to the
// weight and the logits. It is all small tensor algebra on the kernel (D x C x q x q), never on
// the image; the per-device files implement only the image-sized GEMMs around it.
#include "lowres.h"

#include <ATen/ATen.h>

namespace lowres {
namespace {

// E[y, i, a] = 1 where kernel row y = a * step + i, i.e. sub-kernel row i of the a-th sub-kernel
// along one axis reads row y of the patch filter (rows past the kernel edge read nothing: the
// zero padding of the cut-off sub-kernels).
at::Tensor placement(const SubkernelGeometry& g, const at::TensorOptions& options) {
  const auto index = options.dtype(at::kLong);
  const at::Tensor y = at::arange(g.patch, index).view({g.patch, 1, 1});
  const at::Tensor i = at::arange(g.sub, index).view({1, g.sub, 1});
  const at::Tensor a = at::arange(g.per_side, index).view({1, 1, g.per_side});
  return (y == a * g.step + i).to(options.dtype());
}

}  // namespace

SubkernelFilters make_subkernel_filters(const SubkernelGeometry& g, const at::Tensor& weight,
                                        const at::Tensor& logits, at::ScalarType acc, bool image_filters) {
  const int64_t q = g.patch, u = g.sub, n = g.per_side, r = g.ratio;
  SubkernelFilters k;
  k.weight = weight.to(acc).contiguous();
  k.alpha = at::softmax(logits.to(acc), 0);
  k.placement = placement(g, k.weight.options());
  // The combination is linear in the kernel: K_eff = K [DC, q q] @ M [q q, u u] with
  // M[(y, x), (i, j)] = sum_{a,b} E[y, i, a] alpha[a, b] E[x, j, b]; one GEMM at BLAS speed.
  k.mixing = at::einsum("yia,ab,xjb->yxij", {k.placement, k.alpha.view({n, n}), k.placement}).reshape({q * q, u * u});
  if (!image_filters) return k;
  const at::Tensor weight_flat = k.weight.view({g.dim, -1});
  at::Tensor combined;
  if (g.blend != 0.0) combined = at::mm(k.weight.view({g.dim * g.channels, q * q}), k.mixing).view({g.dim, -1});
  if (g.pool == Pool::Max) {
    k.fine = combined;
    if (g.blend != 1.0) k.patch = weight_flat * (1.0 - g.blend);
  } else if (!combined.defined()) {
    k.patch = weight_flat.clone();  // blend = 0: the plain patch embedding
  } else {
    // avg_pool(conv_u(x, K_eff)) = conv_q(x, K_eff tiled r x r / r^2): the whole op is one q x q filter.
    k.patch = combined.view({g.dim, g.channels, 1, u, 1, u})
                  .expand({g.dim, g.channels, r, u, r, u})
                  .reshape({g.dim, g.channels * q * q}) *
              (g.blend / static_cast<double>(r * r));
    if (g.blend != 1.0) k.patch.add_(weight_flat, 1.0 - g.blend);
  }
  return k;
}

std::pair<at::Tensor, at::Tensor> subkernel_filter_grads(const SubkernelGeometry& g, const SubkernelFilters& k,
                                                         const at::Tensor& fine_grad, const at::Tensor& patch_grad,
                                                         bool want_weight, bool want_logits) {
  const int64_t q = g.patch, u = g.sub, r = g.ratio, C = g.channels, D = g.dim;
  // dL/dK_eff, and the part of dL/dK that bypasses the sub-kernels.
  at::Tensor combined_grad;
  if (g.pool == Pool::Max) {
    combined_grad = fine_grad;
  } else if (g.blend != 0.0) {
    // patch_grad is dL/d(folded q x q filter): sum its r x r blocks of u x u (slice adds; a
    // reduction over the two strided block dimensions is several times slower).
    const at::Tensor blocks = patch_grad.view({D * C, r, u, r, u});
    combined_grad = blocks.select(1, 0).select(2, 0).clone();
    for (int64_t di = 0; di < r; ++di)
      for (int64_t dj = 0; dj < r; ++dj)
        if (di + dj > 0) combined_grad.add_(blocks.select(1, di).select(2, dj));
    combined_grad = combined_grad.view({D, C * u * u}).mul_(g.blend / static_cast<double>(r * r));
  }
  at::Tensor grad_weight, grad_logits;
  if (want_weight) {
    grad_weight = at::zeros_like(k.weight);
    if (uses_patch_filter(g)) grad_weight.view({D, -1}).add_(patch_grad, 1.0 - g.blend);
    if (combined_grad.defined()) grad_weight.view({D * C, -1}).addmm_(combined_grad.reshape({D * C, -1}), k.mixing.t());
  }
  if (want_logits) {
    at::Tensor dalpha = at::zeros_like(k.alpha);
    if (combined_grad.defined()) {
      // dalpha[a, b] = <dK_eff, k_ab> = sum G[y, x, i, j] E[y, i, a] E[x, j, b] with G = K^T @ dK_eff.
      const at::Tensor G = at::mm(k.weight.view({D * C, q * q}).t(), combined_grad.reshape({D * C, u * u}));
      dalpha = at::einsum("yxij,yia,xjb->ab", {G.view({q, q, u, u}), k.placement, k.placement}).reshape({-1});
    }
    // Softmax Jacobian: dw = alpha * (dalpha - <alpha, dalpha>).
    grad_logits = k.alpha * (dalpha - (k.alpha * dalpha).sum());
  }
  return {grad_weight, grad_logits};
}

namespace {

at::Tensor bias_grad(const at::Tensor& grad, const at::Tensor& weight, bool wanted) {
  return wanted ? grad.sum({0, 2, 3}) : not_requested(weight);
}

}  // namespace

std::optional<SubkernelGrads> subkernel_grads_without_kernels(const at::Tensor& grad, const at::Tensor& x,
                                                              const at::Tensor& weight, const at::Tensor& logits,
                                                              std::array<bool, 4> output_mask) {
  const auto [want_x, want_weight, want_logits, want_bias] = output_mask;
  if (x.numel() != 0 && weight.numel() != 0 && (want_x || want_weight || want_logits)) return std::nullopt;
  return SubkernelGrads{want_x ? at::zeros_like(x) : not_requested(x),
                        want_weight ? at::zeros_like(weight) : not_requested(weight),
                        want_logits ? at::zeros_like(logits) : not_requested(logits),
                        bias_grad(grad, weight, want_bias)};
}

SubkernelGrads subkernel_grads_from_kernels(const SubkernelGeometry& g, const SubkernelFilters& k,
                                            const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight,
                                            const at::Tensor& logits, const at::Tensor& dx,
                                            const at::Tensor& fine_grad, const at::Tensor& patch_grad,
                                            std::array<bool, 4> output_mask) {
  const auto [want_x, want_weight, want_logits, want_bias] = output_mask;
  at::Tensor grad_x = want_x ? dx.to(x.scalar_type()) : not_requested(x);
  at::Tensor grad_weight = not_requested(weight), grad_logits = not_requested(logits);
  if (want_weight || want_logits) {
    const auto [weight_grad, logits_grad] =
        subkernel_filter_grads(g, k, fine_grad, patch_grad, want_weight, want_logits);
    if (want_weight) grad_weight = weight_grad.to(weight.scalar_type());
    if (want_logits) grad_logits = logits_grad.to(logits.scalar_type());
  }
  return {grad_x, grad_weight, grad_logits, bias_grad(grad, weight, want_bias)};
}

}  // namespace lowres
