// One Llama-family decoder layer for a decode step on the CPU, in one call: RMSNorm, the fused QKV
// projection, RoPE, the K/V write into the paged cache, grouped-query attention over each sequence's cached
// keys, the output projection, RMSNorm, the SwiGLU MLP and both residual adds.
//
// Why one call: a decode step of a small model is bound by per-op overhead on a CPU (a layer is ~40 torch ops
// or ~13 compiled ones, each paying dispatch and thread-team costs comparable to its work). Here a layer costs
// one Python call. The matmuls are `quant_matmul.h`'s, the vector helpers `simd.h`'s; everything is float32
// but the weights and the matmuls' activations.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "quant_matmul.h"
#include "simd.h"

namespace appliance {

void rms_norm(const float* x, const float* weight, float eps, int64_t rows, int64_t cols, float* out) {
  for (int64_t r = 0; r < rows; ++r) {
    float ss = 0.f;
    for (int64_t i = 0; i < cols; ++i) ss += x[r * cols + i] * x[r * cols + i];
    const float inv = 1.f / std::sqrt(ss / static_cast<float>(cols) + eps);
    for (int64_t i = 0; i < cols; ++i) out[r * cols + i] = x[r * cols + i] * inv * weight[i];
  }
}

// Attention of the `group` query heads qg [group, dim] sharing one KV head over `len` keys at `slots` (each
// key's row at k_cache + slots[t] * kv_width + offset), left unnormalized so that spans of one sequence's keys
// can be merged (`merge_spans`): per head j, stats[j] = {max score, sum of e^(score - max)} and
// out[j] = the values weighted by e^(score - max). scores: [group, len] scratch.
template <typename T>
void attend_heads(const float* qg, int64_t group, int64_t dim, const T* k_cache, const T* v_cache,
                  const int64_t* slots, int64_t len, int64_t kv_width, int64_t offset, float* scores, float* out,
                  float* stats) {
  const float scale = 1.f / std::sqrt(static_cast<float>(dim));
  for (int64_t t = 0; t < len; ++t) {
    const T* kt = k_cache + slots[t] * kv_width + offset;
    for (int64_t j = 0; j < group; ++j) scores[j * len + t] = dot(qg + j * dim, kt, dim) * scale;
  }
  std::fill(out, out + group * dim, 0.f);
  for (int64_t j = 0; j < group; ++j) {
    stats[2 * j + 1] = exp_shifted(scores + j * len, len, stats[2 * j]);
    for (int64_t t = 0; t < len; ++t)
      axpy(out + j * dim, scores[j * len + t], v_cache + slots[t] * kv_width + offset, dim);
  }
}

#if APPLIANCE_VNNI
// attend_heads for dim = 16 * D16: each head's query and its weighted sum of values stay in registers over
// the keys (the generic loop reloads and stores the sum for every key).
template <int64_t D16, typename T>
void attend_heads_vector(const float* qg, int64_t group, const T* k_cache, const T* v_cache,
                         const int64_t* slots, int64_t len, int64_t kv_width, int64_t offset, float* scores,
                         float* out, float* stats) {
  constexpr int64_t dim = 16 * D16;
  const __m512 scale = _mm512_set1_ps(1.f / std::sqrt(static_cast<float>(dim)));
  for (int64_t j = 0; j < group; ++j) {
    __m512 q[D16];
    for (int64_t d = 0; d < D16; ++d) q[d] = _mm512_mul_ps(_mm512_loadu_ps(qg + j * dim + 16 * d), scale);
    float* s = scores + j * len;
    for (int64_t t = 0; t < len; ++t) {
      const T* kt = k_cache + slots[t] * kv_width + offset;
      __m512 acc = _mm512_mul_ps(q[0], load16(kt));
      for (int64_t d = 1; d < D16; ++d) acc = _mm512_fmadd_ps(q[d], load16(kt + 16 * d), acc);
      s[t] = _mm512_reduce_add_ps(acc);
    }
    stats[2 * j + 1] = exp_shifted(s, len, stats[2 * j]);
    __m512 sum[D16];
    for (int64_t d = 0; d < D16; ++d) sum[d] = _mm512_setzero_ps();
    for (int64_t t = 0; t < len; ++t) {
      const T* vt = v_cache + slots[t] * kv_width + offset;
      const __m512 p = _mm512_set1_ps(s[t]);
      for (int64_t d = 0; d < D16; ++d) sum[d] = _mm512_fmadd_ps(p, load16(vt + 16 * d), sum[d]);
    }
    for (int64_t d = 0; d < D16; ++d) _mm512_storeu_ps(out + j * dim + 16 * d, sum[d]);
  }
}
#endif

// One head's output from its `spans` partial results (parts [spans, dim] with stride `part_stride` between
// spans, stats {max, sum} with stride `stat_stride`): the weighted values over the sum, each span rescaled to
// the largest max (flash-decoding's merge). Spans with no keys have max -inf and weigh nothing.
void merge_spans(const float* parts, int64_t part_stride, const float* stats, int64_t stat_stride, int64_t spans,
                 int64_t dim, float* out) {
  float best = -INFINITY;
  for (int64_t s = 0; s < spans; ++s) best = std::max(best, stats[s * stat_stride]);
  float total = 0.f;
  std::fill(out, out + dim, 0.f);
  for (int64_t s = 0; s < spans; ++s) {
    const float m = stats[s * stat_stride];
    if (m == -INFINITY) continue;
    const float w = std::exp(m - best);
    total += w * stats[s * stat_stride + 1];
    for (int64_t i = 0; i < dim; ++i) out[i] += w * parts[s * part_stride + i];
  }
  for (int64_t i = 0; i < dim; ++i) out[i] /= total;
}

constexpr int64_t kMinSpanKeys = 256;  // a sequence's keys are split into spans of at least this many

// Grouped-query attention of each row's single query over its cached keys; also writes the row's own k, v.
// Tasks: (row, KV head, span): the query heads sharing a KV head read each key from cache together; a row's
// keys are split into spans (merged after) when there are too few (row, KV head) pairs to keep every thread
// busy, as in a one-sequence step over a long context.
template <typename T>
void attend(const float* q, const float* k, const float* v, T* k_cache, T* v_cache, const int64_t* write_slots,
            const int64_t* key_slots, int64_t key_stride, const int64_t* lens, int64_t rows, int64_t heads,
            int64_t kv_heads, int64_t dim, float* out) {
  const int64_t kv_width = kv_heads * dim;
  for (int64_t r = 0; r < rows; ++r) {
    T* kd = k_cache + write_slots[r] * kv_width;
    T* vd = v_cache + write_slots[r] * kv_width;
    for (int64_t i = 0; i < kv_width; ++i) {
      kd[i] = static_cast<T>(k[r * kv_width + i]);
      vd[i] = static_cast<T>(v[r * kv_width + i]);
    }
  }
  const int64_t group = heads / kv_heads, pairs = rows * kv_heads;
  const int64_t longest = *std::max_element(lens, lens + rows);
  const int64_t wanted = (2 * at::get_num_threads() + pairs - 1) / pairs;  // tasks enough for 2 per thread
  const int64_t spans = std::max<int64_t>(1, std::min(wanted, longest / kMinSpanKeys));
  std::vector<float> parts(pairs * spans * group * dim), stats(pairs * spans * group * 2);  // [pair, span, ...]
  at::parallel_for(0, pairs * spans, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t pair = task / spans, span = task % spans, r = pair / kv_heads, g = pair % kv_heads;
      const int64_t first = lens[r] * span / spans, len = lens[r] * (span + 1) / spans - first;
      const float* qg = q + (r * heads + g * group) * dim;  // [group, dim]: the query heads of KV head g
      const int64_t* slots = key_slots + r * key_stride + first;
      float* part = parts.data() + task * group * dim;
      float* stat = stats.data() + task * group * 2;
      scores.resize(group * len);  // [group, len]
#if APPLIANCE_VNNI
      if (dim == 64 || dim == 128) {
        (dim == 64 ? attend_heads_vector<4, T> : attend_heads_vector<8, T>)(
            qg, group, k_cache, v_cache, slots, len, kv_width, g * dim, scores.data(), part, stat);
        continue;
      }
#endif
      attend_heads(qg, group, dim, k_cache, v_cache, slots, len, kv_width, g * dim, scores.data(), part, stat);
    }
  });
  for (int64_t pair = 0; pair < pairs; ++pair) {
    const int64_t r = pair / kv_heads, g = pair % kv_heads;
    for (int64_t j = 0; j < group; ++j)
      merge_spans(parts.data() + (pair * spans * group + j) * dim, group * dim,
                  stats.data() + (pair * spans * group + j) * 2, group * 2, spans, dim,
                  out + (r * heads + g * group + j) * dim);
  }
}

// Rotate the first `heads` heads of each row (neox layout: halves), in place. cos/sin: [rows, dim].
void rotate(float* x, const float* cos, const float* sin, int64_t rows, int64_t row_stride, int64_t heads,
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

struct Layer {
  Q4Linear qkv, o, gate_up, down;
  torch::Tensor input_norm, post_norm;  // [hidden] float32
  double eps;
  int64_t heads, kv_heads, dim;
};

// x: [rows, hidden] float32 entering the layer -> leaving it. cos/sin: [rows, dim] float32; write_slots: [rows]
// int64; key_slots: [rows, L] int64 (each row's first lens[r] entries are its keys' slots, its own included);
// k_cache/v_cache: [num_blocks, block_size, kv_heads, dim] float32 or bfloat16.
torch::Tensor decode_layer(const Layer& layer, const torch::Tensor& x, const torch::Tensor& cos,
                           const torch::Tensor& sin, torch::Tensor k_cache, torch::Tensor v_cache,
                           const torch::Tensor& write_slots, const torch::Tensor& key_slots,
                           const torch::Tensor& lens) {
  TORCH_CHECK(x.dtype() == torch::kFloat32 && x.is_contiguous(), "x: contiguous float32");
  TORCH_CHECK(cos.is_contiguous() && sin.is_contiguous() && key_slots.is_contiguous(), "contiguous tables");
  TORCH_CHECK(write_slots.scalar_type() == torch::kInt64 && key_slots.scalar_type() == torch::kInt64 &&
                  lens.scalar_type() == torch::kInt64, "slots and lengths: int64");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous() && k_cache.size(2) == layer.kv_heads &&
                  k_cache.size(3) == layer.dim, "caches: contiguous [blocks, block_size, kv_heads, dim]");
  const int64_t rows = x.size(0), hidden = x.size(1);
  const int64_t heads = layer.heads, kv_heads = layer.kv_heads, dim = layer.dim;
  const int64_t q_width = heads * dim, kv_width = kv_heads * dim, qkv_width = q_width + 2 * kv_width;
  const float eps = static_cast<float>(layer.eps);
  const float* xp = x.data_ptr<float>();

  std::vector<float> h(rows * hidden);
  rms_norm(xp, layer.input_norm.data_ptr<float>(), eps, rows, hidden, h.data());
  std::vector<float> qkv(rows * qkv_width);
  q4_linear(layer.qkv, quantize_rows(h.data(), rows, hidden), qkv.data());
  rotate(qkv.data(), cos.data_ptr<float>(), sin.data_ptr<float>(), rows, qkv_width, heads + kv_heads, dim);

  std::vector<float> q(rows * q_width), k(rows * kv_width), v(rows * kv_width), attn(rows * q_width);
  for (int64_t r = 0; r < rows; ++r) {
    std::memcpy(q.data() + r * q_width, qkv.data() + r * qkv_width, q_width * sizeof(float));
    std::memcpy(k.data() + r * kv_width, qkv.data() + r * qkv_width + q_width, kv_width * sizeof(float));
    std::memcpy(v.data() + r * kv_width, qkv.data() + r * qkv_width + q_width + kv_width, kv_width * sizeof(float));
  }
  const int64_t* ws = write_slots.data_ptr<int64_t>();
  const int64_t* ks = key_slots.data_ptr<int64_t>();
  const int64_t* ls = lens.data_ptr<int64_t>();
  if (k_cache.scalar_type() == torch::kBFloat16) {
    attend(q.data(), k.data(), v.data(), k_cache.data_ptr<at::BFloat16>(), v_cache.data_ptr<at::BFloat16>(), ws,
           ks, key_slots.size(1), ls, rows, heads, kv_heads, dim, attn.data());
  } else {
    TORCH_CHECK(k_cache.scalar_type() == torch::kFloat32, "cache: float32 or bfloat16");
    attend(q.data(), k.data(), v.data(), k_cache.data_ptr<float>(), v_cache.data_ptr<float>(), ws, ks,
           key_slots.size(1), ls, rows, heads, kv_heads, dim, attn.data());
  }

  torch::Tensor out = torch::empty({rows, hidden}, x.options());
  float* op = out.data_ptr<float>();
  q4_linear(layer.o, quantize_rows(attn.data(), rows, q_width), op);
  for (int64_t i = 0; i < rows * hidden; ++i) op[i] += xp[i];  // residual

  rms_norm(op, layer.post_norm.data_ptr<float>(), eps, rows, hidden, h.data());
  const int64_t inter = layer.gate_up.n() / 2;
  std::vector<float> gate_up(rows * 2 * inter), act(rows * inter);
  q4_linear(layer.gate_up, quantize_rows(h.data(), rows, hidden), gate_up.data());
  for (int64_t r = 0; r < rows; ++r)
    swiglu(gate_up.data() + r * 2 * inter, gate_up.data() + r * 2 * inter + inter, act.data() + r * inter, inter);
  std::vector<float> down(rows * hidden);
  q4_linear(layer.down, quantize_rows(act.data(), rows, inter), down.data());
  for (int64_t i = 0; i < rows * hidden; ++i) op[i] += down[i];  // residual
  return out;
}

// y: [rows, N] float32 = x [rows, K] float32 through one 4-bit linear (the eager layers' small steps, tests).
torch::Tensor q4_matmul(const Q4Linear& w, const torch::Tensor& x) {
  TORCH_CHECK(x.dtype() == torch::kFloat32 && x.is_contiguous() && x.size(1) == w.k(), "x: [rows, K] float32");
  torch::Tensor y = torch::empty({x.size(0), w.n()}, x.options());
  q4_linear(w, quantize_rows(x.data_ptr<float>(), x.size(0), x.size(1)), y.data_ptr<float>());
  return y;
}

// y: [rows, N] float32 = x [rows, K] through one 8-bit linear (the LM head).
torch::Tensor q8_matmul(const Q8Linear& w, const torch::Tensor& x) {
  TORCH_CHECK(x.dtype() == torch::kFloat32 && x.is_contiguous() && x.size(1) == w.k(), "x: [rows, K] float32");
  torch::Tensor y = torch::empty({x.size(0), w.n()}, x.options());
  tiled_linear(w, quantize_rows(x.data_ptr<float>(), x.size(0), x.size(1)), y.data_ptr<float>(), q8_tile);
  return y;
}

}  // namespace appliance

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  using namespace appliance;
  module.attr("vnni") = py::bool_(APPLIANCE_VNNI);
  // module_local: the native and the portable build may both be loaded in one process (the tests)
  py::class_<Q4Linear>(module, "Q4Linear", py::module_local())
      .def(py::init([](torch::Tensor packed, torch::Tensor d, torch::Tensor m, c10::optional<torch::Tensor> bias) {
             return Q4Linear{packed.contiguous(), d.contiguous(), m.contiguous(),
                             bias.has_value() ? bias->contiguous() : torch::Tensor()};
           }),
           py::arg("packed"), py::arg("d"), py::arg("m"), py::arg("bias") = py::none());
  py::class_<Q8Linear>(module, "Q8Linear", py::module_local())
      .def(py::init([](torch::Tensor packed, torch::Tensor d, torch::Tensor corr) {
             return Q8Linear{packed.contiguous(), d.contiguous(), corr.contiguous()};
           }),
           py::arg("packed"), py::arg("d"), py::arg("corr"));
  py::class_<Layer>(module, "Layer", py::module_local())
      .def(py::init([](Q4Linear qkv, Q4Linear o, Q4Linear gate_up, Q4Linear down, torch::Tensor input_norm,
                       torch::Tensor post_norm, double eps, int64_t heads, int64_t kv_heads, int64_t dim) {
        return Layer{qkv, o, gate_up, down, input_norm.contiguous(), post_norm.contiguous(), eps, heads, kv_heads,
                     dim};
      }));
  // the GIL is let go while they compute: an in-process server's API thread keeps answering meanwhile
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  module.def("decode_layer", &decode_layer, "one decoder layer for single-token rows", nogil);
  module.def("q4_matmul", &q4_matmul, "x through one 4-bit linear", nogil);
  module.def("q8_matmul", &q8_matmul, "x through one 8-bit linear", nogil);
}
