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

#include "attention.h"
#include "quant_matmul.h"
#include "rotary.h"
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

struct Layer {
  Q4Linear qkv, o, gate_up, down;
  torch::Tensor input_norm, post_norm;  // [hidden] float32
  double eps;
  int64_t heads, kv_heads, dim;
};

// x: [rows, hidden] float32 entering the layer -> leaving it. cos/sin: [rows, dim] float32; write_slots: [rows]
// int64; key_slots: [rows, L] int64 (each row's first lens[r] entries are its keys' slots, its own included);
// sequence: [rows] int64, the row's sequence (rows of one sequence consecutive, in ascending positions);
// k_cache/v_cache: [num_blocks, block_size, kv_heads, dim] float32 or bfloat16.
torch::Tensor decode_layer(const Layer& layer, const torch::Tensor& x, const torch::Tensor& cos,
                           const torch::Tensor& sin, torch::Tensor k_cache, torch::Tensor v_cache,
                           const torch::Tensor& write_slots, const torch::Tensor& key_slots,
                           const torch::Tensor& lens, const torch::Tensor& sequence) {
  TORCH_CHECK(x.dtype() == torch::kFloat32 && x.is_contiguous(), "x: contiguous float32");
  TORCH_CHECK(cos.is_contiguous() && sin.is_contiguous() && key_slots.is_contiguous(), "contiguous tables");
  TORCH_CHECK(write_slots.scalar_type() == torch::kInt64 && key_slots.scalar_type() == torch::kInt64 &&
                  lens.scalar_type() == torch::kInt64 && sequence.scalar_type() == torch::kInt64,
              "slots, lengths and sequences: int64");
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
  const int64_t* seq = sequence.data_ptr<int64_t>();
  if (k_cache.scalar_type() == torch::kBFloat16) {
    attend(q.data(), k.data(), v.data(), k_cache.data_ptr<at::BFloat16>(), v_cache.data_ptr<at::BFloat16>(), ws,
           ks, key_slots.size(1), ls, seq, rows, heads, kv_heads, dim, attn.data());
  } else {
    TORCH_CHECK(k_cache.scalar_type() == torch::kFloat32, "cache: float32 or bfloat16");
    attend(q.data(), k.data(), v.data(), k_cache.data_ptr<float>(), v_cache.data_ptr<float>(), ws, ks,
           key_slots.size(1), ls, seq, rows, heads, kv_heads, dim, attn.data());
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
  module.def("decode_layer", &decode_layer, "one decoder layer for rows of one token each", nogil);
  module.def("q4_matmul", &q4_matmul, "x through one 4-bit linear", nogil);
  module.def("q8_matmul", &q8_matmul, "x through one 8-bit linear", nogil);
  module.def("fill_rotated", &fill_rotated, "a chunk's KV into every layer's cache, keys rotated", nogil);
}
