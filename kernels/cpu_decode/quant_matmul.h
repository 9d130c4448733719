// The fused decode layer's matmuls: 4-bit (the GGUF's Q4_0/Q4_1 projections) and 8-bit (its Q8_0 LM head)
// weights in a tiled layout of their own, against activations rounded to 8 bits per group of 32 (as llama.cpp
// does), with AVX512-VNNI's u8 x s8 dot products where the compiler targets them and a portable loop elsewhere.
#pragma once

#include <ATen/Parallel.h>
#include <torch/types.h>

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "simd.h"

namespace appliance {

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
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t g = 0; g < groups; ++g) {
      const auto [scale, sum] = quantize_group(x + r * cols + g * kGroup, q.xq.data() + r * cols + g * kGroup);
      q.xs[r * groups + g] = scale;
      q.xsum[r * groups + g] = scale * static_cast<float>(sum);
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
constexpr int64_t kMaxRows = 8;  // activation rows computed together over one unpacked weight tile
// How far ahead of the tile being computed its weight bytes are asked for: a decode step reads each layer's
// weights once, from the last-level cache, and the hardware prefetcher alone stops at every page (docs/
// BENCHMARKS.md, "Decode and arrivals": an engine's step at 1 / 16 streams -13% / -9%, `bench engine` at 4 / 16
// streams +8% / +12%, its 1 stream unmoved; 1 KB and 4-8 KB did no better than 2 KB).
constexpr int64_t kPrefetchBytes = 2048;

// body(std::integral_constant<int64_t, nr>{}) for 1 <= nr <= kMaxRows: each row count gets its own loops with a
// compile-time trip count, so its accumulators stay in registers (a runtime count spills them).
template <typename Body>
void with_row_count(int64_t nr, Body&& body) {
  switch (nr) {
    case 1: body(std::integral_constant<int64_t, 1>{}); break;
    case 2: body(std::integral_constant<int64_t, 2>{}); break;
    case 3: body(std::integral_constant<int64_t, 3>{}); break;
    case 4: body(std::integral_constant<int64_t, 4>{}); break;
    case 5: body(std::integral_constant<int64_t, 5>{}); break;
    case 6: body(std::integral_constant<int64_t, 6>{}); break;
    case 7: body(std::integral_constant<int64_t, 7>{}); break;
    default: body(std::integral_constant<int64_t, kMaxRows>{}); break;
  }
}

// The portable loop of either weight format, for rows r0..r0+nr-1 of tile `tile`: per row and group of 32 inputs,
// `group_dot(g, xq, dot)` adds the group's integer products into dot[16] (xq: the row's 32 rounded inputs) and
// `scale(g, at, dot, acc)` folds them into the row's 16 float sums (at: the row's group index into xs, xsum).
template <typename GroupDot, typename Scale>
void portable_tile(const QuantizedRows& x, int64_t N, int64_t tile, int64_t r0, int64_t nr, float* y,
                   GroupDot group_dot, Scale scale) {
  const int64_t K = x.cols, groups = K / kGroup;
  for (int64_t j = 0; j < nr; ++j) {
    const int64_t r = r0 + j;
    float acc[kTile] = {};
    for (int64_t g = 0; g < groups; ++g) {
      int32_t dot[kTile] = {};
      group_dot(g, x.xq.data() + r * K + g * kGroup, dot);
      scale(g, r * groups + g, dot, acc);
    }
    std::memcpy(y + r * N + tile * kTile, acc, sizeof(acc));
  }
}

// Rows r0..r0+nr-1 (nr <= kMaxRows) of y for output tile `tile` (16 outputs), written at y[r * N + tile * 16].
void q4_tile(const Q4Linear& w, const QuantizedRows& x, int64_t tile, int64_t r0, int64_t nr, float* y) {
  const int64_t K = w.k(), N = w.n(), groups = K / kGroup;
  const uint8_t* wq = w.packed.data_ptr<uint8_t>() + tile * kTile * (K / 2);
  const float* d = w.d.data_ptr<float>() + tile * groups * kTile;
  const float* m = w.m.data_ptr<float>() + tile * groups * kTile;
#if APPLIANCE_VNNI
  with_row_count(nr, [&](auto count) {
    constexpr int64_t NR = decltype(count)::value;
    __m512 acc[NR];
    for (int64_t j = 0; j < NR; ++j) acc[j] = _mm512_setzero_ps();
    const __m512i low = _mm512_set1_epi8(0x0F);
    for (int64_t g = 0; g < groups; ++g) {
      __m512i dot[NR];
      for (int64_t j = 0; j < NR; ++j) dot[j] = _mm512_setzero_si512();
      for (int64_t c = 0; c < 4; ++c) {
        _mm_prefetch(reinterpret_cast<const char*>(wq + (g * 4 + c) * 64 + kPrefetchBytes), _MM_HINT_T0);
        const __m512i bytes = _mm512_loadu_si512(wq + (g * 4 + c) * 64);
        const __m512i lo = _mm512_and_si512(bytes, low);
        const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(bytes, 4), low);
        for (int64_t j = 0; j < NR; ++j) {
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
      for (int64_t j = 0; j < NR; ++j) {
        const int64_t at = (r0 + j) * groups + g;
        acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[j]), _mm512_mul_ps(dv, _mm512_set1_ps(x.xs[at])), acc[j]);
        acc[j] = _mm512_fmadd_ps(mv, _mm512_set1_ps(x.xsum[at]), acc[j]);
      }
    }
    for (int64_t j = 0; j < NR; ++j) _mm512_storeu_ps(y + (r0 + j) * N + tile * kTile, acc[j]);
  });
#else
  portable_tile(
      x, N, tile, r0, nr, y,
      [&](int64_t g, const int8_t* xq, int32_t* dot) {
        for (int64_t c = 0; c < 4; ++c) {
          const uint8_t* chunk = wq + (g * 4 + c) * 64;
          for (int64_t n = 0; n < kTile; ++n)
            for (int64_t b = 0; b < 4; ++b) {
              const uint8_t byte = chunk[n * 4 + b];
              dot[n] += static_cast<int32_t>(byte & 0x0F) * xq[c * 8 + b] +
                        static_cast<int32_t>(byte >> 4) * xq[c * 8 + 4 + b];
            }
        }
      },
      [&](int64_t g, int64_t at, const int32_t* dot, float* acc) {
        for (int64_t n = 0; n < kTile; ++n)
          acc[n] += static_cast<float>(dot[n]) * d[g * kTile + n] * x.xs[at] + m[g * kTile + n] * x.xsum[at];
      });
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
  with_row_count(nr, [&](auto count) {
    constexpr int64_t NR = decltype(count)::value;
    __m512 acc[NR];
    for (int64_t j = 0; j < NR; ++j) acc[j] = _mm512_setzero_ps();
    for (int64_t g = 0; g < groups; ++g) {
      __m512i dot[NR];
      for (int64_t j = 0; j < NR; ++j) dot[j] = _mm512_setzero_si512();
      for (int64_t c = 0; c < 8; ++c) {
        _mm_prefetch(reinterpret_cast<const char*>(wq + (g * 8 + c) * 64 + kPrefetchBytes), _MM_HINT_T0);
        const __m512i wv = _mm512_loadu_si512(wq + (g * 8 + c) * 64);
        for (int64_t j = 0; j < NR; ++j) {
          int32_t four;
          std::memcpy(&four, x.xq.data() + (r0 + j) * K + g * kGroup + c * 4, 4);
          const __m512i xu = _mm512_set1_epi32(four ^ static_cast<int32_t>(0x80808080u));  // xq + 128 as u8
          dot[j] = _mm512_dpbusd_epi32(dot[j], xu, wv);
        }
      }
      const __m512 dv = _mm512_loadu_ps(d + g * kTile);
      const __m512 cv = _mm512_loadu_ps(corr + g * kTile);
      for (int64_t j = 0; j < NR; ++j) {
        const __m512 exact = _mm512_sub_ps(_mm512_cvtepi32_ps(dot[j]), cv);
        acc[j] = _mm512_fmadd_ps(exact, _mm512_mul_ps(dv, _mm512_set1_ps(x.xs[(r0 + j) * groups + g])), acc[j]);
      }
    }
    for (int64_t j = 0; j < NR; ++j) _mm512_storeu_ps(y + (r0 + j) * N + tile * kTile, acc[j]);
  });
#else
  portable_tile(
      x, N, tile, r0, nr, y,
      [&](int64_t g, const int8_t* xq, int32_t* dot) {
        for (int64_t c = 0; c < 8; ++c) {
          const int8_t* chunk = wq + (g * 8 + c) * 64;
          for (int64_t n = 0; n < kTile; ++n)
            for (int64_t b = 0; b < 4; ++b) dot[n] += static_cast<int32_t>(chunk[n * 4 + b]) * xq[c * 4 + b];
        }
      },
      [&](int64_t g, int64_t at, const int32_t* dot, float* acc) {
        for (int64_t n = 0; n < kTile; ++n) acc[n] += static_cast<float>(dot[n]) * d[g * kTile + n] * x.xs[at];
      });
#endif
}

// Either layer through its tiles, kMaxRows activation rows at a time: y [rows, N] float32.
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

}  // namespace appliance
