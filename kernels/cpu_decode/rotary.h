// RoPE on the CPU for the fused layer (`rotate`: its queries and keys) and for the document cache, whose
// position-free keys are rotated to the positions they take in a new prompt as they are written into the
// paged cache (`fill_rotated`: every layer of a chunk in one call, where torch needs ~8 ops a layer).
#pragma once

#include <ATen/Parallel.h>
#include <torch/types.h>

#include <cstdint>
#include <vector>

namespace appliance {

// Rotate the first `heads` heads of each row (neox layout: halves), in place. cos/sin: [rows, dim].
inline void rotate(float* x, const float* cos, const float* sin, int64_t rows, int64_t row_stride, int64_t heads,
            int64_t dim) {
  const int64_t half = dim / 2;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t h = 0; h < heads; ++h) {
      float* xh = x + r * row_stride + h * dim;
      const float* c = cos + r * dim;
      const float* s = sin + r * dim;
      for (int64_t i = 0; i < half; ++i) {
        const float a = xh[i], b = xh[i + half];
        xh[i] = a * c[i] - b * s[i];
        xh[i + half] = b * c[i + half] + a * s[i + half];
      }
    }
}

// Write a chunk's KV at `slots` of every layer's paged cache: keys rotated to their positions, values as they
// are. k_caches/v_caches: per layer [num_blocks, block_size, kv_heads, dim]; k_pre/v: [layers, n, kv_heads, dim]
// in the caches' dtype (keys before RoPE); slots: [n] int64; cos/sin: [n, dim] float32 of the target positions.
template <typename T>
void fill_layers(const std::vector<torch::Tensor>& k_caches, const std::vector<torch::Tensor>& v_caches,
                 const T* k_pre, const T* v, const int64_t* slots, const float* cos, const float* sin, int64_t n,
                 int64_t kv_heads, int64_t dim) {
  const int64_t kv_width = kv_heads * dim, layers = static_cast<int64_t>(k_caches.size());
  at::parallel_for(0, layers, 1, [&](int64_t first, int64_t last) {
    std::vector<float> row(kv_width);
    for (int64_t l = first; l < last; ++l) {
      T* kc = k_caches[l].data_ptr<T>();
      T* vc = v_caches[l].data_ptr<T>();
      for (int64_t t = 0; t < n; ++t) {
        const int64_t src = (l * n + t) * kv_width, dst = slots[t] * kv_width;
        for (int64_t i = 0; i < kv_width; ++i) row[i] = static_cast<float>(k_pre[src + i]);
        rotate(row.data(), cos + t * dim, sin + t * dim, 1, kv_width, kv_heads, dim);
        for (int64_t i = 0; i < kv_width; ++i) {
          kc[dst + i] = static_cast<T>(row[i]);
          vc[dst + i] = v[src + i];
        }
      }
    }
  });
}

inline void fill_rotated(const std::vector<torch::Tensor>& k_caches, const std::vector<torch::Tensor>& v_caches,
                  const torch::Tensor& k_pre, const torch::Tensor& v, const torch::Tensor& slots,
                  const torch::Tensor& cos, const torch::Tensor& sin) {
  TORCH_CHECK(!k_caches.empty() && k_caches.size() == v_caches.size() &&
                  k_pre.size(0) == static_cast<int64_t>(k_caches.size()), "one cache pair per layer of the chunk");
  TORCH_CHECK(k_pre.is_contiguous() && v.is_contiguous() && k_pre.sizes() == v.sizes(), "k_pre, v: [L, n, KVH, D]");
  TORCH_CHECK(cos.scalar_type() == torch::kFloat32 && cos.is_contiguous() && sin.is_contiguous() &&
                  slots.scalar_type() == torch::kInt64 && slots.is_contiguous(), "cos/sin float32, slots int64");
  const int64_t n = k_pre.size(1), kv_heads = k_pre.size(2), dim = k_pre.size(3);
  for (size_t l = 0; l < k_caches.size(); ++l)
    TORCH_CHECK(k_caches[l].is_contiguous() && v_caches[l].is_contiguous() &&
                    k_caches[l].scalar_type() == k_pre.scalar_type() && k_caches[l].size(2) == kv_heads &&
                    k_caches[l].size(3) == dim, "caches: contiguous, the chunk's dtype and head shape");
  if (k_pre.scalar_type() == torch::kBFloat16) {
    fill_layers(k_caches, v_caches, k_pre.data_ptr<at::BFloat16>(), v.data_ptr<at::BFloat16>(),
                slots.data_ptr<int64_t>(), cos.data_ptr<float>(), sin.data_ptr<float>(), n, kv_heads, dim);
  } else {
    TORCH_CHECK(k_pre.scalar_type() == torch::kFloat32, "KV: float32 or bfloat16");
    fill_layers(k_caches, v_caches, k_pre.data_ptr<float>(), v.data_ptr<float>(), slots.data_ptr<int64_t>(),
                cos.data_ptr<float>(), sin.data_ptr<float>(), n, kv_heads, dim);
  }
}

}  // namespace appliance
