// fastnn's CUDA kernels: templates over float and double, grid-stride loops, compiled at run time
// by one cupy.RawModule (fastnn.kernels.cuda.launch), fetched on first use. Shapes, dtypes and
// contiguity are checked in Python before any launch; every array here is C-contiguous.
// Per-element maths lives in fastnn_math.cuh (shared with the host build used by the tests).
#include "fastnn_math.cuh"

// A thread's first index and the whole grid's step, once for every grid-stride loop below.
#define FASTNN_FIRST_INDEX ((long long)blockIdx.x * blockDim.x + threadIdx.x)
#define FASTNN_GRID_STEP ((long long)blockDim.x * gridDim.x)
#define FASTNN_GRID_STRIDE(i, n) for (long long i = FASTNN_FIRST_INDEX; i < (n); i += FASTNN_GRID_STEP)

// After the GEMM, in one pass: z += bias (when has_bias), y = g(z). z, y: (rows, cols).
// The column of element i follows the grid-stride loop incrementally: one 64-bit modulo per
// thread, not one per element (a 64-bit division costs tens of cycles on a GPU).
template <typename T>
__global__ void bias_activation(T* z, const T* bias, T* y, long long rows, long long cols, int code, T alpha,
                                int has_bias) {
  const long long stride = FASTNN_GRID_STEP;
  const long long column_step = stride % cols;
  long long i = FASTNN_FIRST_INDEX;
  long long column = i % cols;
  for (; i < rows * cols; i += stride) {
    T v = z[i] + (has_bias ? bias[column] : T(0));
    z[i] = v;
    y[i] = fastnn::activation(code, v, alpha);
    column += column_step;
    if (column >= cols) column -= cols;
  }
}

template <typename T>
__global__ void activation_forward(const T* z, T* y, long long n, int code, T alpha) {
  FASTNN_GRID_STRIDE(i, n) { y[i] = fastnn::activation(code, z[i], alpha); }
}

template <typename T>
__global__ void activation_backward(const T* dy, const T* z, const T* y, T* dz, long long n, int code, T alpha) {
  FASTNN_GRID_STRIDE(i, n) { dz[i] = fastnn::activation_backward(code, dy[i], z[i], y[i], alpha); }
}

// Block reductions, deterministic and the same bits for any block size: the work of a block is
// laid out over FASTNN_VIRTUAL (256) virtual threads; a real thread plays virtual threads
// threadIdx.x, threadIdx.x + blockDim.x, ... (one each at launch.py's 256-thread blocks), so
// the order of every addition is fixed by the data's shape alone, never by the launch.
#define FASTNN_VIRTUAL 256
#define FASTNN_FOR_VIRTUAL(v) for (int v = threadIdx.x; v < FASTNN_VIRTUAL; v += blockDim.x)

// Bias gradient: out[j] = sum_i dz[i, j]. A block takes a tile of 32 columns; virtual thread v
// sums column (v % 32) over the rows i = v / 32 (mod 8) (neighbouring threads read neighbouring
// columns: coalesced), then the 8 partial sums of each column are added in order. Tiles are
// grid-strided; no atomics.
template <typename T>
__global__ void column_sums(const T* dz, T* out, long long rows, long long cols) {
  __shared__ T partial[8][32];
  const long long tiles = (cols + 31) / 32;
  for (long long tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    FASTNN_FOR_VIRTUAL(v) {
      const long long j = tile * 32 + v % 32;
      T total = T(0);
      if (j < cols)
        for (long long i = v / 32; i < rows; i += 8) total += dz[i * cols + j];
      partial[v / 32][v % 32] = total;
    }
    __syncthreads();
    FASTNN_FOR_VIRTUAL(v) {
      const long long j = tile * 32 + v;
      if (v < 32 && j < cols) {
        T total = partial[0][v];
        for (int r = 1; r < 8; ++r) total += partial[r][v];
        out[j] = total;
      }
    }
    __syncthreads();  // the next tile reuses `partial`
  }
}

// A row's 32 lanes combined pairwise (lane l with l + s, s = 16, 8, ..., 1), in shared memory.
template <typename T, typename Op>
__device__ __forceinline__ void fastnn_tree(T (*lanes)[32], Op op) {
  for (int s = 16; s >= 1; s /= 2) {
    FASTNN_FOR_VIRTUAL(v) {
      if (v % 32 < s) lanes[v / 32][v % 32] = op(lanes[v / 32][v % 32], lanes[v / 32][v % 32 + s]);
    }
    __syncthreads();
  }
}

struct fastnn_max_op {
  template <typename T>
  __device__ T operator()(T a, T b) const { return b > a ? b : a; }
};
struct fastnn_add_op {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a + b; }
};

// The maximum of each of a tile's 8 rows of z into top[r], each lane starting from its row's first
// element; a row whose maximum is NaN gets 0 (the NaN then spreads through exp).
template <typename T>
__device__ __forceinline__ void fastnn_tile_row_max(const T* z, long long rows, long long classes, long long tile,
                                                    T (*lanes)[32], T* top) {
  FASTNN_FOR_VIRTUAL(v) {
    const long long i = tile * 8 + v / 32;
    T m = T(0);
    if (i < rows) {
      m = z[i * classes];
      for (long long j = v % 32; j < classes; j += 32) m = z[i * classes + j] > m ? z[i * classes + j] : m;
    }
    lanes[v / 32][v % 32] = m;
  }
  __syncthreads();
  fastnn_tree(lanes, fastnn_max_op());
  FASTNN_FOR_VIRTUAL(v) {
    if (v % 32 == 0) top[v / 32] = fastnn::is_nan(lanes[v / 32][0]) ? T(0) : lanes[v / 32][0];
  }
  __syncthreads();
}

// Softmax cross-entropy, log-sum-exp stable, a block per tile of 8 rows: virtual thread v takes
// row v / 32 of the tile and its classes j = v % 32, v % 32 + 32, ... (coalesced); the row's
// maximum and sums are trees over its 32 lanes. With integer labels:
// grad = (softmax(z) - onehot) * inv_n, row_loss[i] = lse_i - z[i, label_i].
template <typename T>
__global__ void softmax_xent_labels(const T* z, const long long* labels, T* grad, T* row_loss, long long rows,
                                    long long classes, T inv_n) {
  __shared__ T lanes[8][32];
  __shared__ T top[8], total[8];
  const long long tiles = (rows + 7) / 8;
  for (long long tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    fastnn_tile_row_max(z, rows, classes, tile, lanes, top);
    FASTNN_FOR_VIRTUAL(v) {  // exponentials into grad, each lane's sum
      const long long i = tile * 8 + v / 32;
      T s = T(0);
      if (i < rows)
        for (long long j = v % 32; j < classes; j += 32) {
          T e = fastnn::m_exp(z[i * classes + j] - top[v / 32]);
          grad[i * classes + j] = e;
          s += e;
        }
      lanes[v / 32][v % 32] = s;
    }
    __syncthreads();
    fastnn_tree(lanes, fastnn_add_op());
    FASTNN_FOR_VIRTUAL(v) {
      if (v % 32 == 0) total[v / 32] = lanes[v / 32][0];
    }
    __syncthreads();
    FASTNN_FOR_VIRTUAL(v) {
      const long long i = tile * 8 + v / 32;
      if (i >= rows) continue;
      const long long label = labels[i];
      const bool valid = label >= 0 && label < classes;  // never index outside the row: it becomes NaN
      const T scale = inv_n / total[v / 32];
      for (long long j = v % 32; j < classes; j += 32) {
        T* g = grad + i * classes + j;
        *g = valid ? *g * scale - (j == label ? inv_n : T(0)) : fastnn::m_nan(scale);
      }
      if (v % 32 == 0)
        row_loss[i] = valid ? top[v / 32] + fastnn::m_log(total[v / 32]) - z[i * classes + label] : fastnn::m_nan(scale);
    }
    __syncthreads();  // the next tile reuses the shared arrays
  }
}

// With probability targets: row_loss[i] = sum_j t_ij (lse_i - z_ij), the same tiles and trees.
template <typename T>
__global__ void softmax_xent_probs(const T* z, const T* target, T* grad, T* row_loss, long long rows,
                                   long long classes, T inv_n) {
  __shared__ T lanes[8][32], mass_lanes[8][32], dot_lanes[8][32];
  __shared__ T top[8], total[8], mass[8];
  const long long tiles = (rows + 7) / 8;
  for (long long tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    fastnn_tile_row_max(z, rows, classes, tile, lanes, top);
    FASTNN_FOR_VIRTUAL(v) {
      const long long i = tile * 8 + v / 32;
      T s = T(0), t_sum = T(0), dot = T(0);
      if (i < rows)
        for (long long j = v % 32; j < classes; j += 32) {
          const long long k = i * classes + j;
          T e = fastnn::m_exp(z[k] - top[v / 32]);
          grad[k] = e;
          s += e;
          t_sum += target[k];
          dot += target[k] * z[k];
        }
      lanes[v / 32][v % 32] = s;
      mass_lanes[v / 32][v % 32] = t_sum;
      dot_lanes[v / 32][v % 32] = dot;
    }
    __syncthreads();
    fastnn_tree(lanes, fastnn_add_op());
    fastnn_tree(mass_lanes, fastnn_add_op());
    fastnn_tree(dot_lanes, fastnn_add_op());
    FASTNN_FOR_VIRTUAL(v) {
      if (v % 32 == 0) {
        const int r = v / 32;
        total[r] = lanes[r][0];
        mass[r] = mass_lanes[r][0];
        const long long i = tile * 8 + r;
        if (i < rows) row_loss[i] = (top[r] + fastnn::m_log(total[r])) * mass[r] - dot_lanes[r][0];
      }
    }
    __syncthreads();
    FASTNN_FOR_VIRTUAL(v) {
      const long long i = tile * 8 + v / 32;
      if (i >= rows) continue;
      const T scale = inv_n * mass[v / 32] / total[v / 32];
      for (long long j = v % 32; j < classes; j += 32) {
        const long long k = i * classes + j;
        grad[k] = grad[k] * scale - target[k] * inv_n;
      }
    }
    __syncthreads();
  }
}

// Elementwise losses: per-element loss into `loss` (summed on the device afterwards), gradient scaled.
template <typename T>
__global__ void bce_with_logits(const T* x, const T* t, T* grad, T* loss, long long n, T inv_n) {
  FASTNN_GRID_STRIDE(i, n) {
    loss[i] = fastnn::bce_with_logits_loss(x[i], t[i]);
    grad[i] = fastnn::bce_with_logits_grad(x[i], t[i]) * inv_n;
  }
}

template <typename T>
__global__ void bce(const T* p, const T* t, T* grad, T* loss, long long n, T inv_n) {
  FASTNN_GRID_STRIDE(i, n) {
    loss[i] = fastnn::bce_loss(p[i], t[i]);
    grad[i] = fastnn::bce_grad(p[i], t[i]) * inv_n;
  }
}

template <typename T>
__global__ void mse(const T* p, const T* t, T* grad, T* loss, long long n, T inv_n) {
  FASTNN_GRID_STRIDE(i, n) {
    T d = p[i] - t[i];
    loss[i] = d * d;
    grad[i] = T(2) * d * inv_n;
  }
}

// Optimizer updates over the whole flat parameter vector, in place.
template <typename T>
__global__ void sgd(T* param, const T* grad, T* velocity, long long n, T lr, T momentum, int nesterov,
                    T weight_decay, int first_step) {
  FASTNN_GRID_STRIDE(i, n) {
    param[i] = fastnn::sgd_step(param[i], grad[i], velocity + i, lr, momentum, nesterov != 0, weight_decay,
                                first_step != 0);
  }
}

template <typename T>
__global__ void adam(T* param, const T* grad, T* exp_avg, T* exp_avg_sq, long long n, T step_size, T bc2_sqrt,
                     T beta1, T beta2, T eps, T l2, T decay_factor) {
  FASTNN_GRID_STRIDE(i, n) {
    param[i] = fastnn::adam_step(param[i], grad[i], exp_avg + i, exp_avg_sq + i, step_size, bc2_sqrt, beta1, beta2,
                                 eps, l2, decay_factor);
  }
}

// Inverted dropout, one thread per group of four elements: y = x * (word >= threshold ? scale : 0)
// with word j of Philox4x32-10 at counter (group, step) and key seed (see kernels/numpy/dropout.py).
template <typename T>
__global__ void dropout(const T* x, T* y, long long n, long long seed, long long step, long long threshold,
                        T scale) {
  const unsigned long long low = 0xFFFFFFFFull, s = (unsigned long long)seed, t = (unsigned long long)step;
  FASTNN_GRID_STRIDE(g, (n + 3) / 4) {
    unsigned long long words[4];
    fastnn::philox4x32_10((unsigned long long)g & low, (unsigned long long)g >> 32, t & low, t >> 32, s & low,
                          s >> 32, words);
    for (int j = 0; j < 4; ++j) {
      long long i = 4 * g + j;
      if (i < n) y[i] = x[i] * (words[j] >= (unsigned long long)threshold ? scale : T(0));
    }
  }
}

// Layer normalisation over the last axis (kernels/numpy/normalization.py states the maths): one thread
// per row, double-precision statistics. has_weight / has_bias select the affine terms.
template <typename T>
__global__ void layer_norm(const T* x, const T* weight, const T* bias, int has_weight, int has_bias, double eps,
                           T* y, T* mean, T* rstd, long long rows, long long n) {
  FASTNN_GRID_STRIDE(i, rows) {
    const T* row = x + i * n;
    double s = 0.0, v = 0.0;
    for (long long j = 0; j < n; ++j) s += (double)row[j];
    double m = s / (double)n;
    for (long long j = 0; j < n; ++j) v += ((double)row[j] - m) * ((double)row[j] - m);
    double r = 1.0 / sqrt(v / (double)n + eps);
    for (long long j = 0; j < n; ++j) {
      double out = ((double)row[j] - m) * r;
      if (has_weight) out *= (double)weight[j];
      if (has_bias) out += (double)bias[j];
      y[i * n + j] = (T)out;
    }
    mean[i] = (T)m;
    rstd[i] = (T)r;
  }
}

template <typename T>
__global__ void layer_norm_dx(const T* dy, const T* x, const T* weight, int has_weight, const T* mean,
                              const T* rstd, T* dx, long long rows, long long n) {
  FASTNN_GRID_STRIDE(i, rows) {
    double m = (double)mean[i], r = (double)rstd[i], sum_g = 0.0, sum_gx = 0.0;
    for (long long j = 0; j < n; ++j) {
      double g = (double)dy[i * n + j] * (has_weight ? (double)weight[j] : 1.0);
      sum_g += g;
      sum_gx += g * ((double)x[i * n + j] - m) * r;
    }
    double mean_g = sum_g / (double)n, mean_gx = sum_gx / (double)n;
    for (long long j = 0; j < n; ++j) {
      double g = (double)dy[i * n + j] * (has_weight ? (double)weight[j] : 1.0);
      dx[i * n + j] = (T)(r * (g - mean_g - ((double)x[i * n + j] - m) * r * mean_gx));
    }
  }
}

// dweight[j] = sum_i dy xhat, dbias[j] = sum_i dy: one thread per column, rows in order (deterministic).
template <typename T>
__global__ void layer_norm_params(const T* dy, const T* x, const T* mean, const T* rstd, T* dweight, T* dbias,
                                  long long rows, long long n) {
  FASTNN_GRID_STRIDE(j, n) {
    double sw = 0.0, sb = 0.0;
    for (long long i = 0; i < rows; ++i) {
      double d = (double)dy[i * n + j];
      sw += d * ((double)x[i * n + j] - (double)mean[i]) * (double)rstd[i];
      sb += d;
    }
    dweight[j] = (T)sw;
    dbias[j] = (T)sb;
  }
}

// Batch normalisation over the rows (PyTorch's BatchNorm1d in training; kernels/numpy/normalization.py
// states the maths): one thread per column, rows in order, double-precision statistics. Adjacent
// threads read adjacent columns of a row, so each sweep over the rows reads whole cache lines.
template <typename T>
__global__ void batch_norm(const T* x, const T* weight, const T* bias, int has_weight, int has_bias, double eps,
                           T* y, T* mean, T* rstd, T* var, long long rows, long long n) {
  FASTNN_GRID_STRIDE(j, n) {
    double s = 0.0, v = 0.0;
    for (long long i = 0; i < rows; ++i) s += (double)x[i * n + j];
    double m = s / (double)rows;
    for (long long i = 0; i < rows; ++i) v += ((double)x[i * n + j] - m) * ((double)x[i * n + j] - m);
    v /= (double)rows;
    double r = 1.0 / sqrt(v + eps);
    double w = has_weight ? (double)weight[j] : 1.0, b = has_bias ? (double)bias[j] : 0.0;
    for (long long i = 0; i < rows; ++i) {
      double out = ((double)x[i * n + j] - m) * r;
      if (has_weight) out *= w;
      if (has_bias) out += b;
      y[i * n + j] = (T)out;
    }
    mean[j] = (T)m;
    rstd[j] = (T)r;
    var[j] = (T)v;
  }
}

// Its backward in one pass per column: the sums of dy and dy * xhat, then dx; dweight and dbias.
template <typename T>
__global__ void batch_norm_backward(const T* dy, const T* x, const T* weight, int has_weight, const T* mean,
                                    const T* rstd, T* dx, int has_dx, T* dweight, T* dbias, long long rows,
                                    long long n) {
  FASTNN_GRID_STRIDE(j, n) {
    double m = (double)mean[j], r = (double)rstd[j], sum_dy = 0.0, sum_dy_xhat = 0.0;
    for (long long i = 0; i < rows; ++i) {
      double d = (double)dy[i * n + j];
      sum_dy += d;
      sum_dy_xhat += d * ((double)x[i * n + j] - m) * r;
    }
    dweight[j] = (T)sum_dy_xhat;
    dbias[j] = (T)sum_dy;
    if (has_dx) {
      double scale = has_weight ? r * (double)weight[j] : r;
      for (long long i = 0; i < rows; ++i) {
        double xhat = ((double)x[i * n + j] - m) * r;
        dx[i * n + j] = (T)(scale * ((double)dy[i * n + j] - sum_dy / (double)rows -
                                     xhat * (sum_dy_xhat / (double)rows)));
      }
    }
  }
}

#ifdef FASTNN_INSTANTIATE_ALL
// Every kernel for float and double, explicitly: the RawModule (launch.py) fetches them by their
// mangled symbols (symbols.py), and the nvcc checks compile them all.
#define FASTNN_INSTANTIATE(T)                                                                                  \
  template __global__ void bias_activation<T>(T*, const T*, T*, long long, long long, int, T, int);           \
  template __global__ void activation_forward<T>(const T*, T*, long long, int, T);                            \
  template __global__ void activation_backward<T>(const T*, const T*, const T*, T*, long long, int, T);      \
  template __global__ void column_sums<T>(const T*, T*, long long, long long);                                \
  template __global__ void softmax_xent_labels<T>(const T*, const long long*, T*, T*, long long, long long, T); \
  template __global__ void softmax_xent_probs<T>(const T*, const T*, T*, T*, long long, long long, T);         \
  template __global__ void bce_with_logits<T>(const T*, const T*, T*, T*, long long, T);                      \
  template __global__ void bce<T>(const T*, const T*, T*, T*, long long, T);                                  \
  template __global__ void mse<T>(const T*, const T*, T*, T*, long long, T);                                  \
  template __global__ void sgd<T>(T*, const T*, T*, long long, T, T, int, T, int);                            \
  template __global__ void adam<T>(T*, const T*, T*, T*, long long, T, T, T, T, T, T, T);                  \
  template __global__ void dropout<T>(const T*, T*, long long, long long, long long, long long, T);            \
  template __global__ void layer_norm<T>(const T*, const T*, const T*, int, int, double, T*, T*, T*, long long, \
                                         long long);                                                            \
  template __global__ void layer_norm_dx<T>(const T*, const T*, const T*, int, const T*, const T*, T*, long long, \
                                            long long);                                                         \
  template __global__ void layer_norm_params<T>(const T*, const T*, const T*, const T*, T*, T*, long long,      \
                                                long long);                                                     \
  template __global__ void batch_norm<T>(const T*, const T*, const T*, int, int, double, T*, T*, T*, T*,        \
                                         long long, long long);                                                 \
  template __global__ void batch_norm_backward<T>(const T*, const T*, const T*, int, const T*, const T*, T*, int, \
                                                  T*, T*, long long, long long);
FASTNN_INSTANTIATE(float)
FASTNN_INSTANTIATE(double)
#endif
