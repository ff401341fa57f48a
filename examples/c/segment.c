/* cosam from C: load the models, embed one slice, segment it from a box, then refine the
 * mask with a click that passes the previous logits back, as a viewer does.
 *
 * Build and run (from the repository root, after `cargo build --release -p cosam-c`):
 *   cc -std=c11 -Wall -Wextra -Werror -Iinclude examples/c/segment.c \
 *      -Ltarget/release -lcosam -Wl,-rpath,"$PWD/target/release" -o segment
 *   ./segment PIXELS.f32 ROWS COLS MODALITY X0 Y0 X1 Y1 [MASK_OUT]
 *
 * PIXELS.f32 holds ROWS*COLS little-endian float32 values, row-major, in the image's
 * units (HU for CT); MODALITY is 0 display, 1 CT, 2 MR; the box is in pixels (x = column).
 * MASK_OUT, when given, receives the box's mask as ROWS*COLS bytes (0/1).
 * Models and ONNX Runtime are found as the CLI finds them (COSAM_MODELS, ORT_DYLIB_PATH,
 * the checkout's models/ and third_party/onnxruntime/). Exits 0 when every step worked.
 */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cosam.h"

#define CLICKS 5

static int fail(const char *what, int status) {
  fprintf(stderr, "segment: %s failed (status %d): %s\n", what, status, cosam_last_error());
  return 1;
}

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static size_t area(const uint8_t *mask, size_t n) {
  size_t a = 0;
  for (size_t i = 0; i < n; i++) a += mask[i] != 0;
  return a;
}

static int compare_ms(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

int main(int argc, char **argv) {
  if (argc != 9 && argc != 10) {
    fprintf(stderr, "usage: %s PIXELS.f32 ROWS COLS MODALITY X0 Y0 X1 Y1 [MASK_OUT]\n", argv[0]);
    return 2;
  }
  size_t rows = strtoul(argv[2], NULL, 10), cols = strtoul(argv[3], NULL, 10);
  int modality = atoi(argv[4]);
  float box[4] = {strtof(argv[5], NULL), strtof(argv[6], NULL), strtof(argv[7], NULL),
                  strtof(argv[8], NULL)};
  size_t n = rows * cols;

  float *pixels = malloc(n * sizeof(float));
  FILE *f = fopen(argv[1], "rb");
  if (!pixels || !f || fread(pixels, sizeof(float), n, f) != n) {
    fprintf(stderr, "segment: cannot read %zu floats from %s\n", n, argv[1]);
    return 2;
  }
  fclose(f);

  /* A bad models folder is an error with a message, not a crash. */
  CosamSegmenter *seg = NULL;
  int status = cosam_segmenter_new("/nonexistent-models", NULL, 2, &seg);
  if (status == COSAM_OK || seg != NULL || strstr(cosam_last_error(), "nonexistent") == NULL) {
    fprintf(stderr, "segment: a missing models folder was not reported: %d '%s'\n", status,
            cosam_last_error());
    return 1;
  }

  if ((status = cosam_segmenter_new(NULL, NULL, 2, &seg)) != COSAM_OK)
    return fail("cosam_segmenter_new", status);

  double t0 = now_ms();
  CosamEmbedding *emb = NULL;
  if ((status = cosam_embed(seg, pixels, rows, cols, modality, &emb)) != COSAM_OK)
    return fail("cosam_embed", status);
  free(pixels); /* cosam copied them */
  printf("embed: %.0f ms\n", now_ms() - t0);

  uint8_t *mask = malloc(n);
  float *logits = malloc(COSAM_LOGITS_SIDE * COSAM_LOGITS_SIDE * sizeof(float));
  float iou = 0;
  if (!mask || !logits) return 2;
  if ((status = cosam_predict(seg, emb, box, NULL, NULL, 0, NULL, mask, logits, &iou)) !=
      COSAM_OK)
    return fail("cosam_predict (box)", status);
  size_t box_area = area(mask, n);
  printf("box: %zu px, predicted IoU %.3f\n", box_area, iou);
  if (box_area == 0) {
    fprintf(stderr, "segment: the box gave an empty mask\n");
    return 1;
  }
  if (argc == 10) {
    FILE *out = fopen(argv[9], "wb");
    if (!out || fwrite(mask, 1, n, out) != n || fclose(out) != 0) {
      fprintf(stderr, "segment: cannot write %s\n", argv[9]);
      return 2;
    }
  }

  /* Clicks: a foreground point at the box centre, each refining the previous logits. */
  float point[2] = {(box[0] + box[2]) / 2, (box[1] + box[3]) / 2};
  int32_t label = 1;
  float *next = malloc(COSAM_LOGITS_SIDE * COSAM_LOGITS_SIDE * sizeof(float));
  double ms[CLICKS];
  if (!next) return 2;
  for (int i = 0; i < CLICKS; i++) {
    double t = now_ms();
    status = cosam_predict(seg, emb, box, point, &label, 1, logits, mask, next, &iou);
    ms[i] = now_ms() - t;
    if (status != COSAM_OK) return fail("cosam_predict (refine)", status);
    memcpy(logits, next, COSAM_LOGITS_SIDE * COSAM_LOGITS_SIDE * sizeof(float));
  }
  qsort(ms, CLICKS, sizeof(double), compare_ms);
  printf("refine: %zu px, predicted IoU %.3f; click latency median %.1f ms over %d clicks\n",
         area(mask, n), iou, ms[CLICKS / 2], CLICKS);

  /* A prompt outside the image is refused with a message naming it. */
  float outside[4] = {0, 0, (float)cols + 100, 10};
  status = cosam_predict(seg, emb, outside, NULL, NULL, 0, NULL, mask, NULL, NULL);
  if (status != COSAM_ERR_INPUT || strstr(cosam_last_error(), "outside") == NULL) {
    fprintf(stderr, "segment: a box outside the image gave %d '%s'\n", status,
            cosam_last_error());
    return 1;
  }
  printf("outside box refused: %s\n", cosam_last_error());

  free(mask);
  free(logits);
  free(next);
  cosam_embedding_free(emb);
  cosam_segmenter_free(seg);
  printf("ok\n");
  return 0;
}
