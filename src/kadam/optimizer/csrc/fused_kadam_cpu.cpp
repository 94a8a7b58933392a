// Fused k-Adam step on CPU (THEORY §1): every level of every tensor in as few passes over memory as
// the tensor-mode reductions allow. Built by kadam/optimizer/_fused.py and called through ctypes; no
// torch headers, so the one-time build takes about a second.
//
// One pass streams a tensor once. The first pass reads g (and theta for coupled decay) and runs
// elementwise levels in registers until it reaches a tensor-mode level i: that level's m_i is updated
// (it needs only its input) and sum(x^2) is accumulated for its scalar v_i. Once v_i is known, the next
// pass starts from the stored m_i, forms x^(i) = m_i / denom_i / bc1_i and carries on. The final level
// writes theta. Passes = 1 + number of tensor-mode levels; memory traffic is the floor for elementwise
// chains and m_i is re-read once per tensor-mode level.
//
// Arithmetic mirrors torch's CPU kernels for _single_tensor_kadam (lerp as fmadd with torch's weight
// split, addcmul and addcdiv unfused, divisions where torch divides), compiled with -ffp-contract=off
// so float32 results track the loop implementation to rounding. Half and bfloat16 storage runs float
// math; float64 runs double math.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <omp.h>
#include <vector>

namespace {

constexpr int64_t kBlock = 1024;  // elements per block: x stays in L1 between levels

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

}  // namespace

extern "C" {

// Mirrored by _KernelArgs in _fused.py. Per-level arrays are level-major: [level * n_tensors + t].
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
  void* const* exp_avgs;
  void* const* exp_avg_sqs;  // 0-dim for tensor-mode levels
  const int64_t* numels;
  const double* bias_correction1;
  const double* bias_correction2_sqrt;
  const double* betas;
  const double* gammas;
  const double* eps;
  const int32_t* tensor_modes;
  double lr;
  double weight_decay;
  const float* grad_scale;  // null: no scaling
};

}  // extern "C"

namespace {

template <typename S, typename T>
class Stepper {
 public:
  explicit Stepper(const KAdamArgs& a) : a_(a), denoms_(size_t(a.n_tensors) * a.n_levels) {}

  void run() {
    std::vector<int64_t> small_tensors, large_tensors;
    for (int64_t t = 0; t < a_.n_tensors; ++t) {
      (a_.numels[t] >= kParallelNumel ? large_tensors : small_tensors).push_back(t);
    }
    std::vector<double> partials(a_.n_threads);
    const int64_t n_small = int64_t(small_tensors.size());
#pragma omp parallel num_threads(a_.n_threads)
    {
      T x[kBlock];
      T denom[kBlock];
      // Small tensors: one thread runs every pass of a tensor, no barriers.
#pragma omp for schedule(dynamic, 1)
      for (int64_t s = 0; s < n_small; ++s) {
        const int64_t t = small_tensors[s];
        for (int first = 0; first <= a_.n_levels; first = pass_end(first) + 1) {
          double sum = 0.0;
          for (int64_t b = 0; b < a_.numels[t]; b += kBlock) sum += pass(t, first, b, b + kBlock, x, denom);
          finish_pass(t, first, sum);
        }
      }
      // Large tensors: all threads share the blocks of each pass and join for the reduction.
      const int tid = omp_get_thread_num();
      for (int64_t t : large_tensors) {
        const int64_t n_blocks = (a_.numels[t] + kBlock - 1) / kBlock;
        for (int first = 0; first <= a_.n_levels; first = pass_end(first) + 1) {
          double sum = 0.0;
#pragma omp for schedule(static)
          for (int64_t b = 0; b < n_blocks; ++b) sum += pass(t, first, b * kBlock, (b + 1) * kBlock, x, denom);
          partials[tid] = sum;
#pragma omp barrier
#pragma omp single
          {
            double total = 0.0;
            for (int i = 0; i < omp_get_num_threads(); ++i) total += partials[i];
            finish_pass(t, first, total);
          }
        }
      }
    }
  }

 private:
  static constexpr int64_t kParallelNumel = 4 * kBlock;

  size_t level_index(int level, int64_t t) const { return size_t(level) * a_.n_tensors + t; }

  template <typename P>
  P* tensor(void* const* list, int level, int64_t t) const {
    return static_cast<P*>(list[level_index(level, t)]);
  }

  // The level that ends the pass starting at level `first` (0-based): the first tensor-mode level from
  // `first` on, or n_levels when the pass reaches theta.
  int pass_end(int first) const {
    int i = first;
    while (i < a_.n_levels && !a_.tensor_modes[i]) ++i;
    return i;
  }

  // After a pass ending at a tensor-mode level: v <- gamma v + (1 - gamma) mean(x^2), as the loop's
  // mul_ then add_, and that level's denominator sqrt(v) / sqrt(1 - gamma^n) + eps for the next pass.
  void finish_pass(int64_t t, int first, double sum) {
    const int end = pass_end(first);
    if (end == a_.n_levels) return;
    const size_t index = level_index(end, t);
    S* v_ptr = tensor<S>(a_.exp_avg_sqs, end, t);
    const T mean_square = T(sum / double(a_.numels[t]));
    const T v = T(load(v_ptr, 0) * T(a_.gammas[end])) + T(T(1.0 - a_.gammas[end]) * mean_square);
    store(v_ptr, 0, v);
    denoms_[index] = T(std::sqrt(v) / T(a_.bias_correction2_sqrt[index])) + T(a_.eps[end]);
  }

  // One pass over elements [begin, min(end, numel)) of tensor t, from level `first` on; returns the
  // sum of squares of the input of the tensor-mode level that ends the pass (0 if theta ends it).
  double pass(int64_t t, int first, int64_t begin, int64_t end, T* x, T* denom) const {
    end = end < a_.numels[t] ? end : a_.numels[t];
    const int64_t n = end - begin;
    const int last = a_.n_levels - 1;
    S* param = static_cast<S*>(a_.params[t]) + begin;
    if (first == 0) {
      load_input(t, begin, n, param, x);
    } else {
      // Resume from the stored m of the tensor-mode level that ended the previous pass.
      const int source = first - 1;
      const size_t index = level_index(source, t);
      const S* m = tensor<S>(a_.exp_avgs, source, t) + begin;
      const T scalar_denom = denoms_[index];
      if (source == last) {
        for (int64_t j = 0; j < n; ++j) {
          x[j] = load(m, j);
          denom[j] = scalar_denom;
        }
        update_param(param, x, denom, index, n);
        return 0.0;
      }
      const T bc1 = T(a_.bias_correction1[index]);
      for (int64_t j = 0; j < n; ++j) x[j] = (load(m, j) / scalar_denom) / bc1;
    }
    for (int i = first; i <= last; ++i) {
      const size_t index = level_index(i, t);
      S* m = tensor<S>(a_.exp_avgs, i, t) + begin;
      // torch's lerp: fmadd(w, end - start, start) for |w| < 0.5, else fmadd(w - 1, end - start, end).
      const T weight = T(1.0 - a_.betas[i]);
      const bool small = std::fabs(weight) < T(0.5);
      const T coeff = small ? weight : T(weight - T(1));
      if (a_.tensor_modes[i]) {
        double sum = 0.0;
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < n; ++j) {
          const T old = load(m, j);
          store(m, j, std::fma(coeff, T(x[j] - old), small ? old : x[j]));
          sum += double(x[j]) * double(x[j]);
        }
        return sum;
      }
      S* v = tensor<S>(a_.exp_avg_sqs, i, t) + begin;
      const T gamma = T(a_.gammas[i]);
      const T one_minus_gamma = T(1.0 - a_.gammas[i]);
      const T bc2_sqrt = T(a_.bias_correction2_sqrt[index]);
      const T eps = T(a_.eps[i]);
      const T bc1 = T(a_.bias_correction1[index]);
      for (int64_t j = 0; j < n; ++j) {
        const T old = load(m, j);
        const T m_new = std::fma(coeff, T(x[j] - old), small ? old : x[j]);
        const T v_new = T(load(v, j) * gamma) + T(T(one_minus_gamma * x[j]) * x[j]);
        store(m, j, m_new);
        store(v, j, v_new);
        denom[j] = T(std::sqrt(v_new) / bc2_sqrt) + eps;
        x[j] = i == last ? m_new : T((m_new / denom[j]) / bc1);
      }
      if (i == last) update_param(param, x, denom, index, n);
    }
    return 0.0;
  }

  // x^(0) = g / grad_scale, negated to maximize, plus wd * theta for coupled (L2) decay.
  void load_input(int64_t t, int64_t begin, int64_t n, const S* param, T* x) const {
    S* grad = static_cast<S*>(a_.grads[t]) + begin;
    const T decay = T(a_.weight_decay);
    const bool coupled = a_.weight_decay != 0.0 && !a_.decoupled_weight_decay;
    const T scale = a_.grad_scale ? T(*a_.grad_scale) : T(1);
    for (int64_t j = 0; j < n; ++j) {
      T g = load(grad, j);
      if (a_.grad_scale) {
        g = g / scale;
        if (a_.store_unscaled_grad) store(grad, j, g);
      }
      if (a_.maximize) g = -g;
      x[j] = coupled ? std::fma(load(param, j), decay, g) : g;
    }
  }

  // theta <- theta (1 - lr wd) + (-lr / bc1_k) m_k / denom_k: the loop's mul_ then addcdiv_.
  void update_param(S* param, const T* m, const T* denom, size_t index, int64_t n) const {
    const T step_size = T(-(a_.lr / a_.bias_correction1[index]));
    const bool decay = a_.weight_decay != 0.0 && a_.decoupled_weight_decay;
    const T shrink = T(1.0 - a_.lr * a_.weight_decay);
    for (int64_t j = 0; j < n; ++j) {
      T theta = load(param, j);
      if (decay) theta = T(theta * shrink);
      store(param, j, theta + T(T(step_size * m[j]) / denom[j]));
    }
  }

  const KAdamArgs& a_;
  std::vector<T> denoms_;
};

template <typename S, typename T>
void run(const KAdamArgs& args) {
  Stepper<S, T>(args).run();
}

}  // namespace

extern "C" int kadam_fused_step(const KAdamArgs* args) {
  switch (args->dtype) {
    case 0: run<float, float>(*args); return 0;
    case 1: run<double, double>(*args); return 0;
    case 2: run<_Float16, float>(*args); return 0;
    case 3: run<BFloat16, float>(*args); return 0;
    default: return 1;
  }
}
