// Fused k-Adam step on CPU (THEORY §1): every level of every tensor in as few passes over memory as
// the tensor-mode reductions allow. Built by kadam/optimizer/_cpu_kernel.py and called through ctypes; no
// torch headers, so the one-time build is short.
//
// A pass sweeps the blocks of all tensors once. The first reads g (and theta for coupled decay) and
// runs elementwise levels in registers until it reaches a tensor-mode level i: that level's m_i is
// updated (it needs only its input) and sum(x^2) is accumulated for its scalar v_i. Once v_i is known,
// the next pass starts from the stored m_i, forms x^(i) = m_i / denom_i / bc1_i and carries on. The
// final level writes theta. Passes = 1 + number of tensor-mode levels, less one for each tensor-mode
// level without m that follows another (its sum of squares is the previous one's times a scalar, so the
// default k-Adam takes two passes for every k); an elementwise chain moves exactly the floor's bytes,
// and each tensor-mode level re-reads its m once. Tensors go in cache-sized groups (kGroupElements),
// a group's passes in order (the last may overlap the next group's first, below); where the replay after a tensor-mode level starts from an
// elementwise level's output (the default levels), float32/float64 tensors read that output from a
// group-sized buffer written by the pass before, so the replay costs a multiply, not a square root and
// a division: the same values, computed once. A group without the buffer has its theta pass run block by
// block beside the next group's first pass, and the passes that leave streams to the hardware prefetcher
// alone too few to fill one core's bandwidth prefetch them in software.
//
// Arithmetic mirrors torch's CPU kernels for _single_tensor_kadam (lerp as fmadd with torch's weight
// split, addcmul's fused multiply-add), compiled with -ffp-contract=off so float32 results track the
// loop implementation to rounding. The level that writes theta divides where torch divides (k = 1 is
// torch's Adam step); a level that feeds another applies its bias corrections (and a tensor-mode
// level its scalar denominator) as multiplications by reciprocals, one division per element where the
// loop has three: a few units in the last place, and the step is no longer bound by the divider.
// Half and bfloat16 storage runs float math; float64 runs double math.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstddef>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#else  // built without OpenMP (a compiler without it): one thread
inline int omp_get_thread_num() { return 0; }
inline int omp_get_num_threads() { return 1; }
#endif

namespace {

constexpr int64_t kBlock = 4096;      // elements per block: the level-to-level buffer x (16 KiB of float32) stays in L1
constexpr int64_t kChunkBlocks = 8;  // blocks per unit of work handed to a thread (128 KiB of float32)
// Tensors are stepped in groups of at most kGroupElements elements (a larger tensor alone): a buffered group's
// passes all run before the next group starts, so a tensor-mode level's replay finds the group in cache, and
// the output of the elementwise level it replays, kept in a group-sized buffer, saves recomputing the
// square root and division (the step is bound by those, not by memory). A group of 256 KiB of float32 keeps
// the buffer in L2 beside the pass's streams; a single tensor of up to kBufferElements still gets a
// buffer of its own (in L3), which beats recomputing. The pass after the buffer's runs backwards over
// the group, starting where the buffer's lines are most recent. A group without the buffer (a larger tensor,
// 16-bit parameters holding their own state, levels that never replay an output) has its theta pass run
// interleaved with the next group's first pass (see run()); a buffered group's theta pass runs alone, as
// interleaving it would take a second buffer that no longer fits the cache beside it.
constexpr int64_t kGroupElements = int64_t(1) << 16;
constexpr int64_t kBufferElements = int64_t(1) << 20;

// The streams of a pass are prefetched 2 KiB ahead of the element being computed: the hardware prefetcher
// alone leaves one core's streams short of the bandwidth a one-pass step reaches. Loops go kStride elements
// at a time (a whole number of vectors of any lane width), prefetching every 64-byte line of each stream's
// next kStride elements.
constexpr int64_t kStride = 64;
template <typename Q>
inline void prefetch(const Q* p) {
  // The address may lie past the tensor's end: formed as an integer, it is never a pointer out of bounds.
  const uintptr_t ahead = reinterpret_cast<uintptr_t>(p) + 2048;
  for (uintptr_t line = 0; line < uintptr_t(kStride) * sizeof(Q); line += 64) {
    __builtin_prefetch(reinterpret_cast<const void*>(ahead + line), 0, 3);
  }
}

struct alignas(2) BFloat16 {
  uint16_t bits;
};

inline float load(const float* p, int64_t j) { return p[j]; }
inline double load(const double* p, int64_t j) { return p[j]; }
inline float load(const _Float16* p, int64_t j) { return static_cast<float>(p[j]); }
inline float load(const BFloat16* p, int64_t j) {
  uint32_t bits = static_cast<uint32_t>(p[j].bits) << 16;
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

inline void store(float* p, int64_t j, float v) { p[j] = v; }
inline void store(double* p, int64_t j, double v) { p[j] = v; }
inline void store(_Float16* p, int64_t j, float v) { p[j] = static_cast<_Float16>(v); }
inline void store(BFloat16* p, int64_t j, float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  // Round to nearest even, as c10::BFloat16 does; NaN stays a quiet NaN.
  uint16_t rounded = std::isnan(v) ? uint16_t(0x7fc0)
                                   : static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
  p[j].bits = rounded;
}

// `value` rounded as storing it in M rounds it (to nearest even), read back in T.
template <typename M, typename T>
inline T rounded(T value) {
  M slot[1];
  store(slot, 0, value);
  return T(load(slot, 0));
}

// bfloat16's rounding to nearest even in float32's lanes (the same value as store(BFloat16*) then load, without
// going through 16-bit lanes, which costs the vectorized loops a pack and an unpack per value).
template <>
inline float rounded<BFloat16, float>(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  const uint32_t cut = std::isnan(value) ? 0x7fc00000u : (bits + 0x7fffu + ((bits >> 16) & 1u)) & 0xffff0000u;
  float result;
  std::memcpy(&result, &cut, sizeof result);
  return result;
}

// Store a value that M holds exactly (a rounded moment): for bfloat16 its high half, no rounding again.
template <typename M, typename T>
inline void store_exact(M* p, int64_t j, T value) {
  store(p, j, value);
}
inline void store_exact(BFloat16* p, int64_t j, float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  p[j].bits = static_cast<uint16_t>(bits >> 16);
}

// lowbias32 (C. Wellons), the hash of kadam.optimizer.precision.hash32.
inline uint32_t hash32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

// The 16 random bits of element `element` under `key`: H(key + element) >> 16 (element modulo 2^32).
inline uint32_t random16(uint32_t key, uint32_t element) { return hash32(key + element) >> 16; }

// `value` stochastically rounded to bfloat16 (read back as float): r < 2^16 added to float32's bits, the low
// half cut off, so it rounds up with probability equal to its distance from the value below; NaN and inf round
// to nearest.
inline float stochastic_bfloat16(float value, uint32_t random) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  const uint32_t cut = (bits + random) & 0xffff0000u;
  float result;
  std::memcpy(&result, &cut, sizeof result);
  return std::isfinite(value) ? result : rounded<BFloat16>(value);
}

}  // namespace

extern "C" {

// Mirrored by KernelArgs in _cpu_kernel.py, which compares its size and offsets with
// kadam_args_size / kadam_args_offset at load. Per-level arrays are level-major: [level * n_tensors + t].
struct KAdamArgs {
  int64_t n_tensors;
  int32_t n_levels;
  int32_t dtype;  // 0 float32, 1 float64, 2 float16, 3 bfloat16
  int32_t n_threads;
  int32_t decoupled_weight_decay;
  int32_t maximize;
  int32_t store_unscaled_grad;  // write g / grad_scale back into grad, as torch's fused Adam does
  void* const* params;
  void* const* grads;
  void* const* exp_avgs;     // read only for levels with keeps_first_moment (a zero-size tensor's may be null)
  void* const* exp_avg_sqs;  // 0-dim for tensor-mode levels
  const int64_t* numels;
  const double* bias_correction1;
  const double* bias_correction2_sqrt;
  const double* betas;
  const double* gammas;
  const double* eps;
  const int32_t* tensor_modes;
  const int32_t* keeps_first_moment;  // per level: 0 for a level with beta = 0 that stores no m (m = x)
  double lr;
  double weight_decay;
  const float* grad_scale;  // null: no scaling
  void* const* steps;       // per tensor, its step count (a 0-dim tensor) to increment by 1; null: none
  int32_t step_dtype;       // 0 float32, 1 float64
  int32_t state_dtype;      // the moments' dtype, coded as dtype; a moment is stored rounded once
  int32_t stochastic_rounding;     // 1: bfloat16 moments rounded stochastically (state_dtype 3 only)
  const uint32_t* rounding_keys;   // per tensor, H(H(step) + index) (kadam.optimizer.precision); null unless SR
};

// The layout of KAdamArgs as this compiler lays it out, for the loader's check.
int64_t kadam_args_size() { return sizeof(KAdamArgs); }

static const int64_t kArgsOffsets[] = {
    offsetof(KAdamArgs, n_tensors),    offsetof(KAdamArgs, n_levels),
    offsetof(KAdamArgs, dtype),        offsetof(KAdamArgs, n_threads),
    offsetof(KAdamArgs, decoupled_weight_decay), offsetof(KAdamArgs, maximize),
    offsetof(KAdamArgs, store_unscaled_grad),    offsetof(KAdamArgs, params),
    offsetof(KAdamArgs, grads),        offsetof(KAdamArgs, exp_avgs),
    offsetof(KAdamArgs, exp_avg_sqs),  offsetof(KAdamArgs, numels),
    offsetof(KAdamArgs, bias_correction1), offsetof(KAdamArgs, bias_correction2_sqrt),
    offsetof(KAdamArgs, betas),        offsetof(KAdamArgs, gammas),
    offsetof(KAdamArgs, eps),          offsetof(KAdamArgs, tensor_modes),
    offsetof(KAdamArgs, keeps_first_moment),
    offsetof(KAdamArgs, lr),           offsetof(KAdamArgs, weight_decay),
    offsetof(KAdamArgs, grad_scale),   offsetof(KAdamArgs, steps),
    offsetof(KAdamArgs, step_dtype),   offsetof(KAdamArgs, state_dtype),
    offsetof(KAdamArgs, stochastic_rounding), offsetof(KAdamArgs, rounding_keys),
};

int64_t kadam_args_field_count() { return int64_t(sizeof kArgsOffsets / sizeof kArgsOffsets[0]); }

int64_t kadam_args_offset(int64_t field) {
  return field >= 0 && field < kadam_args_field_count() ? kArgsOffsets[field] : -1;
}

}  // extern "C"

namespace {

template <typename P, typename M, typename T, bool SR>
class Stepper {
 public:
  explicit Stepper(const KAdamArgs& a)
      : a_(a), old_v_(size_t(a.n_tensors) * a.n_levels), replay_offset_(size_t(a.n_tensors), -1) {
    // Tensor-mode v before this step, read once so that every thread can finish a reduction alone.
    for (int i = 0; i < a_.n_levels; ++i) {
      if (!a_.tensor_modes[i]) continue;
      for (int64_t t = 0; t < a_.n_tensors; ++t) old_v_[level_index(i, t)] = load(tensor<M>(a_.exp_avg_sqs, i, t), 0);
    }
  }

  // Each pass is one sweep over a group's tensors in chunks of up to kChunkBlocks blocks, handed to threads
  // as they come free (a thread that starts late on a busy machine takes fewer). A pass ending at a
  // tensor-mode level joins once, after which every thread adds the per-chunk sums of each tensor in chunk
  // order: the same v and denominators in every thread, whatever the thread count or the order chunks ran in
  // (thread 0 stores v). Where a step takes several passes, the pass that writes theta for a group without
  // the replay buffer (it re-reads m and v) runs interleaved, block by block, with the next group's first
  // pass: the two touch different tensors, and together they keep as many streams in flight as a one-pass
  // step does, where either alone leaves one core's memory bandwidth partly idle. A buffered group's theta
  // pass runs alone: interleaving it would take a second buffer, which no longer fits the cache beside the
  // streams. Each block is computed as it would be alone, so the results do not depend on the interleaving.
  void run() {
    struct Chunk {
      int64_t tensor, first_block, end_block;
    };
    std::vector<Chunk> chunks;
    std::vector<int64_t> first_chunk(a_.n_tensors + 1, 0);
    for (int64_t t = 0; t < a_.n_tensors; ++t) {
      const int64_t n_blocks = (a_.numels[t] + kBlock - 1) / kBlock;
      for (int64_t b = 0; b < n_blocks; b += kChunkBlocks) chunks.push_back({t, b, std::min(b + kChunkBlocks, n_blocks)});
      first_chunk[t + 1] = int64_t(chunks.size());
    }
    // The passes of every group: each starts at level `first` and ends at tensor-mode level `end` (then the
    // next starts after the chain of tensor-mode levels without m that follows it) or at n_levels (theta).
    struct Pass {
      int first, end;
    };
    std::vector<Pass> passes;
    for (int first = 0;;) {
      int end = pass_end(first);
      passes.push_back({first, end});
      if (end == a_.n_levels) break;
      while (chains_to_next(end)) ++end;  // per level, the same for every tensor
      first = end + 1;
    }
    // Groups of consecutive tensors of at most kGroupElements elements (a larger tensor alone); a group
    // of at most kBufferElements gets the replay buffer, unless the parameters' own 16-bit state fed the pass
    // unrounded (then the replay must read the rounded m and v, as the loop implementation does).
    std::vector<int64_t> group_starts;
    std::vector<char> buffered;  // per group: whether it gets the buffer
    int64_t buffer_elements = 0;
    for (int64_t t = 0; t < a_.n_tensors;) {
      group_starts.push_back(t);
      int64_t size = a_.numels[t], u = t + 1;
      while (u < a_.n_tensors && size + a_.numels[u] <= kGroupElements) size += a_.numels[u++];
      const bool buffer = (kReadStored || std::is_same<P, T>::value) && size <= kBufferElements && uses_replay_buffer();
      buffered.push_back(buffer);
      if (buffer) {
        for (int64_t offset = 0; t < u; offset += a_.numels[t++]) replay_offset_[t] = offset;
        buffer_elements = std::max(buffer_elements, size);
      }
      t = u;
    }
    group_starts.push_back(a_.n_tensors);
    const int64_t n_groups = int64_t(buffered.size());
    if (buffer_elements > 0) replay_buffer_.reset(new T[size_t(buffer_elements)]);
    const int64_t n_chunks = int64_t(chunks.size());
    std::vector<double> chunk_sums(size_t(n_chunks) * a_.n_levels);
    const Pass last = passes.back();
#pragma omp parallel num_threads(a_.n_threads)
    {
      T x[kBlock];
      std::vector<T> carried(size_t(a_.n_tensors) * a_.n_levels);  // tensor-mode denominators, by level
      for (int64_t g = 0; g < n_groups; ++g) {
        const int64_t group_first = group_starts[size_t(g)], group_end = group_starts[size_t(g) + 1];
        const int64_t b_begin = first_chunk[group_first], b_end = first_chunk[group_end];
        for (size_t p = 0; p + 1 < passes.size(); ++p) {
          const Pass pass_p = passes[p];
          double* sums = chunk_sums.data() + size_t(pass_p.end) * n_chunks;
          // The previous group's last pass goes with this group's first (chunks [a_begin, a_end)). A pass after
          // the first runs backwards: the previous pass's last chunks (their buffer, m and v) are the ones still
          // in cache when it ends.
          const bool with_previous = p == 0 && g > 0 && !buffered[size_t(g) - 1];
          const int64_t a_begin = with_previous ? first_chunk[group_starts[size_t(g) - 1]] : 0;
          const int64_t a_end = with_previous ? b_begin : 0;
          const int64_t n_a = a_end - a_begin, n_b = b_end - b_begin;
#pragma omp for schedule(dynamic, 1) nowait
          for (int64_t i = 0; i < std::max(n_a, n_b); ++i) {
            const Chunk* chunk_a = i < n_a ? &chunks[size_t(a_end - 1 - i)] : nullptr;
            const int64_t c = pass_p.first > 0 ? b_end - 1 - i : b_begin + i;
            const Chunk* chunk_b = i < n_b ? &chunks[size_t(c)] : nullptr;
            int64_t block_a = chunk_a ? chunk_a->first_block : 0, block_b = chunk_b ? chunk_b->first_block : 0;
            double sum = 0.0;
            while ((chunk_a && block_a < chunk_a->end_block) || (chunk_b && block_b < chunk_b->end_block)) {
              if (chunk_a && block_a < chunk_a->end_block) {
                pass(chunk_a->tensor, last.first, block_a * kBlock, (block_a + 1) * kBlock, carried.data(), x);
                ++block_a;
              }
              if (chunk_b && block_b < chunk_b->end_block) {
                sum += pass(chunk_b->tensor, pass_p.first, block_b * kBlock, (block_b + 1) * kBlock, carried.data(), x);
                ++block_b;
              }
            }
            if (chunk_b) sums[c] = sum;
          }
          // The join also ends the previous group's theta pass, where it ran here.
#pragma omp barrier
          for (int64_t t = group_first; t < group_end; ++t) {
            double total = 0.0;
            for (int64_t k = first_chunk[t]; k < first_chunk[t + 1]; ++k) total += sums[k];
            carried[level_index(pass_p.end, t)] = finish_reduction(t, pass_p.end, total, omp_get_thread_num() == 0);
            // A tensor-mode level without m outputs its input times a per-tensor scalar s, so the next
            // level's sum of squares is s^2 times this one's: a chain of such levels (the default meta
            // levels) needs no pass of its own.
            for (int level = pass_p.end; chains_to_next(level); ++level) {
              const double scale = tensor_scale(level_index(level, t), carried[level_index(level, t)]);
              total *= scale * scale;
              carried[level_index(level + 1, t)] = finish_reduction(t, level + 1, total, omp_get_thread_num() == 0);
            }
          }
        }
        // The pass that writes theta: here for a one-pass step and for the last group; otherwise with the next
        // group's first pass. No join: nothing after it reads what it writes.
        if (passes.size() == 1 || g + 1 == n_groups || buffered[size_t(g)]) {
#pragma omp for schedule(dynamic, 1) nowait
          for (int64_t i = b_begin; i < b_end; ++i) {
            const Chunk& chunk = chunks[size_t(last.first > 0 ? b_end - 1 - (i - b_begin) : i)];
            for (int64_t b = chunk.first_block; b < chunk.end_block; ++b) {
              pass(chunk.tensor, last.first, b * kBlock, (b + 1) * kBlock, carried.data(), x);
            }
          }
          // The next group's first pass overwrites the buffer: every thread must be done reading it.
          if (buffered[size_t(g)] && g + 1 < n_groups) {
#pragma omp barrier
          }
        }
      }
    }
  }

 private:
  size_t level_index(int level, int64_t t) const { return size_t(level) * a_.n_tensors + t; }

  template <typename Q>
  Q* tensor(void* const* list, int level, int64_t t) const {
    return static_cast<Q*>(list[level_index(level, t)]);
  }

  // True when tensor-mode level `level` stores no m and the level after it is another such level: the
  // second one's v follows from the first's sum (see run()). A property of the levels, never of a tensor.
  bool chains_to_next(int level) const {
    return level + 1 < a_.n_levels && ends_at_unstored_tensor_level(level) && ends_at_unstored_tensor_level(level + 1);
  }

  // The level that ends the pass starting at level `first` (0-based): the first tensor-mode level from
  // `first` on, or n_levels when the pass reaches theta.
  int pass_end(int first) const {
    int i = first;
    while (i < a_.n_levels && !a_.tensor_modes[i]) ++i;
    return i;
  }

  // Moments in a dtype other than the parameters' (state_dtype), or stochastically rounded, feed the levels as
  // stored (every implementation reads them so); the parameters' own 16-bit state feeds them unrounded.
  static constexpr bool kReadStored = SR || !std::is_same<P, M>::value;

  // The value of a moment that the step goes on with: the value as stored (rounded once to M, to nearest or
  // (SR) stochastically with the random bits of element `element` under `key`) where kReadStored, else the
  // value itself (store() rounds it when it is written).
  static T round_moment(T value, uint32_t key, uint32_t element) {
    if constexpr (SR) {
      return T(stochastic_bfloat16(float(value), random16(key, element)));
    } else if constexpr (kReadStored) {
      (void)key;
      (void)element;
      return rounded<M>(value);
    } else {
      (void)key;
      (void)element;
      return value;
    }
  }

  // Store a moment's value from round_moment: exact in M where kReadStored (no second rounding), else rounded.
  static void put_moment(M* p, int64_t j, T value) {
    if constexpr (kReadStored) {
      store_exact(p, j, value);
    } else {
      store(p, j, value);
    }
  }

  // The stochastic-rounding key of moment `which` (0: m, 1: v) of level `level` of tensor t: H(base_t + moment).
  uint32_t moment_key(int level, int which, int64_t t) const {
    return SR ? hash32(a_.rounding_keys[t] + uint32_t(2 * level + which)) : 0u;
  }

  // Tensor-mode level `level` after its pass: v <- gamma v + (1 - gamma) mean(x^2), as the loop's mul_
  // then add_; returns the denominator sqrt(v) / sqrt(1 - gamma^n) + eps that the next pass uses.
  T finish_reduction(int64_t t, int level, double sum, bool store_v) const {
    const size_t index = level_index(level, t);
    const T mean_square = a_.numels[t] > 0 ? T(sum / double(a_.numels[t])) : T(0);  // empty tensor: 0
    const T v = round_moment(T(old_v_[index] * T(a_.gammas[level])) + T(T(1.0 - a_.gammas[level]) * mean_square),
                             moment_key(level, 1, t), 0);
    if (store_v) put_moment(tensor<M>(a_.exp_avg_sqs, level, t), 0, v);
    return T(std::sqrt(v) / T(a_.bias_correction2_sqrt[index])) + T(a_.eps[level]);
  }

  // One pass over elements [begin, min(end, numel)) of tensor t, from level `first` on; returns the
  // sum of squares of the input of the tensor-mode level that ends the pass (0 if theta ends it).
  // `carried_by_level` holds the denominators of the tensor-mode levels that ended earlier passes.
  double pass(int64_t t, int first, int64_t begin, int64_t end, const T* carried_by_level, T* x) const {
    end = end < a_.numels[t] ? end : a_.numels[t];
    const int64_t n = end - begin;
    const int last = a_.n_levels - 1;
    // A plain gradient (no unscaling, no L2 term) feeds an elementwise level 1 straight from memory.
    const bool from_grad = first == 0 && !a_.tensor_modes[0] && !a_.grad_scale && !coupled_decay();
    if (first == 0 && !from_grad) {
      load_input(t, begin, n, x);
    } else if (first > 0) {
      // Resume from the m of the tensor-mode level that ended the previous pass; a level with beta = 0
      // stores none (m = x), so its input is recomputed from the state this step already wrote.
      const int source = first - 1;
      if (const int below = direct_replay_source(source); below >= 0) {
        return direct_replay(t, below, source, begin, n, carried_by_level);
      }
      const size_t index = level_index(source, t);
      const T carried = carried_by_level[index];
      const M* m = first_moment(source, t, begin);
      if (!m) replay_input(t, source, begin, n, carried_by_level, x);
      if (source == last) {
        P* param = static_cast<P*>(a_.params[t]) + begin;
        const T scale = T(step_size(index) / carried), keep = shrink();
        if (m) {
          for (int64_t j = 0; j < n; ++j) store(param, j, T(load(param, j) * keep) + T(T(load(m, j)) * scale));
        } else {
          for (int64_t j = 0; j < n; ++j) store(param, j, T(load(param, j) * keep) + T(x[j] * scale));
        }
        return 0.0;
      }
      resume(m, tensor_scale(index, carried), n, x);
    }
    for (int i = first; i <= last; ++i) {
      // torch's lerp: fmadd(w, end - start, start) for |w| < 0.5, else fmadd(w - 1, end - start, end).
      const bool small = std::fabs(T(1.0 - a_.betas[i])) < T(0.5);
      if (a_.tensor_modes[i]) return small ? tensor_level<true>(i, t, begin, n, x) : tensor_level<false>(i, t, begin, n, x);
      const int out = i == last ? kToParam : ends_at_unstored_tensor_level(i + 1) ? kToSum : kToX;
      const double sum = kElementwise[small][out][from_grad && i == 0](*this, i, t, begin, n, x);
      if (out == kToSum) return sum;
    }
    return 0.0;
  }

  // Whether level i stores its first moment: the level's flag, not its tensors' pointers (the data pointer
  // of a zero-size tensor may be null whether or not the level keeps m).
  bool keeps_m(int i) const { return a_.keeps_first_moment[i] != 0; }

  // True when level i is a tensor-mode level that stores no m: a pass reaching it needs only sum(x^2).
  bool ends_at_unstored_tensor_level(int i) const { return a_.tensor_modes[i] && !keeps_m(i); }

  // The default strategy's shape (THEORY §1): an elementwise level e with a stored m, then only tensor-mode
  // levels that store no m up to `source`, so the input of level source + 1 is norm_e(m_e, v_e) times a
  // per-tensor scalar. Returns e when that holds and the pass after `source` writes theta or ends at
  // another such tensor-mode level (then direct_replay does the pass in one loop), else -1.
  int direct_replay_source(int source) const {
    int e = source;
    while (e >= 0 && ends_at_unstored_tensor_level(e)) --e;
    if (e < 0 || e == source || a_.tensor_modes[e] || !keeps_m(e)) return -1;
    const int next = source + 1;
    return next == a_.n_levels || ends_at_unstored_tensor_level(next) ? e : -1;
  }

  // The pass after tensor-mode level `source` in the shape direct_replay_source found, in one loop over
  // m_e, v_e (and theta): x = norm_e(m_e, v_e) * prod 1 / (denominator * (1 - beta^n)) over the tensor-mode
  // levels e + 1 .. source; then theta <- theta * (1 - lr wd) - lr x, or the sum of x^2 for the next level.
  double direct_replay(int64_t t, int e, int source, int64_t begin, int64_t n, const T* carried_by_level) const {
    double scale = 1.0;
    for (int i = e + 1; i <= source; ++i) scale *= tensor_scale(level_index(i, t), carried_by_level[level_index(i, t)]);
    const Normalizer norm = normalizer(e, t);
    const M* m = first_moment(e, t, begin);
    const M* v = tensor<M>(a_.exp_avg_sqs, e, t) + begin;
    if (const T* kept = replay_output(t, begin)) {  // norm_e(m_e, v_e) as the pass before computed it
      if (source + 1 == a_.n_levels) {
        P* param = static_cast<P*>(a_.params[t]) + begin;
        const T factor = T(-a_.lr * scale), keep = shrink();
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) store(param, j, T(load(param, j) * keep) + T(kept[j] * factor));
        return 0.0;
      }
      const T factor = T(scale);
      double sum = 0.0;
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < n; ++j) {
        const double x = T(kept[j] * factor);
        sum += x * x;
      }
      return sum;
    }
    if (source + 1 == a_.n_levels) {
      P* param = static_cast<P*>(a_.params[t]) + begin;
      const T factor = T(-a_.lr * scale), keep = shrink();
      for (int64_t j0 = 0; j0 < n; j0 += kStride) {
        const int64_t j1 = std::min(n, j0 + kStride);
        prefetch(m + j0);
        prefetch(v + j0);
        prefetch(param + j0);
#pragma omp simd
        for (int64_t j = j0; j < j1; ++j) {
          store(param, j, T(load(param, j) * keep) + T(norm(T(load(m, j)), T(load(v, j))) * factor));
        }
      }
      return 0.0;
    }
    const T factor = T(scale);
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < n; ++j) {
      const double x = T(norm(T(load(m, j)), T(load(v, j))) * factor);
      sum += x * x;
    }
    return sum;
  }

  // Level i's stored first moment from element `begin` of tensor t, or null (beta = 0: not stored).
  const M* first_moment(int i, int64_t t, int64_t begin) const {
    return keeps_m(i) ? tensor<M>(a_.exp_avgs, i, t) + begin : nullptr;
  }

  // x <- the input of level `level` for elements [begin, begin + n) of tensor t, from what this step has
  // already stored: the gradient (unscaled in place when GradScaler's scale was given), then the output
  // of each level below, as the first pass formed it. Exact: the same operations on the same values.
  void replay_input(int64_t t, int level, int64_t begin, int64_t n, const T* carried_by_level, T* x) const {
    int start = level;
    while (start > 0 && !a_.tensor_modes[start - 1]) --start;
    if (start < level && keeps_m(start)) {
      // The first replayed level reads its stored m, so its input is not needed: not even the gradient.
    } else if (start == 0) {
      const P* grad = static_cast<const P*>(a_.grads[t]) + begin;
      const P* param = static_cast<const P*>(a_.params[t]) + begin;
      const bool divide = a_.grad_scale && !a_.store_unscaled_grad;
      const T scale = divide ? T(*a_.grad_scale) : T(1);
      for (int64_t j = 0; j < n; ++j) x[j] = divide ? T(load(grad, j) / scale) : T(load(grad, j));
      if (a_.maximize) {
        for (int64_t j = 0; j < n; ++j) x[j] = -x[j];
      }
      if (coupled_decay()) {
        const T decay = T(a_.weight_decay);
        for (int64_t j = 0; j < n; ++j) x[j] = std::fma(load(param, j), decay, x[j]);
      }
    } else {
      const int below = start - 1;  // the tensor-mode level that ended the pass before
      const size_t index = level_index(below, t);
      const M* m = first_moment(below, t, begin);
      if (!m) replay_input(t, below, begin, n, carried_by_level, x);
      resume(m, tensor_scale(index, carried_by_level[index]), n, x);
    }
    for (int i = start; i < level; ++i) {  // elementwise levels, their m and v updated this step
      const Normalizer norm = normalizer(i, t);
      const M* m = first_moment(i, t, begin);
      const M* v = tensor<M>(a_.exp_avg_sqs, i, t) + begin;
      if (m) {
        for (int64_t j = 0; j < n; ++j) x[j] = norm(T(load(m, j)), T(load(v, j)));
      } else {
        for (int64_t j = 0; j < n; ++j) x[j] = norm(x[j], T(load(v, j)));
      }
    }
  }

  // x^(i) of an elementwise level that feeds another level: m / (sqrt(v) / sqrt(1 - gamma^n) + eps)
  // / (1 - beta^n), with both bias corrections applied as multiplications by their reciprocals (one
  // division per element; the level that writes theta keeps torch's operation order instead).
  struct Normalizer {
    T inv_bc2_sqrt, eps, inv_bc1;
    T operator()(T m, T v) const { return T(m / T(T(std::sqrt(v) * inv_bc2_sqrt) + eps)) * inv_bc1; }
  };
  Normalizer normalizer(int i, int64_t t) const {
    const size_t index = level_index(i, t);
    return {T(1.0 / a_.bias_correction2_sqrt[index]), T(a_.eps[i]), T(1.0 / a_.bias_correction1[index])};
  }

  // The factor 1 / (denominator * (1 - beta^n)) that turns a tensor-mode level's m into its output.
  T tensor_scale(size_t index, T carried) const { return T(1.0 / (double(carried) * a_.bias_correction1[index])); }

  // x <- m * scale (x * scale in place where m is not stored).
  void resume(const M* m, T scale, int64_t n, T* x) const {
    if (m) {
      for (int64_t j = 0; j < n; ++j) x[j] = T(load(m, j)) * scale;
    } else {
      for (int64_t j = 0; j < n; ++j) x[j] *= scale;
    }
  }

  // m <- lerp(m, x, 1 - beta) for a tensor-mode level; returns sum(x^2) for its scalar v.
  template <bool Small>
  double tensor_level(int i, int64_t t, int64_t begin, int64_t n, const T* x) const {
    if (keeps_m(i)) {
      M* m = tensor<M>(a_.exp_avgs, i, t) + begin;
      const T coeff = lerp_coefficient(i);
      const uint32_t key = moment_key(i, 0, t) + uint32_t(begin);  // element begin + j: key + begin + j
      for (int64_t j = 0; j < n; ++j) {
        const T old = load(m, j);
        put_moment(m, j, round_moment(std::fma(coeff, T(x[j] - old), Small ? old : x[j]), key, uint32_t(j)));
      }
    }  // else beta = 0: m = x is not stored (the next pass replays x)
    return sum_of_squares(x, n);
  }

  // sum(x^2) in double over kLanes independent partial sums (one accumulator would make the loop wait
  // on the adder's latency for every vector), added in a fixed order.
  static double sum_of_squares(const T* x, int64_t n) {
    constexpr int64_t kLanes = 32;
    double partial[kLanes] = {};
    int64_t j = 0;
    for (; j + kLanes <= n; j += kLanes) {
      for (int64_t l = 0; l < kLanes; ++l) partial[l] += double(x[j + l]) * double(x[j + l]);
    }
    for (int64_t l = 0; j < n; ++j, ++l) partial[l] += double(x[j]) * double(x[j]);
    double sum = 0.0;
    for (int64_t l = 0; l < kLanes; ++l) sum += partial[l];
    return sum;
  }

  // Where an elementwise level's output goes: into x for the next level, into theta (the loop's mul_ +
  // addcdiv_), or only into sum(x^2) when the next level is a tensor-mode level that stores no m (its
  // pass ends there, and the next pass replays x).
  enum Output { kToX = 0, kToParam = 1, kToSum = 2 };

  // An elementwise level, m and v updated in place. Its input is x, or (FromGrad) the gradient read
  // straight from memory. One loop touches every stream of the pass, so the memory system always has
  // all of them in flight (a second loop over x in L1 would leave it idle). Returns sum(x^2) (kToSum).
  template <bool Small, int Out, bool FromGrad>
  double elementwise_level(int i, int64_t t, int64_t begin, int64_t n, T* x) const {
    const size_t index = level_index(i, t);
    M* m = keeps_m(i) ? tensor<M>(a_.exp_avgs, i, t) + begin : nullptr;  // null: m = x
    // Element begin + j of a moment takes the bits of H(key + begin + j): the block's offset goes into the key.
    const uint32_t m_key = moment_key(i, 0, t) + uint32_t(begin), v_key = moment_key(i, 1, t) + uint32_t(begin);
    M* v = tensor<M>(a_.exp_avg_sqs, i, t) + begin;
    const P* grad = static_cast<const P*>(a_.grads[t]) + begin;
    P* param = static_cast<P*>(a_.params[t]) + begin;
    const T coeff = lerp_coefficient(i);
    const T sign = a_.maximize ? T(-1) : T(1);  // exact: g * 1 == g, g * -1 == -g
    const T gamma = T(a_.gammas[i]);
    const T one_minus_gamma = T(1.0 - a_.gammas[i]);
    const T bc2_sqrt = T(a_.bias_correction2_sqrt[index]);
    const T eps = T(a_.eps[i]);
    const T step = step_size(index), keep = shrink();
    const Normalizer norm = normalizer(i, t);
    // kToSum: the output is kept for the next pass's replay, in the group's buffer when t has one, else in
    // x (its element j is read before it is overwritten), where nothing reads it.
    T* kept = nullptr;
    if (Out == kToSum) {
      kept = replay_output(t, begin);
      if (!kept) kept = x;
    }
    // One loop per case of m (stored or not), so that the vectorized loop has no masked loads and stores.
    T sum = 0;
    auto loop = [&](auto keeps) {
      constexpr bool kKeeps = decltype(keeps)::value;
      for (int64_t j0 = 0; j0 < n; j0 += kStride) {
        if constexpr (FromGrad) prefetch(grad + j0);
        if constexpr (kKeeps) prefetch(m + j0);
        prefetch(v + j0);
        if (Out == kToParam) prefetch(param + j0);
        const int64_t j1 = std::min(n, j0 + kStride);
#pragma omp simd reduction(+ : sum)
        for (int64_t j = j0; j < j1; ++j) {
          const T input = FromGrad ? T(load(grad, j) * sign) : x[j];
          T m_new = input;
          if constexpr (kKeeps) {
            const T old = load(m, j);
            m_new = round_moment(std::fma(coeff, T(input - old), Small ? old : input), m_key, uint32_t(j));
            put_moment(m, j, m_new);
          }
          const T v_new =
              round_moment(std::fma(T(one_minus_gamma * input), input, T(load(v, j) * gamma)), v_key, uint32_t(j));
          put_moment(v, j, v_new);
          if (Out == kToParam) {
            const T denom = T(std::sqrt(v_new) / bc2_sqrt) + eps;
            store(param, j, T(load(param, j) * keep) + T(T(step * m_new) / denom));
          } else if (Out == kToX) {
            x[j] = norm(m_new, v_new);
          } else {
            const T out = norm(m_new, v_new);
            kept[j] = out;
            sum += out * out;
          }
        }
      }
    };
    if (m) {
      loop(std::true_type{});
    } else {
      loop(std::false_type{});
    }
    // kToSum: sum(x^2) in the same loop, from registers, in T's lanes over each kStride elements, those sums
    // added in T over the block (a block's sum in double follows; blocks are added in double): a second loop
    // reading the block back would wait for each store's line to arrive before it could load it, and
    // converting every square to double costs the loop more.
    return Out == kToSum ? double(sum) : 0.0;
  }

  using LevelKernel = double (*)(const Stepper&, int, int64_t, int64_t, int64_t, T*);
  template <bool Small, int Out, bool FromGrad>
  static double level_kernel(const Stepper& self, int i, int64_t t, int64_t begin, int64_t n, T* x) {
    return self.elementwise_level<Small, Out, FromGrad>(i, t, begin, n, x);
  }
  // Indexed [small][output][from_grad].
  static constexpr LevelKernel kElementwise[2][3][2] = {
      {{level_kernel<false, kToX, false>, level_kernel<false, kToX, true>},
       {level_kernel<false, kToParam, false>, level_kernel<false, kToParam, true>},
       {level_kernel<false, kToSum, false>, level_kernel<false, kToSum, true>}},
      {{level_kernel<true, kToX, false>, level_kernel<true, kToX, true>},
       {level_kernel<true, kToParam, false>, level_kernel<true, kToParam, true>},
       {level_kernel<true, kToSum, false>, level_kernel<true, kToSum, true>}},
  };

  T lerp_coefficient(int i) const {
    const T weight = T(1.0 - a_.betas[i]);
    return std::fabs(weight) < T(0.5) ? weight : T(weight - T(1));
  }
  T step_size(size_t index) const { return T(-(a_.lr / a_.bias_correction1[index])); }
  // Decoupled decay's factor; 1 without it (theta * 1 is exact, so the loops stay branch-free).
  T shrink() const { return a_.decoupled_weight_decay ? T(1.0 - a_.lr * a_.weight_decay) : T(1); }
  bool coupled_decay() const { return a_.weight_decay != 0.0 && !a_.decoupled_weight_decay; }

  // x^(0) = g / grad_scale, negated to maximize, plus wd * theta for coupled (L2) decay.
  void load_input(int64_t t, int64_t begin, int64_t n, T* x) const {
    P* grad = static_cast<P*>(a_.grads[t]) + begin;
    const P* param = static_cast<const P*>(a_.params[t]) + begin;
    if (a_.grad_scale) {
      const T scale = T(*a_.grad_scale);
      for (int64_t j = 0; j < n; ++j) x[j] = load(grad, j) / scale;
      if (a_.store_unscaled_grad) {
        for (int64_t j = 0; j < n; ++j) store(grad, j, x[j]);
      }
    } else {
      for (int64_t j = 0; j < n; ++j) x[j] = load(grad, j);
    }
    if (a_.maximize) {
      for (int64_t j = 0; j < n; ++j) x[j] = -x[j];
    }
    if (coupled_decay()) {
      const T decay = T(a_.weight_decay);
      for (int64_t j = 0; j < n; ++j) x[j] = std::fma(load(param, j), decay, x[j]);
    }
  }

  // True when some pass ends at a tensor-mode level that stores no m right after an elementwise level with
  // a stored m (the shape direct_replay replays): only then is the replay buffer read.
  bool uses_replay_buffer() const {
    for (int i = 0; i + 1 < a_.n_levels; ++i) {
      if (!a_.tensor_modes[i] && keeps_m(i) && ends_at_unstored_tensor_level(i + 1)) return true;
    }
    return false;
  }

  // Where the output of tensor t's elementwise level goes for elements from `begin` when the next level
  // is a tensor-mode level without m (the pass after it reads it back), or null: no buffer for t.
  T* replay_output(int64_t t, int64_t begin) const {
    return replay_offset_[t] >= 0 ? replay_buffer_.get() + replay_offset_[t] + begin : nullptr;
  }

  const KAdamArgs& a_;
  std::vector<T> old_v_;
  std::vector<int64_t> replay_offset_;  // element offset of each tensor in the replay buffer, -1: none
  std::unique_ptr<T[]> replay_buffer_;
};

template <typename P, typename M, typename T, bool SR = false>
void run(const KAdamArgs& args) {
  Stepper<P, M, T, SR>(args).run();
}

}  // namespace

// step <- step + 1 for every tensor, as torch's _foreach_add_(state_steps, 1) (one call here instead of a
// dispatch per 0-dim tensor, which costs more than the step itself on a small model).
static void increment_steps(const KAdamArgs& args) {
  if (!args.steps) return;
  for (int64_t t = 0; t < args.n_tensors; ++t) {
    if (args.step_dtype == 0) {
      *static_cast<float*>(args.steps[t]) += 1.0f;
    } else {
      *static_cast<double*>(args.steps[t]) += 1.0;
    }
  }
}

// Runs the kernel for parameter dtype P (math in T) and moments of `state_dtype`: P's own, float32 or bfloat16
// (stochastically rounded with `sr`); false for another state dtype.
template <typename P, typename T>
static bool run_state(const KAdamArgs& args) {
  if (args.stochastic_rounding) {
    if (args.state_dtype != 3 || !args.rounding_keys) return false;
    run<P, BFloat16, T, true>(args);
  } else if (args.state_dtype == args.dtype) {
    run<P, P, T>(args);
  } else if (args.state_dtype == 0) {
    run<P, float, T>(args);
  } else if (args.state_dtype == 3) {
    run<P, BFloat16, T>(args);
  } else {
    return false;
  }
  return true;
}

// 0 on success; 1 (nothing written) for an unknown parameter, state or step dtype.
extern "C" int kadam_fused_step(const KAdamArgs* args) {
  if (args->dtype < 0 || args->dtype > 3 || (args->steps && args->step_dtype != 0 && args->step_dtype != 1)) return 1;
  const bool known_state = args->state_dtype == args->dtype || args->state_dtype == 0 || args->state_dtype == 3;
  if (!known_state || (args->stochastic_rounding && (args->state_dtype != 3 || !args->rounding_keys))) return 1;
  increment_steps(*args);
  bool ran = false;
  switch (args->dtype) {
    case 0: ran = run_state<float, float>(*args); break;
    case 1: ran = run_state<double, double>(*args); break;
    case 2: ran = run_state<_Float16, float>(*args); break;
    case 3: ran = run_state<BFloat16, float>(*args); break;
    default: break;
  }
  return ran ? 0 : 1;
}
