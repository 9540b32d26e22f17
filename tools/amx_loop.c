/* The AMX kernel's inner loop alone, on synthetic tiles, to see what bounds it (BENCHMARKS.md, "Embeddings").
 *
 *   gcc -O2 -mamx-tile -mamx-bf16 tools/amx_loop.c -o /tmp/amx_loop && /tmp/amx_loop
 *
 * Prints TSC cycles per tile product (tdpbf16ps, 16 x 16 x 32) for: products alone (the limit); the 1 x 2 block
 * of kernels/src/amx.rs (six operand tiles per 32 k, two accumulators) and the usual 2 x 2 block (four operand
 * tiles, four accumulators, 8 loads per 12 products), with operands in L1, in L2, and as one task of the real
 * kernel sees them (128 rows against all of MiniLM's fused QKV weights, 1.7 MiB). Linux, a CPU with AMX-BF16. */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <x86intrin.h>

typedef struct {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
} __attribute__((packed)) config;

static double products_alone(void) {
  long n = 1000000;
  uint64_t t = __rdtsc();
  for (long i = 0; i < n; i++) {
    _tile_dpbf16ps(0, 4, 6); _tile_dpbf16ps(1, 4, 7); _tile_dpbf16ps(2, 5, 6); _tile_dpbf16ps(3, 5, 7);
  }
  return (double)(__rdtsc() - t) / (4.0 * n);
}

/* A: blocks of 16 rows x kcs x [hi, lo]; B: pairs x kcs x [hi 0-15, hi 16-31, lo 0-15, lo 16-31]. */
static double one_by_two(const char *a, const char *b, float *c, int kcs, int blocks, int pairs, int reps) {
  long products = 0;
  uint64_t t = __rdtsc();
  for (int rep = 0; rep < reps; rep++)
    for (int p = 0; p < pairs; p++)
      for (int bl = 0; bl < blocks; bl++) {
        _tile_zero(0); _tile_zero(1);
        const char *at = a + (size_t)bl * kcs * 2048, *w = b + (size_t)p * kcs * 4096;
        for (int kc = 0; kc < kcs; kc++) {
          const char *x = at + kc * 2048, *y = w + kc * 4096;
          _tile_loadd(2, x, 64); _tile_loadd(6, y + 2048, 64); _tile_loadd(7, y + 3072, 64);
          _tile_loadd(4, y, 64); _tile_loadd(5, y + 1024, 64); _tile_loadd(3, x + 1024, 64);
          _tile_dpbf16ps(0, 2, 6); _tile_dpbf16ps(1, 2, 7);
          _tile_dpbf16ps(0, 2, 4); _tile_dpbf16ps(1, 2, 5);
          _tile_dpbf16ps(0, 3, 4); _tile_dpbf16ps(1, 3, 5);
          products += 6;
        }
        _tile_stored(0, c, 128); _tile_stored(1, c + 16, 128);
      }
  return (double)(__rdtsc() - t) / products;
}

static double two_by_two(const char *a, const char *b, float *c, int kcs, int blocks, int pairs, int reps) {
  long products = 0;
  uint64_t t = __rdtsc();
  for (int rep = 0; rep < reps; rep++)
    for (int p = 0; p < pairs; p++)
      for (int bl = 0; bl + 1 < blocks; bl += 2) {
        _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
        const char *top = a + (size_t)bl * kcs * 2048, *bottom = top + (size_t)kcs * 2048;
        const char *w = b + (size_t)p * kcs * 4096;
        for (int kc = 0; kc < kcs; kc++) {
          const char *x0 = top + kc * 2048, *x1 = bottom + kc * 2048, *y = w + kc * 4096;
          _tile_loadd(4, x0, 64); _tile_loadd(5, x1, 64); _tile_loadd(6, y + 2048, 64); _tile_loadd(7, y + 3072, 64);
          _tile_dpbf16ps(0, 4, 6); _tile_dpbf16ps(1, 4, 7); _tile_dpbf16ps(2, 5, 6); _tile_dpbf16ps(3, 5, 7);
          _tile_loadd(6, y, 64); _tile_loadd(7, y + 1024, 64);
          _tile_dpbf16ps(0, 4, 6); _tile_dpbf16ps(1, 4, 7); _tile_dpbf16ps(2, 5, 6); _tile_dpbf16ps(3, 5, 7);
          _tile_loadd(4, x0 + 1024, 64); _tile_loadd(5, x1 + 1024, 64);
          _tile_dpbf16ps(0, 4, 6); _tile_dpbf16ps(1, 4, 7); _tile_dpbf16ps(2, 5, 6); _tile_dpbf16ps(3, 5, 7);
          products += 12;
        }
        _tile_stored(0, c, 128); _tile_stored(1, c + 16, 128); _tile_stored(2, c + 512, 128);
        _tile_stored(3, c + 528, 128);
      }
  return (double)(__rdtsc() - t) / products;
}

int main(void) {
  if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) != 0) {
    fprintf(stderr, "no AMX tile state from the kernel\n");
    return 1;
  }
  config cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.palette = 1;
  for (int i = 0; i < 8; i++) cfg.colsb[i] = 64, cfg.rows[i] = 16;
  _tile_loadconfig(&cfg);
  _tile_zero(4); _tile_zero(5); _tile_zero(6); _tile_zero(7);
  printf("products alone:                      %5.1f TSC cycles per product\n", products_alone());
  /* kcs, blocks, pairs, repetitions: L1 (A 8 KiB, B 16 KiB), L2 (A 192 KiB, B 576 KiB), a task (B 1.7 MiB). */
  int cases[3][4] = {{2, 2, 2, 20000}, {12, 8, 12, 200}, {12, 8, 36, 60}};
  const char *names[3] = {"operands in L1", "operands in L2", "a task's operands"};
  for (int i = 0; i < 3; i++) {
    int kcs = cases[i][0], blocks = cases[i][1], pairs = cases[i][2], reps = cases[i][3];
    char *a = aligned_alloc(64, (size_t)blocks * kcs * 2048), *b = aligned_alloc(64, (size_t)pairs * kcs * 4096);
    float *c = aligned_alloc(64, 4096);
    memset(a, 0, (size_t)blocks * kcs * 2048);
    memset(b, 0, (size_t)pairs * kcs * 4096);
    double x = one_by_two(a, b, c, kcs, blocks, pairs, reps), y = two_by_two(a, b, c, kcs, blocks, pairs, reps);
    printf("%-20s 1 x 2 block: %5.1f | 2 x 2 block: %5.1f TSC cycles per product\n", names[i], x, y);
    free(a); free(b); free(c);
  }
  _tile_release();
  return 0;
}
