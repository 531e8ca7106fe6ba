/* Internals of the activation-compression codec shared by its source files (and by the tests and
 * the fuzz target, which reach them through engine/src): the SIMD kernels behind a dispatch
 * table, canonical Huffman coding, the CRC-32C that guards streams, and a growable list. */
#ifndef LATHE_AC_INTERNAL_H
#define LATHE_AC_INTERNAL_H

#include "lathe/actcomp.h"

#include <stdint.h>
#include <string.h>

#define AC_RADIUS 32768      /* residual codes d + R for |d| < R; code 0 is the escape */
#define AC_NSYM 65536        /* Huffman alphabet: every uint16 code */
#define AC_MAXLEN 16         /* length limit: 2^16 >= AC_NSYM, so every alphabet fits */
#define AC_TABLE_BITS 11     /* primary decode table: 2^11 entries of 4 bytes stay in L1 */
#define AC_CHUNK 16384       /* symbols per Huffman chunk: the unit of parallel decode (the CPU
                                encoder's; streams may carry any power of two from AC_CHUNK_MIN
                                up to this: the GPU encoder writes smaller chunks, one decode
                                thread each) */
#define AC_CHUNK_MIN 1024
#define AC_ZSTD_SLICE 65536      /* raw payload bytes per zstd frame (the last frame takes the
                                    rest): frames are compressed and decompressed in parallel */
#define AC_ZSTD_MAX_FRAMES 1024  /* most frames a stream may carry */
/* A chunk size a stream may carry: a power of two in [AC_CHUNK_MIN, AC_CHUNK]. */
static inline int ac_chunk_valid(int64_t chunk) {
  return chunk >= AC_CHUNK_MIN && chunk <= AC_CHUNK && !(chunk & (chunk - 1));
}
#define AC_MULTI 8      /* most symbols one decode-table lookup yields */
#define AC_GROUP 4           /* chunks decoded interleaved by one thread (breaks the
                                load→lookup→shift dependency chain of a single bit stream) */
#define AC_QLIMIT 8388608.0f /* |x/2eb| must stay below 2^23 so q converts to float exactly */

/* int32 access to the caller's float output buffer, which holds residuals, then q, then x'. */
typedef int32_t __attribute__((may_alias)) ac_i32a;

/* Prequantisation parameters, all derived from eb the same way by encoder and decoder. */
typedef struct ac_qp {
  float inv2eb; /* (float)(1 / (2 eb)) */
  float twoeb;  /* (float)(2 eb): x' = (float)q * twoeb */
  float eb;     /* largest float <= eb: the strict per-element check */
} ac_qp;

int ac_qp_init(double eb, ac_qp *p); /* 0, or -1 when eb gives no usable float step */

/* A growable list of (index, value) pairs: escapes (value = residual) or outliers (value = the
 * raw float bits). Appended only on the rare path, so growth may allocate. */
typedef struct ac_list {
  int64_t *idx;  /* (cap) owned, LT_MEM_WORKSPACE */
  uint32_t *val; /* (cap) owned */
  int64_t n, cap;
  int failed;    /* an allocation failed: the result is unusable */
} ac_list;

void ac_list_push(ac_list *l, int64_t idx, uint32_t val);
void ac_list_free(ac_list *l);

/* SIMD kernels (one instance per instruction set, identical results). */
typedef struct ac_kernels {
  lt_ac_simd level;
  /* q[i] = round(z[i]/2eb), 0 where z[i] is an outlier (recorded as base+i with its bits);
   * z = x, or (x - aff[0])·aff[1] with an affine map. */
  void (*quant)(const float *x, int64_t n, const ac_qp *p, const float *aff, int32_t *q,
                ac_list *outl, int64_t base);
  /* codes[j] = d + R for the residual d = (c[j]-cl[j]) - (u[j]-ul[j]), or 0 with (base+j, d)
   * pushed to esc. 2-D Lorenzo passes cl = c-1, u = the row above, ul = u-1; no prediction
   * passes zero rows for cl, u and ul. */
  void (*predict)(const int32_t *c, const int32_t *cl, const int32_t *u, const int32_t *ul,
                  int64_t w, uint16_t *codes, ac_list *esc, int64_t base);
  /* Decode of one row in place: row[j] holds residuals on entry; the row's q = prefix sum plus
   * u[j] is written to u (the next row's "up"), and x' = (float)q * twoeb to row as floats. */
  void (*unpredict)(ac_i32a *row, int32_t *u, int64_t w, float twoeb);
  /* Decode without prediction: row[j] = (float)q[j] * twoeb in place. */
  void (*dequant)(ac_i32a *row, int64_t n, float twoeb);
  /* unpredict over the h rows of a plane at x, u (w ints) zeroed by the caller. */
  void (*unpredict_plane)(ac_i32a *x, int32_t *u, int64_t h, int64_t w, float twoeb);
} ac_kernels;

const ac_kernels *ac_kernels_get(lt_ac_simd s);

/* Canonical Huffman. */
/* Code lengths (0 = unused) for hist, limited to AC_MAXLEN; hist is read over symbols [lo, hi]
 * only (zero outside), len written whole. scratch holds 3*AC_NSYM int64. */
void ac_huff_lengths(const uint64_t *hist, int lo, int hi, uint8_t *len, int64_t *scratch);
/* The same from n (weight, symbol) int64 pairs of the used symbols, in any order (sorted here);
 * scratch holds n int64. */
void ac_huff_lengths_pairs(int64_t *pairs, int64_t n, uint8_t *len, int64_t *scratch);
/* Encoder table: enc[s] = (len << 16) | bit-reversed canonical code, for LSB-first streams, for
 * the symbols [lo, hi] (len must be zero outside them; enc there is left as it was). */
void ac_huff_enc_table(const uint8_t *len, int lo, int hi, uint32_t *enc);
/* The same for the n used symbols syms (strictly increasing): enc[i] is symbol syms[i]'s entry. */
void ac_huff_enc_list(const uint16_t *syms, int64_t n, const uint8_t *len, uint32_t *enc);
/* Writes the n codes of one chunk at dst, which has room for the worst case of 2 bytes a symbol
 * (nothing is written at or past dst + 2n); returns the bit count. */
int64_t ac_huff_encode(const uint16_t *codes, int64_t n, const uint32_t *enc, uint8_t *dst);

typedef struct ac_huff_dec {
  uint32_t table[1 << AC_TABLE_BITS]; /* (len << 16) | sym; len 0: long or invalid code */
  /* Up to AC_MULTI symbols per lookup: every whole code the table bits hold, as residuals
   * d = sym - R (int16: the escape code 0 gives -R); minfo is count | total length << 4, 0 for a
   * long or invalid first code. Zero-heavy activations code 0 in one bit, so one lookup often
   * yields all AC_MULTI. */
  int16_t multi[1 << AC_TABLE_BITS][AC_MULTI];
  uint8_t minfo[1 << AC_TABLE_BITS];
  uint32_t first[AC_MAXLEN + 2];      /* canonical first code per length */
  uint32_t count[AC_MAXLEN + 2];      /* symbols per length */
  uint32_t offset[AC_MAXLEN + 2];     /* index of the first symbol of each length in sorted */
  uint16_t sorted[AC_NSYM];           /* symbols in canonical order */
} ac_huff_dec;

/* From (symbol, length) pairs with strictly increasing symbols; -1 when the lengths do not form
 * a prefix code (Kraft sum over 1) or a length is out of range. */
int ac_huff_dec_build(ac_huff_dec *d, const uint16_t *syms, const uint8_t *lens, int64_t n);

/* One chunk to decode: bits [bit0, bit0 + nbits) of the payload give nsym residuals. */
typedef struct ac_chunk {
  uint64_t bit0, nbits;
  int64_t nsym;
  ac_i32a *out;
} ac_chunk;

/* Decodes up to AC_GROUP chunks interleaved; each chunk must end exactly on its bit count.
 * Residuals d = sym - R are written to out (escape symbols give -R). Returns 0 or -1. */
int ac_huff_decode_group(const ac_huff_dec *d, const uint8_t *payload, size_t size,
                         ac_chunk *chunks, int nchunks);

uint32_t ac_crc32c(uint32_t crc, const void *data, size_t n);

/* The stream's checksum over everything but its checksum field; the fuzz target uses it to
 * reach the parser behind the checksum. */
uint32_t ac_stream_checksum(const uint8_t *src, size_t len);
#define AC_HEADER_BYTES 136
#define AC_CRC_OFFSET 128
#define AC_MAGIC "LTAC"
#define AC_VERSION 1
#define AC_PREDICTOR_NONE 0
#define AC_PREDICTOR_LORENZO2D 2
#define AC_FLAG_ZSTD 1u
#define AC_MAX_ELEMS ((int64_t)1 << 33) /* keeps the 4-way uint32 histograms from overflowing
                                            (each sees at most a quarter) and every size far
                                            from overflow */

/* The LORENZO stream's header (layout in codec.c), written by the CPU and GPU encoders alike;
 * the CRC field is left zero. */
void ac_header_put(uint8_t *o, int pred, int flags, int ndim, const int64_t *shape, double eb,
                   uint32_t chunk, int64_t nsym, int64_t nesc, int64_t nout, uint64_t raw_bytes,
                   uint64_t stored_bytes);

/* A parsed header. The offsets are from the stream's start; the pointers are set only by the
 * CPU decoder, which has the whole stream in host memory. */
typedef struct ac_hdr {
  int ndim;
  int64_t shape[LT_MAX_DIMS];
  int64_t n, h, w, nchunks, chunk;
  double eb;
  int zstd, pred;
  int64_t nsym, nesc, nout;
  uint64_t raw_bytes, stored_bytes;
  size_t off_table, off_chunks, off_payload, off_esc, off_outl;
  const uint8_t *table, *chunk_sec, *payload, *esc, *outl;
} ac_hdr;

/* The header's own checks, which need only its AC_HEADER_BYTES, against a stream of len bytes:
 * fields, dims, bound, chunk size, counts, and the sections adding up to len exactly. Neither
 * the checksum nor the sections' contents are checked (the GPU decoder reads the header alone
 * first). */
lt_status ac_parse_header(const uint8_t *s, size_t len, ac_hdr *hd, lt_err *err);
/* The chunk section (hd->nchunks u32 bit counts): each within [symbols, 16·symbols], and their
 * byte sizes summing to the raw payload. */
lt_status ac_parse_chunks(const ac_hdr *hd, const uint8_t *chunk_sec, lt_err *err);

/* Comparison codecs (zfp_codec.c is built only with libzfp). */
lt_status ac_zfp_encode(const float *x, int ndim, const int64_t *shape, double eb, lt_ac_buf *out,
                        lt_err *err);
lt_status ac_zfp_decode(const uint8_t *src, size_t len, float *x, int64_t n, lt_ac_info *info,
                        lt_err *err);
lt_status ac_zstd_encode(const float *x, int ndim, const int64_t *shape, int level,
                         lt_ac_buf *out, lt_err *err);
lt_status ac_zstd_decode(const uint8_t *src, size_t len, float *x, int64_t n, lt_ac_info *info,
                         lt_err *err);

/* The comparison codecs' header: magic, u32 ndim, 8 × u64 shape, f64 eb. */
#define AC_SMALL_HEADER_BYTES 80
void ac_small_header_put(uint8_t *o, const char *magic, int ndim, const int64_t *shape,
                         double eb);
/* Fills info; with check_n, n must match the stream's element count. */
lt_status ac_small_header_parse(const uint8_t *s, size_t len, lt_ac_kind kind, int64_t n,
                                int check_n, lt_ac_info *info, lt_err *err);

/* Shared helpers.*/
lt_status ac_buf_reserve(lt_ac_buf *b, size_t cap, lt_err *err);
void ac_put_u32(uint8_t *p, uint32_t v);
void ac_put_u64(uint8_t *p, uint64_t v);
uint32_t ac_get_u32(const uint8_t *p);
uint64_t ac_get_u64(const uint8_t *p);
/* Checks ndim and shape (every dim >= 1, product without overflow); fills *n. */
lt_status ac_check_shape(int ndim, const int64_t *shape, int64_t *n, lt_err *err);

#endif
