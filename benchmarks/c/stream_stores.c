/* c = a * max(b, 0) over 4096 x 1024 float32 with plain and with non-temporal stores, on one and
 * on two threads: what skipping the write-allocate read is worth on this machine, without a JIT
 * in the way (the Numba version is the last floor line of benchmarks/roofline.py).
 *
 *     gcc -O3 -march=native -fopenmp benchmarks/c/stream_stores.c -o /tmp/stream_stores && /tmp/stream_stores
 *
 * Needs AVX-512F. Prints the best of 20 alternated calls of each, five times over.
 */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define N (4096L * 1024L)

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void product(const float *a, const float *b, float *c, int threads, int streamed) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long i = 0; i < N; i += 16) {
        __m512 v = _mm512_mul_ps(_mm512_load_ps(a + i), _mm512_max_ps(_mm512_setzero_ps(), _mm512_load_ps(b + i)));
        if (streamed)
            _mm512_stream_ps(c + i, v);
        else
            _mm512_store_ps(c + i, v);
    }
    _mm_sfence();
}

int main(void) {
    float *a = aligned_alloc(4096, N * 4), *b = aligned_alloc(4096, N * 4), *c = aligned_alloc(4096, N * 4);
    for (long i = 0; i < N; i++) {
        a[i] = (float)(i % 7 - 3);
        b[i] = (float)(i % 5 - 2);
        c[i] = 0;
    }
    for (int round = 0; round < 5; round++)
        for (int threads = 1; threads <= 2; threads++) {
            double best[2] = {1e9, 1e9};
            for (int k = 0; k < 20; k++)
                for (int streamed = 0; streamed < 2; streamed++) {
                    double t = seconds();
                    product(a, b, c, threads, streamed);
                    t = seconds() - t;
                    if (t < best[streamed]) best[streamed] = t;
                }
            printf("%d thread(s): plain stores %.3f ms, non-temporal %.3f ms (%.2fx)\n", threads, best[0] * 1e3,
                   best[1] * 1e3, best[0] / best[1]);
        }
    return 0;
}
