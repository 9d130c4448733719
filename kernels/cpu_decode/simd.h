// Vector helpers of the fused decode layer: AVX-512 where the compiler targets AVX512-VNNI (APPLIANCE_VNNI),
// plain loops elsewhere. Each works on float32 rows; `Key` rows (the KV cache) are float32 or bfloat16.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#include <immintrin.h>
#define APPLIANCE_VNNI 1
#else
#define APPLIANCE_VNNI 0
#endif

namespace appliance {

#if APPLIANCE_VNNI
// 16 floats from 16 cache values.
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const c10::BFloat16* p) {
  const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));  // bfloat16 is float32's upper half
}

// e^x, 16 lanes: 2^(x log2 e) as 2^n * 2^f, f in [-1/2, 1/2] by a degree-6 polynomial (relative error ~1e-7).
inline __m512 exp16(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.f)), _mm512_set1_ps(88.f));
  const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  __m512 p = _mm512_set1_ps(1.5403530393381606e-4f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3333558146428443e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291076284772e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504108664821580e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022650695910071e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718055994531e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}

inline __mmask16 tail_mask(int64_t left) { return left >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << left) - 1); }
#endif

// sum_i a[i] * b[i] over n values (n a multiple of 16 on the vector path).
template <typename Key>
inline float dot(const float* a, const Key* b, int64_t n) {
#if APPLIANCE_VNNI
  if (n % 16 == 0) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), load16(b + i), acc);
    return _mm512_reduce_add_ps(acc);
  }
#endif
  float total = 0.f;
  for (int64_t i = 0; i < n; ++i) total += a[i] * static_cast<float>(b[i]);
  return total;
}

// acc[i] += p * v[i] over n values.
template <typename Key>
inline void axpy(float* acc, float p, const Key* v, int64_t n) {
#if APPLIANCE_VNNI
  if (n % 16 == 0) {
    const __m512 pv = _mm512_set1_ps(p);
    for (int64_t i = 0; i < n; i += 16)
      _mm512_storeu_ps(acc + i, _mm512_fmadd_ps(pv, load16(v + i), _mm512_loadu_ps(acc + i)));
    return;
  }
#endif
  for (int64_t i = 0; i < n; ++i) acc[i] += p * static_cast<float>(v[i]);
}

// s[i] = e^(s[i] - max s) in place; returns their sum, and max s in `best` (-inf when n is 0).
inline float exp_shifted(float* s, int64_t n, float& best) {
  best = -INFINITY;
  for (int64_t i = 0; i < n; ++i) best = std::max(best, s[i]);
  float total = 0.f;
#if APPLIANCE_VNNI
  __m512 sum = _mm512_setzero_ps();
  const __m512 shift = _mm512_set1_ps(best);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, s + i), shift));
    _mm512_mask_storeu_ps(s + i, m, e);
    sum = _mm512_mask_add_ps(sum, m, sum, e);
  }
  total = _mm512_reduce_add_ps(sum);
#else
  for (int64_t i = 0; i < n; ++i) {
    s[i] = std::exp(s[i] - best);
    total += s[i];
  }
#endif
  return total;
}

// out[i] = silu(gate[i]) * up[i] over n values.
inline void swiglu(const float* gate, const float* up, float* out, int64_t n) {
  int64_t i = 0;
#if APPLIANCE_VNNI
  for (; i + 16 <= n; i += 16) {
    const __m512 g = _mm512_loadu_ps(gate + i);
    const __m512 sig = _mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.f), exp16(_mm512_sub_ps(_mm512_setzero_ps(), g))));
    _mm512_storeu_ps(out + i, _mm512_mul_ps(sig, _mm512_loadu_ps(up + i)));
  }
#endif
  for (; i < n; ++i) out[i] = gate[i] / (1.f + std::exp(-gate[i])) * up[i];
}

// One group of 32 values rounded to int8 by scale max|x| / 127: writes q, returns (scale, the sum of q).
inline std::pair<float, int32_t> quantize_group(const float* x, int8_t* q) {
#if APPLIANCE_VNNI
  const __m512 a = _mm512_loadu_ps(x), b = _mm512_loadu_ps(x + 16);
  const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
  const float scale = amax / 127.f;
  const __m512 inv = _mm512_set1_ps(scale > 0.f ? 1.f / scale : 0.f);
  const int rounding = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  const __m512i qa = _mm512_cvt_roundps_epi32(_mm512_mul_ps(a, inv), rounding);
  const __m512i qb = _mm512_cvt_roundps_epi32(_mm512_mul_ps(b, inv), rounding);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(q), _mm512_cvtsepi32_epi8(qa));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(q + 16), _mm512_cvtsepi32_epi8(qb));
  return {scale, _mm512_reduce_add_epi32(_mm512_add_epi32(qa, qb))};
#else
  float amax = 0.f;
  for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float scale = amax / 127.f;
  const float inv = scale > 0.f ? 1.f / scale : 0.f;
  int32_t sum = 0;
  for (int i = 0; i < 32; ++i) {
    const int v = static_cast<int>(std::nearbyint(x[i] * inv));
    q[i] = static_cast<int8_t>(v);
    sum += v;
  }
  return {scale, sum};
#endif
}

}  // namespace appliance
