// One Llama-family decoder layer for a decode step on the CPU, in one call: RMSNorm, the fused QKV
// projection, RoPE, the K/V write into the paged cache, grouped-query attention over each sequence's cached
// keys, the output projection, RMSNorm, the SwiGLU MLP and both residual adds.
//
// Why one call: a decode step of a small model is bound by per-op overhead on a CPU (a layer is ~40 torch ops
// or ~13 compiled ones, each paying dispatch and thread-team costs comparable to its work). Here a layer costs
// one Python call.
//
// Matmuls read the GGUF's own 4-bit weights (w = q * d + m per group of 32 inputs, q in 0..15) against
// activations rounded to 8 bits per group of 32 (as llama.cpp does), with AVX512-VNNI's u8 x s8 dot products
// where the compiler targets them and a portable loop elsewhere. Everything else is float32.
//
// Weights are kept in a tiled layout of their own (`tile_q4`, see Q4Linear).

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#include <immintrin.h>
#define APPLIANCE_VNNI 1
#else
#define APPLIANCE_VNNI 0
#endif

namespace {

constexpr int64_t kGroup = 32;   // inputs per scale

// Activations rounded to int8 per group of 32: x ~= xs[g] * xq[k]; xsum[g] = xs[g] * sum(xq over the group).
struct QuantizedRows {
  int64_t rows, cols;
  std::vector<int8_t> xq;   // [rows, cols]
  std::vector<float> xs;    // [rows, cols / 32]
  std::vector<float> xsum;  // [rows, cols / 32]
};

QuantizedRows quantize_rows(const float* x, int64_t rows, int64_t cols) {
  const int64_t groups = cols / kGroup;
  QuantizedRows q{rows, cols, std::vector<int8_t>(rows * cols), std::vector<float>(rows * groups),
                  std::vector<float>(rows * groups)};
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < groups; ++g) {
      const float* src = x + r * cols + g * kGroup;
      float amax = 0.f;
      for (int64_t i = 0; i < kGroup; ++i) amax = std::max(amax, std::fabs(src[i]));
      const float scale = amax / 127.f;
      const float inv = scale > 0.f ? 1.f / scale : 0.f;
      int sum = 0;
      int8_t* dst = q.xq.data() + r * cols + g * kGroup;
      for (int64_t i = 0; i < kGroup; ++i) {
        const int v = static_cast<int>(std::nearbyint(src[i] * inv));
        dst[i] = static_cast<int8_t>(v);
        sum += v;
      }
      q.xs[r * groups + g] = scale;
      q.xsum[r * groups + g] = scale * static_cast<float>(sum);
    }
  }
  return q;
}

// A 4-bit linear layer: y[r, n] = sum_k x[r, k] * (q[n, k] * d[n, k/32] + m[n, k/32]) (+ bias[n]).
// Layout (`tile_q4` in __init__.py), by tiles of 16 output rows: for each group of 32 inputs, 4 chunks of 64 bytes; in chunk c,
// bytes 4n..4n+3 hold row n's inputs 8c..8c+3 (low nibbles) and 8c+4..8c+7 (high nibbles). So one u8 x s8 dot
// instruction adds 4 inputs' products into each of 16 rows' lanes, and no horizontal sums are needed.
// d, m: [N / 16, K / 32, 16] float32.
struct Q4Linear {
  torch::Tensor packed;  // [N, K / 2] uint8, tiled as above
  torch::Tensor d, m;    // [N / 16, K / 32, 16] float32
  torch::Tensor bias;    // [N] float32 or undefined
  int64_t n() const { return packed.size(0); }
  int64_t k() const { return packed.size(1) * 2; }
};

constexpr int64_t kTile = 16;  // output rows per tile
constexpr int64_t kMaxRows = 4;  // activation rows computed together over one unpacked weight tile

// Rows r0..r0+nr-1 (nr <= kMaxRows) of y for output tile `tile` (16 outputs), written at y[r * N + tile * 16].
void q4_tile(const Q4Linear& w, const QuantizedRows& x, int64_t tile, int64_t r0, int64_t nr, float* y) {
  const int64_t K = w.k(), N = w.n(), groups = K / kGroup;
  const uint8_t* wq = w.packed.data_ptr<uint8_t>() + tile * kTile * (K / 2);
  const float* d = w.d.data_ptr<float>() + tile * groups * kTile;
  const float* m = w.m.data_ptr<float>() + tile * groups * kTile;
#if APPLIANCE_VNNI
  __m512 acc[kMaxRows];
  for (int64_t j = 0; j < nr; ++j) acc[j] = _mm512_setzero_ps();
  const __m512i low = _mm512_set1_epi8(0x0F);
  for (int64_t g = 0; g < groups; ++g) {
    __m512i dot[kMaxRows];
    for (int64_t j = 0; j < nr; ++j) dot[j] = _mm512_setzero_si512();
    for (int64_t c = 0; c < 4; ++c) {
      const __m512i bytes = _mm512_loadu_si512(wq + (g * 4 + c) * 64);
      const __m512i lo = _mm512_and_si512(bytes, low);
      const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(bytes, 4), low);
      for (int64_t j = 0; j < nr; ++j) {
        const int8_t* xq = x.xq.data() + (r0 + j) * K + g * kGroup + c * 8;
        int32_t first, second;
        std::memcpy(&first, xq, 4);
        std::memcpy(&second, xq + 4, 4);
        dot[j] = _mm512_dpbusd_epi32(dot[j], lo, _mm512_set1_epi32(first));
        dot[j] = _mm512_dpbusd_epi32(dot[j], hi, _mm512_set1_epi32(second));
      }
    }
    const __m512 dv = _mm512_loadu_ps(d + g * kTile);
    const __m512 mv = _mm512_loadu_ps(m + g * kTile);
    for (int64_t j = 0; j < nr; ++j) {
      const int64_t at = (r0 + j) * groups + g;
      acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[j]), _mm512_mul_ps(dv, _mm512_set1_ps(x.xs[at])), acc[j]);
      acc[j] = _mm512_fmadd_ps(mv, _mm512_set1_ps(x.xsum[at]), acc[j]);
    }
  }
  for (int64_t j = 0; j < nr; ++j) _mm512_storeu_ps(y + (r0 + j) * N + tile * kTile, acc[j]);
#else
  for (int64_t j = 0; j < nr; ++j) {
    const int64_t r = r0 + j;
    float acc[kTile] = {};
    for (int64_t g = 0; g < groups; ++g) {
      int32_t dot[kTile] = {};
      for (int64_t c = 0; c < 4; ++c) {
        const uint8_t* chunk = wq + (g * 4 + c) * 64;
        const int8_t* xq = x.xq.data() + r * K + g * kGroup + c * 8;
        for (int64_t n = 0; n < kTile; ++n)
          for (int64_t b = 0; b < 4; ++b) {
            const uint8_t byte = chunk[n * 4 + b];
            dot[n] += static_cast<int32_t>(byte & 0x0F) * xq[b] + static_cast<int32_t>(byte >> 4) * xq[4 + b];
          }
      }
      const float xs = x.xs[r * groups + g], xsum = x.xsum[r * groups + g];
      for (int64_t n = 0; n < kTile; ++n)
        acc[n] += static_cast<float>(dot[n]) * d[g * kTile + n] * xs + m[g * kTile + n] * xsum;
    }
    std::memcpy(y + r * N + tile * kTile, acc, sizeof(acc));
  }
#endif
}

// An 8-bit linear layer (the GGUF's Q8_0 LM head): y[r, n] = sum_k x[r, k] * q[n, k] * d[n, k/32].
// Layout (`tile_q8`): by tiles of 16 output rows, each group of 32 inputs is 8 chunks of 64 bytes; in chunk c,
// bytes 4n..4n+3 hold the tile's row n's inputs 4c..4c+3. The dot instruction multiplies unsigned by signed
// bytes, so activations enter as xq + 128 and `corr` (128 * the group's sum of q) is taken back out.
struct Q8Linear {
  torch::Tensor packed;  // [N, K] int8, tiled as above
  torch::Tensor d, corr;  // [N / 16, K / 32, 16] float32
  int64_t n() const { return packed.size(0); }
  int64_t k() const { return packed.size(1); }
};

void q8_tile(const Q8Linear& w, const QuantizedRows& x, int64_t tile, int64_t r0, int64_t nr, float* y) {
  const int64_t K = w.k(), N = w.n(), groups = K / kGroup;
  const int8_t* wq = w.packed.data_ptr<int8_t>() + tile * kTile * K;
  const float* d = w.d.data_ptr<float>() + tile * groups * kTile;
  const float* corr = w.corr.data_ptr<float>() + tile * groups * kTile;
#if APPLIANCE_VNNI
  __m512 acc[kMaxRows];
  for (int64_t j = 0; j < nr; ++j) acc[j] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m512i dot[kMaxRows];
    for (int64_t j = 0; j < nr; ++j) dot[j] = _mm512_setzero_si512();
    for (int64_t c = 0; c < 8; ++c) {
      const __m512i wv = _mm512_loadu_si512(wq + (g * 8 + c) * 64);
      for (int64_t j = 0; j < nr; ++j) {
        int32_t four;
        std::memcpy(&four, x.xq.data() + (r0 + j) * K + g * kGroup + c * 4, 4);
        const __m512i xu = _mm512_set1_epi32(four ^ static_cast<int32_t>(0x80808080u));  // xq + 128 as u8
        dot[j] = _mm512_dpbusd_epi32(dot[j], xu, wv);
      }
    }
    const __m512 dv = _mm512_loadu_ps(d + g * kTile);
    const __m512 cv = _mm512_loadu_ps(corr + g * kTile);
    for (int64_t j = 0; j < nr; ++j) {
      const __m512 exact = _mm512_sub_ps(_mm512_cvtepi32_ps(dot[j]), cv);
      acc[j] = _mm512_fmadd_ps(exact, _mm512_mul_ps(dv, _mm512_set1_ps(x.xs[(r0 + j) * groups + g])), acc[j]);
    }
  }
  for (int64_t j = 0; j < nr; ++j) _mm512_storeu_ps(y + (r0 + j) * N + tile * kTile, acc[j]);
#else
  for (int64_t j = 0; j < nr; ++j) {
    const int64_t r = r0 + j;
    float acc[kTile] = {};
    for (int64_t g = 0; g < groups; ++g) {
      int32_t dot[kTile] = {};
      for (int64_t c = 0; c < 8; ++c) {
        const int8_t* chunk = wq + (g * 8 + c) * 64;
        const int8_t* xq = x.xq.data() + r * K + g * kGroup + c * 4;
        for (int64_t n = 0; n < kTile; ++n)
          for (int64_t b = 0; b < 4; ++b) dot[n] += static_cast<int32_t>(chunk[n * 4 + b]) * xq[b];
      }
      const float xs = x.xs[r * groups + g];
      for (int64_t n = 0; n < kTile; ++n) acc[n] += static_cast<float>(dot[n]) * d[g * kTile + n] * xs;
    }
    std::memcpy(y + r * N + tile * kTile, acc, sizeof(acc));
  }
#endif
}

// Either layer through its tiles, 4 activation rows at a time: y [rows, N] float32.
template <typename Linear, typename Tile>
void tiled_linear(const Linear& w, const QuantizedRows& x, float* y, Tile tile_fn) {
  at::parallel_for(0, w.n() / kTile, 4, [&](int64_t begin, int64_t end) {
    for (int64_t tile = begin; tile < end; ++tile)
      for (int64_t r0 = 0; r0 < x.rows; r0 += kMaxRows)
        tile_fn(w, x, tile, r0, std::min<int64_t>(kMaxRows, x.rows - r0), y);
  });
}

// y: [rows, N] float32 = x [rows, K] (as QuantizedRows) through w.
void q4_linear(const Q4Linear& w, const QuantizedRows& x, float* y) {
  const int64_t N = w.n(), rows = x.rows;
  tiled_linear(w, x, y, q4_tile);
  if (w.bias.defined()) {
    const float* bias = w.bias.data_ptr<float>();
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t n = 0; n < N; ++n) y[r * N + n] += bias[n];
  }
}

void rms_norm(const float* x, const float* weight, float eps, int64_t rows, int64_t cols, float* out) {
  for (int64_t r = 0; r < rows; ++r) {
    float ss = 0.f;
    for (int64_t i = 0; i < cols; ++i) ss += x[r * cols + i] * x[r * cols + i];
    const float inv = 1.f / std::sqrt(ss / static_cast<float>(cols) + eps);
    for (int64_t i = 0; i < cols; ++i) out[r * cols + i] = x[r * cols + i] * inv * weight[i];
  }
}

inline float to_float(float v) { return v; }
inline float to_float(at::BFloat16 v) { return static_cast<float>(v); }

// Grouped-query attention of each row's single query over its cached keys; also writes the row's own k, v.
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
  const int64_t group = heads / kv_heads;
  const float scale = 1.f / std::sqrt(static_cast<float>(dim));
  at::parallel_for(0, rows * heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores, acc(dim);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r = task / heads, h = task % heads, g = h / group, len = lens[r];
      const float* qh = q + (r * heads + h) * dim;
      const int64_t* slots = key_slots + r * key_stride;
      scores.resize(len);
      float best = -INFINITY;
      for (int64_t t = 0; t < len; ++t) {
        const T* kt = k_cache + slots[t] * kv_width + g * dim;
        float s = 0.f;
        for (int64_t i = 0; i < dim; ++i) s += qh[i] * to_float(kt[i]);
        scores[t] = s * scale;
        best = std::max(best, scores[t]);
      }
      float total = 0.f;
      for (int64_t t = 0; t < len; ++t) {
        scores[t] = std::exp(scores[t] - best);
        total += scores[t];
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t t = 0; t < len; ++t) {
        const T* vt = v_cache + slots[t] * kv_width + g * dim;
        const float p = scores[t] / total;
        for (int64_t i = 0; i < dim; ++i) acc[i] += p * to_float(vt[i]);
      }
      std::memcpy(out + (r * heads + h) * dim, acc.data(), dim * sizeof(float));
    }
  });
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
    for (int64_t i = 0; i < inter; ++i) {
      const float g = gate_up[r * 2 * inter + i], u = gate_up[r * 2 * inter + inter + i];
      act[r * inter + i] = g / (1.f + std::exp(-g)) * u;
    }
  std::vector<float> down(rows * hidden);
  q4_linear(layer.down, quantize_rows(act.data(), rows, inter), down.data());
  for (int64_t i = 0; i < rows * hidden; ++i) op[i] += down[i];  // residual
  return out;
}

// y: [rows, N] float32 = x [rows, K] float32 through one 4-bit linear (tests).
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

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.attr("vnni") = py::bool_(APPLIANCE_VNNI);
  py::class_<Q4Linear>(module, "Q4Linear")
      .def(py::init([](torch::Tensor packed, torch::Tensor d, torch::Tensor m, c10::optional<torch::Tensor> bias) {
             return Q4Linear{packed.contiguous(), d.contiguous(), m.contiguous(),
                             bias.has_value() ? bias->contiguous() : torch::Tensor()};
           }),
           py::arg("packed"), py::arg("d"), py::arg("m"), py::arg("bias") = py::none());
  py::class_<Q8Linear>(module, "Q8Linear")
      .def(py::init([](torch::Tensor packed, torch::Tensor d, torch::Tensor corr) {
             return Q8Linear{packed.contiguous(), d.contiguous(), corr.contiguous()};
           }),
           py::arg("packed"), py::arg("d"), py::arg("corr"));
  py::class_<Layer>(module, "Layer")
      .def(py::init([](Q4Linear qkv, Q4Linear o, Q4Linear gate_up, Q4Linear down, torch::Tensor input_norm,
                       torch::Tensor post_norm, double eps, int64_t heads, int64_t kv_heads, int64_t dim) {
        return Layer{qkv, o, gate_up, down, input_norm.contiguous(), post_norm.contiguous(), eps, heads, kv_heads,
                     dim};
      }));
  module.def("decode_layer", &decode_layer, "one decoder layer for single-token rows");
  module.def("q4_matmul", &q4_matmul, "x through one 4-bit linear");
  module.def("q8_matmul", &q8_matmul, "x through one 8-bit linear");
}
