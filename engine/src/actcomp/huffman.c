/* Canonical, length-limited Huffman coding of the codec's 16-bit residual codes, and CRC-32C.
 *
 * Lengths come from Moffat and Katajainen's in-place algorithm (optimal, linear after a sort),
 * then are limited to AC_MAXLEN by lengthening the rarest codes until the Kraft sum fits and
 * shortening the most frequent ones into any slack. Codes are canonical so that the stream only
 * carries (symbol, length) pairs. Bits go LSB-first (codes stored bit-reversed, as in DEFLATE),
 * which lets the decoder peek with one unaligned 64-bit load and a shift.
 *
 * The decoder is written for hostile input: every peek is bounded by the payload size, lengths
 * are validated before a table is built, and a bit pattern with no code is an error. */
#include "actcomp/ac_internal.h"

#include <immintrin.h>
#include <stdlib.h> /* qsort */

static inline uint64_t load_le64(const uint8_t *p) {
  uint64_t v;
  memcpy(&v, p, 8);
  return v; /* x86-64 only: little-endian */
}

static inline void store_le64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

/* ---- code lengths ---------------------------------------------------------------------------- */

/* Moffat & Katajainen, "In-place calculation of minimum-redundancy codes" (1995): a[] holds
 * weights in ascending order on entry and code lengths on exit (a[0] the longest). */
static void mk_lengths(int64_t *a, int64_t n) {
  if (n == 1) {
    a[0] = 1;
    return;
  }
  a[0] += a[1];
  int64_t root = 0, leaf = 2, next;
  for (next = 1; next < n - 1; next++) {
    if (leaf >= n || a[root] < a[leaf]) {
      a[next] = a[root];
      a[root++] = next;
    } else {
      a[next] = a[leaf++];
    }
    if (leaf >= n || (root < next && a[root] < a[leaf])) {
      a[next] += a[root];
      a[root++] = next;
    } else {
      a[next] += a[leaf++];
    }
  }
  a[n - 2] = 0;
  for (next = n - 3; next >= 0; next--) a[next] = a[a[next]] + 1;
  int64_t avbl = 1, used = 0, dpth = 0;
  root = n - 2;
  next = n - 1;
  while (avbl > 0) {
    while (root >= 0 && a[root] == dpth) {
      used++;
      root--;
    }
    while (avbl > used) {
      a[next--] = dpth;
      avbl--;
    }
    avbl = 2 * used;
    dpth++;
    used = 0;
  }
}

static int cmp_weight(const void *pa, const void *pb) {
  const int64_t *a = pa, *b = pb; /* (weight, symbol) pairs */
  if (a[0] != b[0]) return a[0] < b[0] ? -1 : 1;
  return a[1] < b[1] ? -1 : a[1] > b[1];
}

void ac_huff_lengths(const uint64_t *hist, int lo, int hi, uint8_t *len, int64_t *scratch) {
  int64_t *pairs = scratch; /* (n, 2): weight, symbol */
  int64_t n = 0;
  lo = lo < 0 ? 0 : lo;
  hi = hi >= AC_NSYM ? AC_NSYM - 1 : hi;
  for (int64_t s = lo; s <= hi; s++)
    if (hist[s]) {
      pairs[2 * n] = (int64_t)hist[s];
      pairs[2 * n + 1] = s;
      n++;
    }
  ac_huff_lengths_pairs(pairs, n, len, scratch + 2 * n);
}

void ac_huff_lengths_pairs(int64_t *pairs, int64_t n, uint8_t *len, int64_t *scratch) {
  memset(len, 0, AC_NSYM);
  if (n == 0) return;
  qsort(pairs, (size_t)n, 2 * sizeof(int64_t), cmp_weight);
  /* Lengths in place over the weights, compacted to the first n slots of a second array. */
  int64_t *a = scratch;
  for (int64_t i = 0; i < n; i++) a[i] = pairs[2 * i];
  mk_lengths(a, n);

  /* Limit to AC_MAXLEN on the Kraft sum in units of 2^-MAXLEN. */
  const int64_t one = (int64_t)1 << AC_MAXLEN;
  int64_t kraft = 0;
  for (int64_t i = 0; i < n; i++) {
    if (a[i] > AC_MAXLEN) a[i] = AC_MAXLEN;
    kraft += (int64_t)1 << (AC_MAXLEN - a[i]);
  }
  while (kraft > one) /* lengthen the rarest codes first (a is in ascending weight order) */
    for (int64_t i = 0; i < n && kraft > one; i++)
      if (a[i] < AC_MAXLEN) {
        kraft -= (int64_t)1 << (AC_MAXLEN - a[i] - 1);
        a[i]++;
      }
  for (int64_t i = n - 1; i >= 0; i--) /* spend any slack on the most frequent codes */
    while (a[i] > 1 && kraft + ((int64_t)1 << (AC_MAXLEN - a[i])) <= one) {
      kraft += (int64_t)1 << (AC_MAXLEN - a[i]);
      a[i]--;
    }
  for (int64_t i = 0; i < n; i++) len[pairs[2 * i + 1]] = (uint8_t)a[i];
}

static inline uint32_t bit_reverse(uint32_t code, int len) {
  uint32_t r = 0;
  for (int i = 0; i < len; i++) r |= ((code >> i) & 1u) << (len - 1 - i);
  return r;
}

/* Canonical code assignment shared by encoder and decoder: first[l] is the code of the first
 * symbol of length l when symbols are ordered by (length, symbol). */
static void canonical_first(const uint32_t *count, uint32_t *first) {
  uint32_t code = 0; /* count[0] must be 0 */
  for (int l = 1; l <= AC_MAXLEN; l++) {
    code = (code + count[l - 1]) << 1;
    first[l] = code;
  }
}

void ac_huff_enc_table(const uint8_t *len, int lo, int hi, uint32_t *enc) {
  uint32_t count[AC_MAXLEN + 2] = {0}, first[AC_MAXLEN + 2] = {0};
  lo = lo < 0 ? 0 : lo;
  hi = hi >= AC_NSYM ? AC_NSYM - 1 : hi;
  for (int s = lo; s <= hi; s++) count[len[s]]++;
  count[0] = 0;
  canonical_first(count, first);
  for (int s = lo; s <= hi; s++) {
    int l = len[s];
    enc[s] = l ? ((uint32_t)l << 16) | bit_reverse(first[l]++, l) : 0;
  }
}

void ac_huff_enc_list(const uint16_t *syms, int64_t n, const uint8_t *len, uint32_t *enc) {
  uint32_t count[AC_MAXLEN + 2] = {0}, first[AC_MAXLEN + 2] = {0};
  for (int64_t i = 0; i < n; i++) count[len[syms[i]]]++;
  count[0] = 0;
  canonical_first(count, first);
  for (int64_t i = 0; i < n; i++) {
    int l = len[syms[i]];
    enc[i] = l ? ((uint32_t)l << 16) | bit_reverse(first[l]++, l) : 0;
  }
}

/* The code and the length of symbol s, read from its encoder entry as the entry's low 16 bits and
 * its third byte (little-endian): two narrow loads where one load and two extractions would take
 * an instruction more. The encode loop is bound by the instructions it issues, not by its acc/nb
 * dependency chain: on Zen 5, encoding two chunks interleaved (two independent chains) measured
 * no faster, while each instruction taken out of the loop counted. */
static inline uint64_t enc_code(const uint32_t *enc, uint16_t s) {
  uint16_t c;
  memcpy(&c, &enc[s], 2);
  return c;
}

static inline unsigned enc_len(const uint32_t *enc, uint16_t s) {
  return ((const uint8_t *)&enc[s])[2];
}

/* Three codes of at most 16 bits on top of at most 7 pending bits fit in 64; the flush stores 8
 * bytes and advances over the whole ones. */
static inline void put3(const uint32_t *enc, const uint16_t *c, uint64_t *acc, unsigned *nb,
                        uint8_t **p) {
  uint64_t a = *acc;
  unsigned k = *nb;
  a |= enc_code(enc, c[0]) << k;
  k += enc_len(enc, c[0]);
  a |= enc_code(enc, c[1]) << k;
  k += enc_len(enc, c[1]);
  a |= enc_code(enc, c[2]) << k;
  k += enc_len(enc, c[2]);
  store_le64(*p, a);
  *p += k >> 3;
  *acc = a >> (k & ~7u); /* k <= 55 here */
  *nb = k & 7;
}

int64_t ac_huff_encode(const uint16_t *codes, int64_t n, const uint32_t *enc, uint8_t *dst) {
  uint8_t *p = dst;
  uint64_t acc = 0;
  unsigned nb = 0; /* bits pending in acc, < 8 after each flush */
  int64_t i = 0;
  /* Before symbol i at most 2i bytes are complete, so the 8-byte store of a group starting at i
   * ends by dst + 2n whenever i + 4 <= n: the stores need no check against the end. Two groups
   * an iteration halve the loop overhead. */
  for (; i + 7 <= n; i += 6) {
    put3(enc, codes + i, &acc, &nb, &p);
    put3(enc, codes + i + 3, &acc, &nb, &p);
  }
  for (; i + 4 <= n; i += 3) put3(enc, codes + i, &acc, &nb, &p);
  for (; i < n; i++) {
    acc |= enc_code(enc, codes[i]) << nb;
    nb += enc_len(enc, codes[i]);
    while (nb >= 8) {
      *p++ = (uint8_t)acc;
      acc >>= 8;
      nb -= 8;
    }
  }
  if (nb) *p = (uint8_t)acc;
  return (int64_t)(p - dst) * 8 + nb;
}

/* ---- decoding -------------------------------------------------------------------------------- */

int ac_huff_dec_build(ac_huff_dec *d, const uint16_t *syms, const uint8_t *lens, int64_t n) {
  if (n < 1 || n > AC_NSYM) return -1;
  memset(d->count, 0, sizeof d->count);
  int64_t kraft = 0;
  for (int64_t i = 0; i < n; i++) {
    if (lens[i] < 1 || lens[i] > AC_MAXLEN) return -1;
    if (i > 0 && syms[i] <= syms[i - 1]) return -1;
    d->count[lens[i]]++;
    kraft += (int64_t)1 << (AC_MAXLEN - lens[i]);
  }
  if (kraft > ((int64_t)1 << AC_MAXLEN)) return -1;
  canonical_first(d->count, d->first);
  uint32_t off = 0;
  for (int l = 1; l <= AC_MAXLEN; l++) {
    d->offset[l] = off;
    off += d->count[l];
  }
  uint32_t fill[AC_MAXLEN + 2];
  memcpy(fill, d->offset, sizeof fill);
  /* Symbols arrive in increasing order, so this counting sort yields (length, symbol) order. */
  for (int64_t i = 0; i < n; i++) d->sorted[fill[lens[i]]++] = syms[i];
  memset(d->table, 0, sizeof d->table);
  for (int l = 1; l <= AC_TABLE_BITS; l++)
    for (uint32_t k = 0; k < d->count[l]; k++) {
      uint32_t sym = d->sorted[d->offset[l] + k];
      uint32_t r = bit_reverse(d->first[l] + k, l);
      for (uint32_t x = r; x < (1u << AC_TABLE_BITS); x += 1u << l)
        d->table[x] = ((uint32_t)l << 16) | sym;
    }
  /* Multi-symbol entries: decode whole codes from the index while they fit in its bits (the
   * bits above what is consumed are known, those past the table width are not). */
  for (uint32_t i = 0; i < (1u << AC_TABLE_BITS); i++) {
    uint32_t used = 0, cnt = 0;
    memset(d->multi[i], 0, sizeof d->multi[i]);
    while (cnt < AC_MULTI) {
      uint32_t e = d->table[i >> used], l = e >> 16;
      if (!l || used + l > AC_TABLE_BITS) break;
      d->multi[i][cnt++] = (int16_t)((int32_t)(e & 0xffff) - AC_RADIUS);
      used += l;
    }
    d->minfo[i] = (uint8_t)(cnt ? cnt | used << 4 : 0);
  }
  return 0;
}

/* Codes longer than the table (and bit patterns with no code): canonical decode bit by bit.
 * v holds at least AC_MAXLEN valid bits. Returns (len << 16) | sym, or 0 when no code fits. */
static uint32_t decode_long(const ac_huff_dec *d, uint64_t v) {
  uint32_t code = 0;
  for (int l = 1; l <= AC_MAXLEN; l++) {
    code = (code << 1) | (uint32_t)((v >> (l - 1)) & 1);
    uint32_t k = code - d->first[l];
    if (k < d->count[l]) return ((uint32_t)l << 16) | d->sorted[d->offset[l] + k];
  }
  return 0;
}

/* Up to 64 bits at bit position pos; bytes past the payload read as zero. */
static inline uint64_t peek_safe(const uint8_t *p, size_t size, uint64_t pos) {
  uint64_t byte = pos >> 3;
  if (byte + 8 <= size) return load_le64(p + byte) >> (pos & 7);
  uint8_t tmp[8] = {0};
  if (byte < size) memcpy(tmp, p + byte, size - byte);
  return load_le64(tmp) >> (pos & 7);
}

/* The decode loop, instantiated per instruction set (STORE8 writes the AC_MULTI residuals of a
 * table entry as int32). A lookup writes all AC_MULTI output slots whatever its count, so the
 * fast loops run only while each chunk has 3·AC_MULTI symbols left (three lookups between
 * reloads: at least 57 bits are valid after a reload, a lookup takes at most 16); slots past the
 * count are overwritten by the next lookup. The last symbols of a chunk go one at a time. */
#define AC_DECODE_BODY(STORE8)                                                                    \
  const uint32_t *tab = d->table;                                                                 \
  const uint64_t mask = (1u << AC_TABLE_BITS) - 1;                                                \
  uint64_t pos[AC_GROUP];                                                                         \
  int64_t left[AC_GROUP];                                                                         \
  ac_i32a *out[AC_GROUP];                                                                         \
  uint32_t bad = 0;                                                                               \
  for (int k = 0; k < nch; k++) {                                                                 \
    pos[k] = ch[k].bit0;                                                                          \
    left[k] = ch[k].nsym;                                                                         \
    out[k] = ch[k].out;                                                                           \
  }                                                                                               \
  AC_DECODE_LOOPS(STORE8)                                                                         \
  return bad ? -1 : 0;

/* One symbol: a table hit, else the canonical slow path; a length of 0 marks an invalid code
 * (recorded in bad, decoding carries on harmlessly and the group is rejected). */
#define AC_DEC1(k, v)                                                                             \
  do {                                                                                            \
    uint32_t e_ = tab[(v) & mask];                                                                \
    if (__builtin_expect(e_ < (1u << 16), 0)) e_ = decode_long(d, (v));                           \
    uint32_t l_ = e_ >> 16;                                                                       \
    bad |= (l_ == 0);                                                                             \
    *out[k]++ = (int32_t)(e_ & 0xffff) - AC_RADIUS;                                               \
    (v) >>= l_;                                                                                   \
    pos[k] += l_;                                                                                 \
  } while (0)

/* Up to AC_MULTI symbols per lookup; a long first code takes the slow path for one. */
#define AC_DECM(k, v, STORE8)                                                                     \
  do {                                                                                            \
    const uint32_t i_ = (uint32_t)((v) & mask);                                                   \
    uint32_t inf_ = d->minfo[i_], n_, l_;                                                         \
    if (__builtin_expect(inf_ == 0, 0)) {                                                         \
      uint32_t e_ = decode_long(d, (v));                                                          \
      l_ = e_ >> 16;                                                                              \
      bad |= (l_ == 0);                                                                           \
      out[k][0] = (int32_t)(e_ & 0xffff) - AC_RADIUS;                                             \
      n_ = 1;                                                                                     \
    } else {                                                                                      \
      STORE8(out[k], d->multi[i_]);                                                               \
      n_ = inf_ & 15;                                                                             \
      l_ = inf_ >> 4;                                                                             \
    }                                                                                             \
    out[k] += n_;                                                                                 \
    left[k] -= n_;                                                                                \
    (v) >>= l_;                                                                                   \
    pos[k] += l_;                                                                                 \
  } while (0)

#define AC_DECODE_LOOPS(STORE8)                                                                   \
  if (nch == AC_GROUP) {                                                                          \
    for (;;) {                                                                                    \
      int ok = 1;                                                                                 \
      for (int k = 0; k < AC_GROUP; k++)                                                          \
        ok &= (left[k] >= 3 * AC_MULTI) & ((pos[k] >> 3) + 8 <= size);                            \
      if (!ok) break;                                                                             \
      uint64_t v0 = load_le64(payload + (pos[0] >> 3)) >> (pos[0] & 7);                           \
      uint64_t v1 = load_le64(payload + (pos[1] >> 3)) >> (pos[1] & 7);                           \
      uint64_t v2 = load_le64(payload + (pos[2] >> 3)) >> (pos[2] & 7);                           \
      uint64_t v3 = load_le64(payload + (pos[3] >> 3)) >> (pos[3] & 7);                           \
      AC_DECM(0, v0, STORE8);                                                                     \
      AC_DECM(1, v1, STORE8);                                                                     \
      AC_DECM(2, v2, STORE8);                                                                     \
      AC_DECM(3, v3, STORE8);                                                                     \
      AC_DECM(0, v0, STORE8);                                                                     \
      AC_DECM(1, v1, STORE8);                                                                     \
      AC_DECM(2, v2, STORE8);                                                                     \
      AC_DECM(3, v3, STORE8);                                                                     \
      AC_DECM(0, v0, STORE8);                                                                     \
      AC_DECM(1, v1, STORE8);                                                                     \
      AC_DECM(2, v2, STORE8);                                                                     \
      AC_DECM(3, v3, STORE8);                                                                     \
    }                                                                                             \
  }                                                                                               \
  for (int k = 0; k < nch; k++) {                                                                 \
    while (left[k] >= 3 * AC_MULTI && (pos[k] >> 3) + 8 <= size) {                                \
      uint64_t v = load_le64(payload + (pos[k] >> 3)) >> (pos[k] & 7);                            \
      AC_DECM(k, v, STORE8);                                                                      \
      AC_DECM(k, v, STORE8);                                                                      \
      AC_DECM(k, v, STORE8);                                                                      \
    }                                                                                             \
    for (; left[k] > 0; left[k]--) {                                                              \
      uint64_t v = peek_safe(payload, size, pos[k]);                                              \
      AC_DEC1(k, v);                                                                              \
    }                                                                                             \
    if (pos[k] != ch[k].bit0 + ch[k].nbits) bad = 1;                                              \
  }

#define AC_STORE8_C(o, s)                                                                         \
  do {                                                                                            \
    for (int j_ = 0; j_ < AC_MULTI; j_++) (o)[j_] = (s)[j_];                                      \
  } while (0)

#define AC_STORE8_AVX2(o, s)                                                                      \
  _mm256_storeu_si256((__m256i *)(void *)(o),                                                     \
                      _mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i *)(const void *)(s))))

static int decode_group_c(const ac_huff_dec *d, const uint8_t *payload, size_t size,
                          ac_chunk *ch, int nch) {
  AC_DECODE_BODY(AC_STORE8_C)
}

__attribute__((target("avx2"))) static int decode_group_avx2(const ac_huff_dec *d,
                                                             const uint8_t *payload, size_t size,
                                                             ac_chunk *ch, int nch) {
  AC_DECODE_BODY(AC_STORE8_AVX2)
}

int ac_huff_decode_group(const ac_huff_dec *d, const uint8_t *payload, size_t size,
                         ac_chunk *ch, int nch) {
  static int avx2 = -1;
  if (avx2 < 0) {
    __builtin_cpu_init();
    avx2 = __builtin_cpu_supports("avx2");
  }
  return avx2 ? decode_group_avx2(d, payload, size, ch, nch)
              : decode_group_c(d, payload, size, ch, nch);
}

/* ---- CRC-32C --------------------------------------------------------------------------------- */

__attribute__((target("sse4.2"))) static uint32_t crc32c_hw(uint32_t crc, const uint8_t *p,
                                                            size_t n) {
  uint64_t c = crc;
  for (; n >= 8; n -= 8, p += 8) c = __builtin_ia32_crc32di(c, load_le64(p));
  uint32_t c32 = (uint32_t)c;
  for (; n; n--) c32 = __builtin_ia32_crc32qi(c32, *p++);
  return c32;
}

static uint32_t crc32c_sw(uint32_t crc, const uint8_t *p, size_t n) {
  for (; n; n--) {
    crc ^= *p++;
    for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1)));
  }
  return crc;
}

uint32_t ac_crc32c(uint32_t crc, const void *data, size_t n) {
  static int hw = -1;
  if (hw < 0) {
    __builtin_cpu_init();
    hw = __builtin_cpu_supports("sse4.2");
  }
  crc = ~crc;
  crc = hw ? crc32c_hw(crc, data, n) : crc32c_sw(crc, data, n);
  return ~crc;
}
