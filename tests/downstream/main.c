/* An installed kvcodec used from C through the shared library: lossless round trip. */
#include <kvcodec/kvcodec.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void) {
  kvcodec_shape shape = {2, 20, 2, 8};
  size_t n = 2u * 2 * 20 * 16;
  unsigned short* x = malloc(n * 2);
  unsigned short* y = calloc(n, 2);
  for (size_t i = 0; i < n; ++i) x[i] = (unsigned short)(0x3C00 + (i * 7919) % 1024);
  kvcodec_view v;
  memset(&v, 0, sizeof v);
  v.layout = KVCODEC_LAYOUT_CONTIGUOUS;
  v.dtype = KVCODEC_DTYPE_F16;
  v.shape = shape;
  v.data = x;
  kvcodec_encode_options o;
  kvcodec_encode_options_init(&o);
  o.level = 0;
  size_t cap = kvcodec_max_encoded_size(&shape, KVCODEC_DTYPE_F16, &o), used = 0;
  unsigned char* frame = malloc(cap);
  int rc = kvcodec_encode_into(&v, &o, frame, cap, &used);
  v.data = y;
  if (rc == KVCODEC_OK) rc = kvcodec_decode_into(frame, used, &v, NULL);
  if (rc != KVCODEC_OK || memcmp(x, y, n * 2) != 0) {
    fprintf(stderr, "downstream_c: %s: %s\n", kvcodec_status_name(rc), kvcodec_last_error());
    return 1;
  }
  printf("downstream_c: kvcodec %s, %zu -> %zu bytes, lossless\n", kvcodec_version(), n * 2, used);
  free(frame);
  free(y);
  free(x);
  return 0;
}
