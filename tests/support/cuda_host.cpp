// Host builds of kernels/cuda/fastnn_kernels.cu for the tests, one extern "C" entry point per kernel
// and dtype for ctypes:
// - default: the kernel templates become plain C++ functions, run as a single "thread" (blockIdx 0,
//   blockDim 1, gridDim 1) so each grid-stride loop visits every index;
// - FASTNN_BLOCKS: the unmodified kernels launched through AMD's HIP-CPU runtime with the grid and
//   block that fastnn_set_launch() set (launch.py's), blocks in parallel on TBB and the threads of
//   a block as fibers: real grid, block and thread semantics, __syncthreads and shared memory.
#ifdef FASTNN_BLOCKS
#include <hip/hip_runtime.h>
static unsigned launch_grid = 1, launch_block = 1;
extern "C" void fastnn_set_launch(unsigned grid, unsigned block) {
  launch_grid = grid;
  launch_block = block;
}
#define FASTNN_CALL(kernel, ...)                                                                 \
  do {                                                                                           \
    hipLaunchKernelGGL(kernel, dim3(launch_grid), dim3(launch_block), 0, nullptr, __VA_ARGS__); \
    (void)hipDeviceSynchronize();                                                                \
  } while (0)
#else
#include <cmath>

struct fastnn_dim3 { unsigned x, y, z; };
static fastnn_dim3 blockIdx = {0, 0, 0}, threadIdx = {0, 0, 0}, blockDim = {1, 1, 1}, gridDim = {1, 1, 1};
#define __global__
#define __host__
#define __device__
#define __forceinline__ inline
#define __shared__ static  // one thread: its block's shared memory is the function's own
inline void __syncthreads() {}
#define FASTNN_CALL(kernel, ...) kernel(__VA_ARGS__)
extern "C" void fastnn_set_launch(unsigned, unsigned) {}
#endif

#include "fastnn_kernels.cu"

#define FASTNN_EXPORT(T, S)                                                                                                        \
  extern "C" void bias_activation_##S(T* z, const T* b, T* y, long long r, long long c, int code, T a, int hb) {                   \
    FASTNN_CALL(bias_activation<T>, z, b, y, r, c, code, a, hb);                                                                   \
  }                                                                                                                                \
  extern "C" void activation_forward_##S(const T* z, T* y, long long n, int code, T a) {                                           \
    FASTNN_CALL(activation_forward<T>, z, y, n, code, a);                                                                          \
  }                                                                                                                                \
  extern "C" void activation_backward_##S(const T* dy, const T* z, const T* y, T* dz, long long n, int code,                       \
                                          T a) {                                                                                   \
    FASTNN_CALL(activation_backward<T>, dy, z, y, dz, n, code, a);                                                                 \
  }                                                                                                                                \
  extern "C" void column_sums_##S(const T* dz, T* out, long long r, long long c) { FASTNN_CALL(column_sums<T>, dz, out, r, c); }   \
  extern "C" void softmax_xent_labels_##S(const T* z, const long long* l, T* g, T* rl, long long r, long long c,                   \
                                          T inv_n) {                                                                               \
    FASTNN_CALL(softmax_xent_labels<T>, z, l, g, rl, r, c, inv_n);                                                                 \
  }                                                                                                                                \
  extern "C" void softmax_xent_probs_##S(const T* z, const T* t, T* g, T* rl, long long r, long long c, T inv_n) {                 \
    FASTNN_CALL(softmax_xent_probs<T>, z, t, g, rl, r, c, inv_n);                                                                  \
  }                                                                                                                                \
  extern "C" void bce_with_logits_##S(const T* x, const T* t, T* g, T* l, long long n, T inv_n) {                                  \
    FASTNN_CALL(bce_with_logits<T>, x, t, g, l, n, inv_n);                                                                         \
  }                                                                                                                                \
  extern "C" void bce_##S(const T* p, const T* t, T* g, T* l, long long n, T inv_n) { FASTNN_CALL(bce<T>, p, t, g, l, n, inv_n); } \
  extern "C" void mse_##S(const T* p, const T* t, T* g, T* l, long long n, T inv_n) { FASTNN_CALL(mse<T>, p, t, g, l, n, inv_n); } \
  extern "C" void sgd_##S(T* p, const T* g, T* v, long long n, T lr, T mu, int nest, T wd, int first) {                            \
    FASTNN_CALL(sgd<T>, p, g, v, n, lr, mu, nest, wd, first);                                                                      \
  }                                                                                                                                \
  extern "C" void adam_##S(T* p, const T* g, T* m, T* v, long long n, T ss, T bc2, T b1, T b2, T eps, T l2,                        \
                           T decay) {                                                                                              \
    FASTNN_CALL(adam<T>, p, g, m, v, n, ss, bc2, b1, b2, eps, l2, decay);                                                          \
  }                                                                                                                                \
  extern "C" void dropout_##S(const T* x, T* y, long long n, long long seed, long long step, long long thr,                        \
                              T scale) {                                                                                           \
    FASTNN_CALL(dropout<T>, x, y, n, seed, step, thr, scale);                                                                      \
  }                                                                                                                                \
  extern "C" void layer_norm_##S(const T* x, const T* w, const T* b, int hw, int hb, double eps, T* y, T* m,                       \
                                 T* r, long long rows, long long n) {                                                              \
    FASTNN_CALL(layer_norm<T>, x, w, b, hw, hb, eps, y, m, r, rows, n);                                                            \
  }                                                                                                                                \
  extern "C" void layer_norm_dx_##S(const T* dy, const T* x, const T* w, int hw, const T* m, const T* r, T* dx,                    \
                                    long long rows, long long n) {                                                                 \
    FASTNN_CALL(layer_norm_dx<T>, dy, x, w, hw, m, r, dx, rows, n);                                                                \
  }                                                                                                                                \
  extern "C" void layer_norm_params_##S(const T* dy, const T* x, const T* m, const T* r, T* dw, T* db,                             \
                                        long long rows, long long n) {                                                             \
    FASTNN_CALL(layer_norm_params<T>, dy, x, m, r, dw, db, rows, n);                                                               \
  }                                                                                                                                \
  extern "C" void batch_norm_##S(const T* x, const T* w, const T* b, int hw, int hb, double eps, T* y, T* m, T* r,                 \
                                 T* v, long long rows, long long n) {                                                              \
    FASTNN_CALL(batch_norm<T>, x, w, b, hw, hb, eps, y, m, r, v, rows, n);                                                         \
  }                                                                                                                                \
  extern "C" void batch_norm_backward_##S(const T* dy, const T* x, const T* w, int hw, const T* m, const T* r,                     \
                                          T* dx, int hdx, T* dw, T* db, long long rows, long long n) {                             \
    FASTNN_CALL(batch_norm_backward<T>, dy, x, w, hw, m, r, dx, hdx, dw, db, rows, n);                                             \
  }

FASTNN_EXPORT(float, float)
FASTNN_EXPORT(double, double)
