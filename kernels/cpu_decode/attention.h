// Grouped-query attention of the fused layer's rows over the paged KV cache (`attend`): each row is one token
// that sees its sequence's keys up to its own position. A row alone in its sequence (a decode token) keeps its
// query heads in registers over the keys; the rows of one sequence that come together (a prompt's chunk, the
// document cache's recomputed tokens) score 16 keys at a time for all their query heads, so each key is read
// once per step and not once per row. Either way a long run of keys may be split into spans that threads take
// apart, merged after (flash-decoding).
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "simd.h"

namespace appliance {

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
// How many keys ahead a cached row is asked for: at long contexts the decode rows' attention waits on memory
// (8 streams at 1400 keys, over all layers: 1420 -> ~1150 us a layer; 12 to 48 keys ahead did alike).
constexpr int64_t kAheadKeys = 16;

// Ask for the `n` values of one cached row ahead of their use (the keys of a sequence lie in blocks apart).
template <typename T>
inline void prefetch_row(const T* row, int64_t n) {
  const char* p = reinterpret_cast<const char*>(row);
  for (int64_t b = 0; b < n * static_cast<int64_t>(sizeof(T)); b += 64) _mm_prefetch(p + b, _MM_HINT_T0);
}

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
      if (t + kAheadKeys < len) prefetch_row(k_cache + slots[t + kAheadKeys] * kv_width + offset, dim);
      __m512 acc = _mm512_mul_ps(q[0], load16(kt));
      for (int64_t d = 1; d < D16; ++d) acc = _mm512_fmadd_ps(q[d], load16(kt + 16 * d), acc);
      s[t] = _mm512_reduce_add_ps(acc);
    }
    stats[2 * j + 1] = exp_shifted(s, len, stats[2 * j]);
    __m512 sum[D16];
    for (int64_t d = 0; d < D16; ++d) sum[d] = _mm512_setzero_ps();
    for (int64_t t = 0; t < len; ++t) {
      const T* vt = v_cache + slots[t] * kv_width + offset;
      if (t + kAheadKeys < len) prefetch_row(v_cache + slots[t + kAheadKeys] * kv_width + offset, dim);
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

constexpr int64_t kTileKeys = 16;  // keys scored together by `attend_rows`
constexpr int64_t kTileHeads = 8;  // query heads scored together against a tile of keys
constexpr int64_t kHeadBlock = 24;  // `attend_rows` takes query heads in multiples of this (zero heads pad them)
constexpr int64_t kMinTiledRows = 4;  // a sequence with at least this many rows in a step attends by tiles

// Scores of the query heads qs [m, dim] (scaled; m a multiple of kTileHeads) against keys t0..t0 + n - 1
// (n <= 16) of the `len` at `slots`: s[i * stride + t] for t in [t0, t0 + n). kt: [dim, 16] scratch, the keys
// transposed. The next tile's keys are asked for meanwhile.
// Blocks of a fixed count of heads keep their sums in registers.
template <typename T>
void score_tile(const float* qs, int64_t m, int64_t dim, const T* k_cache, const int64_t* slots, int64_t t0,
                int64_t n, int64_t len, int64_t kv_width, int64_t offset, float* kt, float* s, int64_t stride) {
  for (int64_t j = 0; j < kTileKeys; ++j) {
    if (j >= n) {
      for (int64_t d = 0; d < dim; ++d) kt[d * kTileKeys + j] = 0.f;
      continue;
    }
    const T* key = k_cache + slots[t0 + j] * kv_width + offset;
#if APPLIANCE_VNNI
    if (t0 + kTileKeys + j < len) prefetch_row(k_cache + slots[t0 + kTileKeys + j] * kv_width + offset, dim);
#endif
    for (int64_t d = 0; d < dim; ++d) kt[d * kTileKeys + j] = static_cast<float>(key[d]);
  }
  for (int64_t i0 = 0; i0 < m; i0 += kTileHeads) {
    const float* qb = qs + i0 * dim;
#if APPLIANCE_VNNI
    __m512 acc[kTileHeads];
    for (int64_t i = 0; i < kTileHeads; ++i) acc[i] = _mm512_setzero_ps();
    for (int64_t d = 0; d < dim; ++d) {
      const __m512 kd = _mm512_loadu_ps(kt + d * kTileKeys);
      for (int64_t i = 0; i < kTileHeads; ++i) acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(qb[i * dim + d]), kd, acc[i]);
    }
    for (int64_t i = 0; i < kTileHeads; ++i) _mm512_mask_storeu_ps(s + (i0 + i) * stride + t0, tail_mask(n), acc[i]);
#else
    float acc[kTileHeads][kTileKeys] = {};
    for (int64_t d = 0; d < dim; ++d)
      for (int64_t i = 0; i < kTileHeads; ++i)
        for (int64_t j = 0; j < kTileKeys; ++j) acc[i][j] += qb[i * dim + d] * kt[d * kTileKeys + j];
    for (int64_t i = 0; i < kTileHeads; ++i)
      for (int64_t j = 0; j < n; ++j) s[(i0 + i) * stride + t0 + j] = acc[i][j];
#endif
  }
}

#if APPLIANCE_VNNI
// out [m, 16 * D16] = p [m, len] (zero past each head's seen keys) times the values at `slots`, in blocks of
// heads (m a multiple of the block) whose sums stay in registers while each value row is read once per block.
template <int64_t D16, typename T>
void weigh_values(const float* p, int64_t m, int64_t len, const int64_t* seen, const T* v_cache,
                  const int64_t* slots, int64_t kv_width, int64_t offset, float* out) {
  constexpr int64_t dim = 16 * D16, block = kHeadBlock / D16;  // kHeadBlock accumulators
  for (int64_t i0 = 0; i0 < m; i0 += block) {
    const int64_t keys = *std::max_element(seen + i0, seen + i0 + block);
    __m512 acc[block][D16];
    for (int64_t i = 0; i < block; ++i)
      for (int64_t d = 0; d < D16; ++d) acc[i][d] = _mm512_setzero_ps();
    for (int64_t t = 0; t < keys; ++t) {
      const T* vt = v_cache + slots[t] * kv_width + offset;
      if (t + kAheadKeys < keys) prefetch_row(v_cache + slots[t + kAheadKeys] * kv_width + offset, dim);
      __m512 v[D16];
      for (int64_t d = 0; d < D16; ++d) v[d] = load16(vt + 16 * d);
      for (int64_t i = 0; i < block; ++i) {
        const __m512 w = _mm512_set1_ps(p[(i0 + i) * len + t]);
        for (int64_t d = 0; d < D16; ++d) acc[i][d] = _mm512_fmadd_ps(w, v[d], acc[i][d]);
      }
    }
    for (int64_t i = 0; i < block; ++i)
      for (int64_t d = 0; d < D16; ++d) _mm512_storeu_ps(out + (i0 + i) * dim + 16 * d, acc[i][d]);
  }
}
#endif

// Attention of the query heads qs [m, dim] (scaled; m a multiple of kHeadBlock), head i seeing the first
// seen[i] of `len` keys at `slots`, left unnormalized as `attend_heads` leaves it: stats [m, 2] {max score, sum
// of e^(score - max)}, out [m, dim] the values weighted by e^(score - max) (zero, max -inf, for a head that
// sees no key). scores: [m, len] scratch.
template <typename T>
void attend_rows(const float* qs, int64_t m, int64_t dim, const T* k_cache, const T* v_cache, const int64_t* slots,
                 int64_t len, const int64_t* seen, int64_t kv_width, int64_t offset, float* scores, float* out,
                 float* stats) {
  std::vector<float> kt(dim * kTileKeys);
  for (int64_t t0 = 0; t0 < len; t0 += kTileKeys)
    score_tile(qs, m, dim, k_cache, slots, t0, std::min(kTileKeys, len - t0), len, kv_width, offset, kt.data(),
               scores, len);
  for (int64_t i = 0; i < m; ++i) {
    float* s = scores + i * len;
    stats[2 * i + 1] = exp_shifted(s, seen[i], stats[2 * i]);
    std::fill(s + seen[i], s + len, 0.f);  // keys past this head's own position weigh nothing
  }
#if APPLIANCE_VNNI
  if (dim == 64 || dim == 128) {
    (dim == 64 ? weigh_values<4, T> : weigh_values<8, T>)(scores, m, len, seen, v_cache, slots, kv_width, offset, out);
    return;
  }
#endif
  std::fill(out, out + m * dim, 0.f);
  for (int64_t t = 0; t < len; ++t) {
    const T* vt = v_cache + slots[t] * kv_width + offset;
    for (int64_t i = 0; i < m; ++i)
      if (t < seen[i]) axpy(out + i * dim, scores[i * len + t], vt, dim);
  }
}

// One unit of `attend`'s work: rows [begin, end) of one sequence through KV head g, in `spans` spans of keys.
struct AttendUnit {
  int64_t begin, end, g, spans, offset;  // offset: where its parts start, in heads ([spans, heads, dim] after)
};

// Scratch space of one thread's tasks.
struct AttendScratch {
  std::vector<float> scores, qs, out, stats;
  std::vector<int64_t> seen;
};

// One task of `attend`: the keys of span `span` of `unit` -> its query heads' unnormalized parts and stats
// (parts [unit's spans, its heads, dim] from unit.offset heads on; stats likewise, 2 per head).
template <typename T>
void attend_task(const AttendUnit& unit, int64_t span, const float* q, const T* k_cache, const T* v_cache,
                 const int64_t* key_slots, int64_t key_stride, const int64_t* lens, int64_t heads, int64_t group,
                 int64_t dim, float* parts, float* stats, AttendScratch& scratch) {
  const int64_t kv_width = heads / group * dim, m = (unit.end - unit.begin) * group, g = unit.g;
  const int64_t longest = lens[unit.end - 1];  // rows come in ascending positions
  const int64_t first = longest * span / unit.spans, len = longest * (span + 1) / unit.spans - first;
  const int64_t* slots = key_slots + (unit.end - 1) * key_stride + first;
  float* part = parts + (unit.offset + span * m) * dim;
  float* stat = stats + (unit.offset + span * m) * 2;
  if (m == group) {  // one row: its query heads in registers
    const float* qg = q + (unit.begin * heads + g * group) * dim;  // [group, dim]
    scratch.scores.resize(group * len);  // [group, len]
#if APPLIANCE_VNNI
    if (dim == 64 || dim == 128) {
      (dim == 64 ? attend_heads_vector<4, T> : attend_heads_vector<8, T>)(
          qg, group, k_cache, v_cache, slots, len, kv_width, g * dim, scratch.scores.data(), part, stat);
      return;
    }
#endif
    attend_heads(qg, group, dim, k_cache, v_cache, slots, len, kv_width, g * dim, scratch.scores.data(), part, stat);
    return;
  }
  const float scale = 1.f / std::sqrt(static_cast<float>(dim));
  const int64_t padded = (m + kHeadBlock - 1) / kHeadBlock * kHeadBlock;
  scratch.qs.assign(padded * dim, 0.f);  // [padded, dim]: the rows' query heads of KV head g, scaled; zeros after
  scratch.seen.assign(padded, 0);
  for (int64_t i = 0; i < m; ++i) {
    const int64_t r = unit.begin + i / group;
    const float* qh = q + (r * heads + g * group + i % group) * dim;
    for (int64_t d = 0; d < dim; ++d) scratch.qs[i * dim + d] = qh[d] * scale;
    scratch.seen[i] = std::clamp<int64_t>(lens[r] - first, 0, len);
  }
  scratch.scores.resize(padded * len);  // [padded, len]
  scratch.out.resize(padded * dim);
  scratch.stats.resize(padded * 2);
  attend_rows(scratch.qs.data(), padded, dim, k_cache, v_cache, slots, len, scratch.seen.data(), kv_width, g * dim,
              scratch.scores.data(), scratch.out.data(), scratch.stats.data());
  std::copy(scratch.out.begin(), scratch.out.begin() + m * dim, part);
  std::copy(scratch.stats.begin(), scratch.stats.begin() + m * 2, stat);
}

// Grouped-query attention of each row's query over its sequence's cached keys; also writes each row's own k, v
// first (rows of one sequence in a step see each other's). Rows of a sequence come consecutively (`sequence`:
// [rows] its index per row); key_slots [rows, key_stride]: each row's sequence's slots, lens[r] of them seen.
template <typename T>
void attend(const float* q, const float* k, const float* v, T* k_cache, T* v_cache, const int64_t* write_slots,
            const int64_t* key_slots, int64_t key_stride, const int64_t* lens, const int64_t* sequence, int64_t rows,
            int64_t heads, int64_t kv_heads, int64_t dim, float* out) {
  const int64_t kv_width = kv_heads * dim;
  for (int64_t r = 0; r < rows; ++r) {
    T* kd = k_cache + write_slots[r] * kv_width;
    T* vd = v_cache + write_slots[r] * kv_width;
    for (int64_t i = 0; i < kv_width; ++i) {
      kd[i] = static_cast<T>(k[r * kv_width + i]);
      vd[i] = static_cast<T>(v[r * kv_width + i]);
    }
  }
  // runs of rows by sequence: a few rows each alone, more together (their last row sees the most keys)
  std::vector<std::pair<int64_t, int64_t>> runs;
  for (int64_t r = 0; r < rows;) {
    int64_t end = r + 1;
    while (end < rows && sequence[end] == sequence[r]) ++end;
    if (end - r >= kMinTiledRows) {
      runs.emplace_back(r, end);
    } else {
      for (int64_t i = r; i < end; ++i) runs.emplace_back(i, i + 1);
    }
    r = end;
  }
  // units of work: a run's query heads of one KV head, its keys split into spans where the unit is large
  // against the step's work (a long context, or a chunk's many rows), so that threads get even shares
  const int64_t group = heads / kv_heads, threads = at::get_num_threads();
  int64_t work = 0;  // query heads times keys, over the step
  for (const auto& [begin, end] : runs) work += (end - begin) * group * lens[end - 1] * kv_heads;
  const int64_t share = std::max<int64_t>(1, work / (2 * threads));  // two tasks a thread
  std::vector<AttendUnit> units;
  int64_t total = 0;  // heads' parts, over every unit and span
  for (const auto& [begin, end] : runs) {
    const int64_t cost = (end - begin) * group * lens[end - 1];
    const int64_t spans = std::max<int64_t>(1, std::min((cost + share - 1) / share, lens[end - 1] / kMinSpanKeys));
    for (int64_t g = 0; g < kv_heads; ++g) {
      units.push_back({begin, end, g, spans, total});
      total += spans * (end - begin) * group;
    }
  }
  // tasks (unit, span) to threads, the costliest first, each to the least loaded thread: at::parallel_for would
  // split them by count, and a chunk's task costs as much as dozens of decode rows'
  std::vector<std::pair<int64_t, int64_t>> tasks;
  for (int64_t u = 0; u < static_cast<int64_t>(units.size()); ++u)
    for (int64_t span = 0; span < units[u].spans; ++span) tasks.emplace_back(u, span);
  const auto task_cost = [&](const std::pair<int64_t, int64_t>& task) {
    const AttendUnit& unit = units[task.first];
    return (unit.end - unit.begin) * lens[unit.end - 1] / unit.spans;
  };
  std::stable_sort(tasks.begin(), tasks.end(),
                   [&](const auto& a, const auto& b) { return task_cost(a) > task_cost(b); });
  const int64_t workers = std::min<int64_t>(threads, static_cast<int64_t>(tasks.size()));
  std::vector<std::vector<std::pair<int64_t, int64_t>>> assigned(workers);
  std::vector<int64_t> load(workers, 0);
  for (const auto& task : tasks) {
    const int64_t w = std::min_element(load.begin(), load.end()) - load.begin();
    assigned[w].push_back(task);
    load[w] += task_cost(task);
  }
  std::vector<float> parts(total * dim), stats(total * 2);  // per unit: [spans, its heads, dim]
  at::parallel_for(0, workers, 1, [&](int64_t first_worker, int64_t last_worker) {
    AttendScratch scratch;
    for (int64_t worker = first_worker; worker < last_worker; ++worker)
      for (const auto& [unit, span] : assigned[worker])
        attend_task(units[unit], span, q, k_cache, v_cache, key_slots, key_stride, lens, heads, group, dim,
                    parts.data(), stats.data(), scratch);
  });
  for (const AttendUnit& unit : units) {
    const int64_t m = (unit.end - unit.begin) * group;
    for (int64_t i = 0; i < m; ++i) {
      const int64_t r = unit.begin + i / group, h = unit.g * group + i % group;
      merge_spans(parts.data() + (unit.offset + i) * dim, m * dim, stats.data() + (unit.offset + i) * 2, m * 2,
                  unit.spans, dim, out + (r * heads + h) * dim);
    }
  }
}

}  // namespace appliance
