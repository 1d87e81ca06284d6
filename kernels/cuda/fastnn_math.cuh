// Per-element maths shared by every CUDA kernel, written once as __host__ __device__ code so that a
// host build (tests/support/cuda_host.cpp) checks exactly these formulas against the NumPy reference.
// Conventions as in fastnn.activations: NaN in -> NaN out, +-inf give the function's limits.
#pragma once

#ifdef __CUDACC__
#define FASTNN_HD __host__ __device__ __forceinline__
#else
#include <math.h>
#define FASTNN_HD inline
#endif

namespace fastnn {

// Activation codes: positions in fastnn.activations.ACTIVATIONS (checked by the Python side).
enum Activation { IDENTITY = 0, RELU, LEAKY_RELU, SIGMOID, TANH, GELU, GELU_TANH, SILU, SOFTPLUS, ELU };

// Overloads picking the float or double C math function (valid in host and device code).
FASTNN_HD float m_exp(float x) { return expf(x); }
FASTNN_HD double m_exp(double x) { return exp(x); }
FASTNN_HD float m_expm1(float x) { return expm1f(x); }
FASTNN_HD double m_expm1(double x) { return expm1(x); }
FASTNN_HD float m_log(float x) { return logf(x); }
FASTNN_HD double m_log(double x) { return log(x); }
FASTNN_HD float m_log1p(float x) { return log1pf(x); }
FASTNN_HD double m_log1p(double x) { return log1p(x); }
FASTNN_HD float m_tanh(float x) { return tanhf(x); }
FASTNN_HD double m_tanh(double x) { return tanh(x); }
FASTNN_HD float m_erfc(float x) { return erfcf(x); }
FASTNN_HD double m_erfc(double x) { return erfc(x); }
FASTNN_HD float m_sqrt(float x) { return sqrtf(x); }
FASTNN_HD double m_sqrt(double x) { return sqrt(x); }
FASTNN_HD float m_big(float) { return 3.4028234663852886e38f; }
FASTNN_HD double m_big(double) { return 1.7976931348623157e308; }
FASTNN_HD float m_nan(float) { return nanf(""); }
FASTNN_HD double m_nan(double) { return nan(""); }

template <typename T> FASTNN_HD bool is_nan(T x) { return x != x; }

template <typename T> FASTNN_HD T sigmoid(T x) { return T(1) / (T(1) + m_exp(-x)); }

template <typename T> FASTNN_HD T softplus(T x) {
  T a = x < T(0) ? -x : x;
  return (x > T(0) ? x : T(0)) + m_log1p(m_exp(-a));
}

// x with +-inf clamped to the largest finite value (NaN kept): gated forms reach their limits.
template <typename T> FASTNN_HD T finite(T x) {
  T big = m_big(x);
  return is_nan(x) ? x : (x > big ? big : (x < -big ? -big : x));
}

// x with -inf raised to the most negative finite value (NaN and +inf kept).
template <typename T> FASTNN_HD T no_minus_inf(T x) {
  T big = m_big(x);
  return (is_nan(x) || x > -big) ? x : -big;
}

template <typename T> FASTNN_HD T phi(T x) { return T(0.5) * m_erfc(-x * T(0.70710678118654752440)); }

template <typename T> FASTNN_HD T gelu_tanh_gate(T x) {
  return sigmoid(T(1.5957691216057307) * x * (T(1) + T(0.044715) * x * x));  // 2 sqrt(2/pi) = 1.5957...
}

template <typename T> FASTNN_HD T activation(int code, T z, T alpha) {
  switch (code) {
    case RELU: return (z > T(0) || is_nan(z)) ? z : T(0);
    case LEAKY_RELU: return z > T(0) ? z : alpha * z;
    case SIGMOID: return sigmoid(z);
    case TANH: return m_tanh(z);
    case GELU: { T zf = no_minus_inf(z); return zf * phi(zf); }
    case GELU_TANH: { T zf = no_minus_inf(z); return zf * gelu_tanh_gate(zf); }
    case SILU: { T zf = no_minus_inf(z); return zf * sigmoid(zf); }
    case SOFTPLUS: return softplus(z);
    case ELU: return z > T(0) ? z : alpha * m_expm1(z);
    default: return z;
  }
}

// dy * g'(z), given z and y = g(z).
template <typename T> FASTNN_HD T activation_backward(int code, T dy, T z, T y, T alpha) {
  switch (code) {
    case RELU: return dy * (y > T(0) ? T(1) : (is_nan(y) ? y : T(0)));
    case LEAKY_RELU: return dy * (z > T(0) ? T(1) : (z <= T(0) ? alpha : z));
    case SIGMOID: return dy * (y * (T(1) - y));
    case TANH: return dy * (T(1) - y * y);
    case GELU: {
      T zf = finite(z);
      return dy * (phi(zf) + zf * T(0.39894228040143267794) * m_exp(T(-0.5) * zf * zf));
    }
    case GELU_TANH: {
      T zc = is_nan(z) ? z : (z > T(10) ? T(10) : (z < T(-10) ? T(-10) : z));
      T gate = gelu_tanh_gate(zc);
      return dy * gate * (T(1) + T(1.5957691216057307) * zc * (T(1) - gate) * (T(1) + T(0.134145) * zc * zc));
    }
    case SILU: {
      T zf = finite(z);
      T s = sigmoid(zf);
      return dy * s * (T(1) + zf * (T(1) - s));
    }
    case SOFTPLUS: return dy * sigmoid(z);
    case ELU: return dy * (z > T(0) ? T(1) : alpha * m_exp(z));
    default: return dy;
  }
}

// Binary cross-entropy terms (per element; the kernels divide by the element count).
// max(x, 0) - x t + log1p(exp(-|x|)): the first two terms cancel exactly for a confident, correct
// logit, leaving the tail (softplus(x) - x t rounds it away, or below zero).
template <typename T> FASTNN_HD T bce_with_logits_loss(T x, T t) {
  T a = x < T(0) ? -x : x;
  return ((x > T(0) ? x : T(0)) - x * t) + m_log1p(m_exp(-a));
}
template <typename T> FASTNN_HD T bce_with_logits_grad(T x, T t) { return sigmoid(x) - t; }

// A probability outside [0, 1] (or NaN) gives NaN loss and gradient, as on every backend.
template <typename T> FASTNN_HD T bce_loss(T p, T t) {
  if (!(p >= T(0) && p <= T(1))) return m_nan(p);
  T log_p = p > T(0) ? m_log(p) : T(-100);
  T log_q = p < T(1) ? m_log1p(-p) : T(-100);
  log_p = is_nan(p) ? p : (log_p < T(-100) ? T(-100) : log_p);
  log_q = log_q < T(-100) ? T(-100) : log_q;
  return -(t * log_p + (T(1) - t) * log_q);
}
template <typename T> FASTNN_HD T bce_grad(T p, T t) {
  if (!(p >= T(0) && p <= T(1))) return m_nan(p);
  T d = p * (T(1) - p);
  return (p - t) / (d > T(1e-12) ? d : T(1e-12));
}

// Philox4x32-10 (Salmon et al., SC 2011): the four 32-bit words for counter (c0..c3) and key (k0, k1),
// held in 64-bit integers as kernels/numpy/dropout.py holds them, so every backend draws the same bits.
FASTNN_HD void philox4x32_10(unsigned long long c0, unsigned long long c1, unsigned long long c2,
                             unsigned long long c3, unsigned long long k0, unsigned long long k1,
                             unsigned long long* out) {
  const unsigned long long low = 0xFFFFFFFFull;
  for (int r = 0; r < 10; ++r) {
    unsigned long long p0 = 0xD2511F53ull * c0, p1 = 0xCD9E8D57ull * c2;
    unsigned long long n0 = (p1 >> 32) ^ c1 ^ k0, n1 = p1 & low, n2 = (p0 >> 32) ^ c3 ^ k1, n3 = p0 & low;
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 = (k0 + 0x9E3779B9ull) & low;
    k1 = (k1 + 0xBB67AE85ull) & low;
  }
  out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

// torch.optim.SGD (dampening 0) for one element; returns the new parameter, updates *velocity.
template <typename T> FASTNN_HD T sgd_step(T p, T g, T* velocity, T lr, T momentum, bool nesterov, T weight_decay,
                                           bool first_step) {
  g = g + weight_decay * p;
  if (momentum != T(0)) {
    T v = first_step ? g : momentum * *velocity + g;
    *velocity = v;
    g = nesterov ? g + momentum * v : v;
  }
  return p - lr * g;
}

// torch.optim.Adam / AdamW for one element; decay_factor = 1 - lr wd for AdamW (else 1), l2 the
// Adam penalty (else 0); step_size = lr / (1 - beta1^t), bc2_sqrt = sqrt(1 - beta2^t).
template <typename T> FASTNN_HD T adam_step(T p, T g, T* m, T* v, T step_size, T bc2_sqrt, T beta1, T beta2, T eps,
                                            T l2, T decay_factor) {
  p = p * decay_factor;
  g = g + l2 * p;
  T m_new = beta1 * *m + (T(1) - beta1) * g;
  T v_new = beta2 * *v + (T(1) - beta2) * g * g;
  *m = m_new;
  *v = v_new;
  return p - step_size * m_new / (m_sqrt(v_new) / bc2_sqrt + eps);
}

}  // namespace fastnn
