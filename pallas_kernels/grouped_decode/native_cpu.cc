// Native CPU decoder of ECF8 format version 2, an XLA FFI handler.
//
// Why: the plain-jnp reference advances all chunks and lanes together, one group per scan
// step, and XLA:CPU runs each step as a dozen separate loops over [C, 128] arrays (60-150
// MB/s on a loaded 2-core host). Here one thread decodes a chunk, group by group, lane block
// by lane block, with the lanes' buffers in vector registers: the cross-lane exclusive prefix
// sum is a running counter (scalar), a prefix table (AVX2) or an expand (AVX-512).
//
// Loops, picked at run time from the CPU (the library is built without -march, so one cached
// build serves every x86-64 and non-x86 machine):
//   AVX-512 (F, BW, VBMI), 16 lanes: refills by expand-load; a byte-sized table lives in four
//     zmm registers and is read with two vpermi2b (a table gather otherwise);
//   AVX2, 8 lanes: refill and table reads are gathers (positions clamped in vectors);
//   scalar: any CPU.
//
// Numerics: bit-identical to pallas_kernels/grouped_decode/reference.py for every input,
// malformed ones included. The vector loops use the reference's (hi, lo) uint32 pair and
// int32 bit counts: vector shifts by >= 32 give 0 like XLA's, so they are exact for any
// table and threshold. The scalar loop keeps a uint64 buffer where the format's invariant
// holds (T <= 32, no entry longer than T / 4: the bit count stays in [0, 63]) and otherwise
// runs the reference's arithmetic with XLA's shift semantics and int32 wrap-around, so a
// corrupted table or threshold decodes to the same garbage. Stream positions are clamped to
// [0, W - 1] everywhere.
//
// Backend: XLA:CPU through the FFI (jax.ffi.ffi_call); chunks are spread over XLA's intra-op
// thread pool (the calling thread works too, so it never waits on a busy pool).
//
// Contract (reference.grouped_decode_reference, bits = 8 or 16):
//   stream uint32[W] (W >= 1), offsets uint32[>= C], raw uint32[C, R, L], lut int32[C, 256],
//   threshold int32[C] -> out uint32[C, G * P, L], where bits = 8: R = G / 2, P = 1 (raw
//   nibble of step t at bits 4 * (t % 8)); bits = 16: R = G, P = 2 (raw byte j at bits 8j).

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kGroup = 4;       // codes per lane per refill
constexpr int kLutSize = 256;   // 8-bit peek
constexpr int kPeekShift = 56;  // peek = top 8 bits of the 64-bit buffer

struct Problem {
  const uint32_t* stream;
  int64_t num_words;
  const uint32_t* offsets;
  const uint32_t* raw;
  const int32_t* lut;
  const int32_t* threshold;
  uint32_t* out;
  int64_t lanes;
  int64_t groups;
  int64_t raw_rows;
  int bits;
  int simd;  // the widest loop to use: 0 scalar, 1 AVX2, 2 AVX-512 (where the CPU has it)
};

// XLA shift semantics: a logical shift by >= 32 gives 0.
inline uint32_t Shl(uint32_t x, uint32_t s) { return s >= 32 ? 0u : x << s; }
inline uint32_t Shr(uint32_t x, uint32_t s) { return s >= 32 ? 0u : x >> s; }

inline uint32_t Clamp(uint32_t pos, int64_t num_words) {
  int64_t p = static_cast<int32_t>(pos);  // the reference's int32 positions (wrap-around)
  return static_cast<uint32_t>(std::min<int64_t>(std::max<int64_t>(p, 0), num_words - 1));
}

// reference.spread_nibbles: byte j = (nibble_j & 8) << 4 | (nibble_j & 7).
inline uint32_t SpreadNibbles(uint32_t raw_word, int64_t g) {
  uint32_t x = (raw_word >> ((g & 1) * 16)) & 0xFFFF;
  x = (x | (x << 8)) & 0x00FF00FF;
  x = (x | (x << 4)) & 0x0F0F0F0F;
  return ((x & 0x08080808) << 4) | (x & 0x07070707);
}

// reference.spread_bytes: half k = (byte & 0x80) << 8 | (byte & 0x7F) of byte 2p + k.
inline uint32_t SpreadBytes(uint32_t raw_word, int p) {
  uint32_t x = (raw_word >> (16 * p)) & 0xFFFF;
  x = (x | (x << 8)) & 0x00FF00FF;
  return ((x & 0x00800080) << 8) | (x & 0x007F007F);
}

// Whether chunk c keeps every lane's bit count in [0, 63] (docs/FORMAT.md, "The stream").
bool FastPathHolds(const int32_t* table, int32_t threshold) {
  if (threshold < 0 || threshold > 32) return false;
  int32_t longest = 0;
  for (int p = 0; p < kLutSize; ++p) longest = std::max(longest, table[p] & 0xF);
  return kGroup * longest <= threshold;
}

// One chunk, the format's invariant holding: a uint64 buffer per lane.
template <int kBits>
void DecodeChunkFast(const Problem& a, int64_t c, uint64_t* buf, int32_t* nbits) {
  constexpr int kPerRaw = kBits == 8 ? 2 : 1;     // groups per raw word
  constexpr int kWords = kBits == 8 ? 1 : 2;      // output words per group
  constexpr int kPerWord = 32 / kBits;            // values per output word
  constexpr int kSymShift = kBits / 2 - 1;        // symbol position in a value
  const int64_t lanes = a.lanes;
  const int32_t* table = a.lut + c * kLutSize;
  const int32_t threshold = a.threshold[c];
  const uint32_t* stream = a.stream;
  const int64_t num_words = a.num_words;
  uint32_t base = a.offsets[c];
  std::fill(buf, buf + lanes, 0);
  std::fill(nbits, nbits + lanes, 0);
  for (int64_t g = 0; g < a.groups; ++g) {
    const uint32_t* raw_row = a.raw + (c * a.raw_rows + g / kPerRaw) * lanes;
    uint32_t* out_row = a.out + (c * a.groups + g) * kWords * lanes;
    for (int64_t l = 0; l < lanes; ++l) {
      uint64_t b = buf[l];
      int32_t n = nbits[l];
      const uint32_t need = n < threshold;
      const uint64_t word = stream[Clamp(base, num_words)];
      // n < threshold <= 32 where needed: the word lands right below the n buffered bits.
      b |= (word << ((32 - n) & 63)) & (0 - static_cast<uint64_t>(need));
      n += 32 * need;
      base += need;
      uint32_t out[kWords];
      const uint32_t raw_word = raw_row[l];
      if constexpr (kBits == 8) {
        out[0] = SpreadNibbles(raw_word, g);
      } else {
        out[0] = SpreadBytes(raw_word, 0);
        out[1] = SpreadBytes(raw_word, 1);
      }
      for (int j = 0; j < kGroup; ++j) {
        const int32_t entry = table[b >> kPeekShift];
        const int32_t length = entry & 0xF;
        b <<= length;
        n -= length;
        out[j / kPerWord] |= static_cast<uint32_t>(entry >> 4)
                             << (kBits * (j % kPerWord) + kSymShift);
      }
      buf[l] = b;
      nbits[l] = n;
      for (int p = 0; p < kWords; ++p) out_row[p * lanes + l] = out[p];
    }
  }
}

// One chunk with the reference's exact arithmetic, for tables and thresholds the encoder
// never writes: (hi, lo) uint32 halves, int32 bit counts that may leave [0, 63].
template <int kBits>
void DecodeChunkExact(const Problem& a, int64_t c, uint64_t* buf, int32_t* nbits) {
  constexpr int kPerRaw = kBits == 8 ? 2 : 1;
  constexpr int kWords = kBits == 8 ? 1 : 2;
  constexpr int kPerWord = 32 / kBits;
  constexpr int kSymShift = kBits / 2 - 1;
  const int64_t lanes = a.lanes;
  const int32_t* table = a.lut + c * kLutSize;
  const int32_t threshold = a.threshold[c];
  uint32_t base = a.offsets[c];
  std::fill(buf, buf + lanes, 0);
  std::fill(nbits, nbits + lanes, 0);
  for (int64_t g = 0; g < a.groups; ++g) {
    const uint32_t* raw_row = a.raw + (c * a.raw_rows + g / kPerRaw) * lanes;
    uint32_t* out_row = a.out + (c * a.groups + g) * kWords * lanes;
    for (int64_t l = 0; l < lanes; ++l) {
      uint32_t hi = static_cast<uint32_t>(buf[l] >> 32);
      uint32_t lo = static_cast<uint32_t>(buf[l]);
      uint32_t n = static_cast<uint32_t>(nbits[l]);  // int32 bits, wrapping arithmetic
      const bool need = static_cast<int32_t>(n) < threshold;
      if (need) {
        const uint32_t word = a.stream[Clamp(base, a.num_words)];
        hi |= Shr(word, n);
        lo |= Shl(Shl(word, 1), 31u - n);
        n += 32;
        base += 1;
      }
      uint32_t out[kWords];
      const uint32_t raw_word = raw_row[l];
      if constexpr (kBits == 8) {
        out[0] = SpreadNibbles(raw_word, g);
      } else {
        out[0] = SpreadBytes(raw_word, 0);
        out[1] = SpreadBytes(raw_word, 1);
      }
      for (int j = 0; j < kGroup; ++j) {
        const int32_t entry = table[hi >> 24];
        const uint32_t length = static_cast<uint32_t>(entry & 0xF);
        hi = Shl(hi, length) | Shr(lo, 32u - length);
        lo = Shl(lo, length);
        n -= length;
        out[j / kPerWord] |= static_cast<uint32_t>(entry >> 4)
                             << (kBits * (j % kPerWord) + kSymShift);
      }
      buf[l] = (static_cast<uint64_t>(hi) << 32) | lo;
      nbits[l] = static_cast<int32_t>(n);
      for (int p = 0; p < kWords; ++p) out_row[p * lanes + l] = out[p];
    }
  }
}


#if defined(__x86_64__) || defined(__i386__)
#define ECF8_X86 1
#include <immintrin.h>

// Exclusive prefix sums of the 8 bits of a lane mask: kPrefix8[m][i] = popcount(m & ((1 << i) - 1)).
struct Prefix8 {
  alignas(32) int32_t v[256][8];
  Prefix8() {
    for (int m = 0; m < 256; ++m) {
      int32_t s = 0;
      for (int i = 0; i < 8; ++i) {
        v[m][i] = s;
        s += (m >> i) & 1;
      }
    }
  }
};
const Prefix8 kPrefix8;

// One chunk, 8 lanes per AVX2 vector. The vector shifts already have XLA's semantics (a count
// >= 32 gives 0) and the compare is signed, so this is the reference's exact arithmetic for
// every input: no fast/exact split. Positions are clamped in vectors before the gather.
template <int kBits>
__attribute__((target("avx2,popcnt"))) void DecodeChunkAvx2(const Problem& a, int64_t c,
                                                             uint32_t* his, uint32_t* los,
                                                             int32_t* nbs) {
  constexpr int kPerRaw = kBits == 8 ? 2 : 1;
  constexpr int kWords = kBits == 8 ? 1 : 2;
  constexpr int kPerWord = 32 / kBits;
  constexpr int kSymShift = kBits / 2 - 1;
  const int64_t lanes = a.lanes;
  const int* table = reinterpret_cast<const int*>(a.lut + c * kLutSize);
  const int* stream = reinterpret_cast<const int*>(a.stream);
  const __m256i threshold = _mm256_set1_epi32(a.threshold[c]);
  const __m256i last = _mm256_set1_epi32(
      static_cast<int32_t>(std::min<int64_t>(a.num_words - 1, INT32_MAX)));
  const __m256i zero = _mm256_setzero_si256();
  const __m256i c15 = _mm256_set1_epi32(15), c31 = _mm256_set1_epi32(31),
                c32 = _mm256_set1_epi32(32);
  uint32_t base = a.offsets[c];
  std::fill(his, his + lanes, 0);
  std::fill(los, los + lanes, 0);
  std::fill(nbs, nbs + lanes, 0);
  for (int64_t g = 0; g < a.groups; ++g) {
    const uint32_t* raw_row = a.raw + (c * a.raw_rows + g / kPerRaw) * lanes;
    uint32_t* out_row = a.out + (c * a.groups + g) * kWords * lanes;
    for (int64_t l = 0; l < lanes; l += 8) {
      __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(his + l));
      __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(los + l));
      __m256i nb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(nbs + l));
      const __m256i need = _mm256_cmpgt_epi32(threshold, nb);
      const int mask = _mm256_movemask_ps(_mm256_castsi256_ps(need));
      __m256i pos = _mm256_add_epi32(
          _mm256_set1_epi32(static_cast<int32_t>(base)),
          _mm256_load_si256(reinterpret_cast<const __m256i*>(kPrefix8.v[mask])));
      pos = _mm256_min_epi32(_mm256_max_epi32(pos, zero), last);
      const __m256i word = _mm256_and_si256(_mm256_i32gather_epi32(stream, pos, 4), need);
      hi = _mm256_or_si256(hi, _mm256_srlv_epi32(word, nb));
      lo = _mm256_or_si256(
          lo, _mm256_sllv_epi32(_mm256_slli_epi32(word, 1), _mm256_sub_epi32(c31, nb)));
      nb = _mm256_add_epi32(nb, _mm256_and_si256(need, c32));
      base += static_cast<uint32_t>(__builtin_popcount(mask));
      const __m256i rw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(raw_row + l));
      __m256i out[kWords];
      if constexpr (kBits == 8) {
        __m256i x = _mm256_and_si256(_mm256_srli_epi32(rw, (g & 1) * 16),
                                     _mm256_set1_epi32(0xFFFF));
        x = _mm256_and_si256(_mm256_or_si256(x, _mm256_slli_epi32(x, 8)),
                             _mm256_set1_epi32(0x00FF00FF));
        x = _mm256_and_si256(_mm256_or_si256(x, _mm256_slli_epi32(x, 4)),
                             _mm256_set1_epi32(0x0F0F0F0F));
        out[0] = _mm256_or_si256(
            _mm256_slli_epi32(_mm256_and_si256(x, _mm256_set1_epi32(0x08080808)), 4),
            _mm256_and_si256(x, _mm256_set1_epi32(0x07070707)));
      } else {
        for (int p = 0; p < 2; ++p) {
          __m256i x = p ? _mm256_srli_epi32(rw, 16) : _mm256_and_si256(rw, _mm256_set1_epi32(0xFFFF));
          x = _mm256_and_si256(_mm256_or_si256(x, _mm256_slli_epi32(x, 8)),
                               _mm256_set1_epi32(0x00FF00FF));
          out[p] = _mm256_or_si256(
              _mm256_slli_epi32(_mm256_and_si256(x, _mm256_set1_epi32(0x00800080)), 8),
              _mm256_and_si256(x, _mm256_set1_epi32(0x007F007F)));
        }
      }
      for (int j = 0; j < kGroup; ++j) {
        const __m256i entry = _mm256_i32gather_epi32(table, _mm256_srli_epi32(hi, 24), 4);
        const __m256i length = _mm256_and_si256(entry, c15);
        hi = _mm256_or_si256(_mm256_sllv_epi32(hi, length),
                             _mm256_srlv_epi32(lo, _mm256_sub_epi32(c32, length)));
        lo = _mm256_sllv_epi32(lo, length);
        nb = _mm256_sub_epi32(nb, length);
        out[j / kPerWord] = _mm256_or_si256(
            out[j / kPerWord],
            _mm256_slli_epi32(_mm256_srai_epi32(entry, 4), kBits * (j % kPerWord) + kSymShift));
      }
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(his + l), hi);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(los + l), lo);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(nbs + l), nb);
      for (int p = 0; p < kWords; ++p) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out_row + p * lanes + l), out[p]);
      }
    }
  }
}

bool HasAvx2() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
  return has;
}

// Whether every entry of a chunk's table fits in a byte (always, for tables the format
// builds): the AVX-512 loop then reads the table with two byte permutes instead of a gather.
bool TableFitsBytes(const int32_t* table) {
  for (int p = 0; p < kLutSize; ++p) {
    if (table[p] < 0 || table[p] > 255) return false;
  }
  return true;
}

// One chunk, 16 lanes per AVX-512 vector; the same exact arithmetic as DecodeChunkAvx2. A
// lane's exclusive prefix among the refilling lanes is an expand of 0, 1, 2, ...; when every
// position is in range the words come from one expand-load, else from a clamped gather. With
// byte-sized entries (kBytes) the 256-entry table lives in four registers: two vpermi2b of
// 128 entries each, picked by the peek's bit 7.
template <int kBits, bool kBytes>
__attribute__((target("avx512f,avx512bw,avx512vbmi,avx512vbmi2,popcnt"))) void DecodeChunkAvx512(
    const Problem& a, int64_t c, uint32_t* his, uint32_t* los, int32_t* nbs) {
  constexpr int kPerRaw = kBits == 8 ? 2 : 1;
  constexpr int kWords = kBits == 8 ? 1 : 2;
  constexpr int kPerWord = 32 / kBits;
  constexpr int kSymShift = kBits / 2 - 1;
  const int64_t lanes = a.lanes;
  const int32_t* table32 = a.lut + c * kLutSize;
  alignas(64) uint8_t bytes[kLutSize];
  for (int p = 0; p < kLutSize; ++p) bytes[p] = static_cast<uint8_t>(table32[p]);
  const __m512i t0 = _mm512_load_si512(bytes), t1 = _mm512_load_si512(bytes + 64),
                t2 = _mm512_load_si512(bytes + 128), t3 = _mm512_load_si512(bytes + 192);
  const int* stream = reinterpret_cast<const int*>(a.stream);
  const int64_t num_words = a.num_words;
  const __m512i threshold = _mm512_set1_epi32(a.threshold[c]);
  const __m512i last = _mm512_set1_epi32(
      static_cast<int32_t>(std::min<int64_t>(num_words - 1, INT32_MAX)));
  const __m512i zero = _mm512_setzero_si512();
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i c15 = _mm512_set1_epi32(15), c31 = _mm512_set1_epi32(31),
                c32 = _mm512_set1_epi32(32), c80 = _mm512_set1_epi32(0x80),
                cf0 = _mm512_set1_epi32(0xF0);
  uint32_t base = a.offsets[c];
  std::fill(his, his + lanes, 0);
  std::fill(los, los + lanes, 0);
  std::fill(nbs, nbs + lanes, 0);
  for (int64_t g = 0; g < a.groups; ++g) {
    const uint32_t* raw_row = a.raw + (c * a.raw_rows + g / kPerRaw) * lanes;
    uint32_t* out_row = a.out + (c * a.groups + g) * kWords * lanes;
    for (int64_t l = 0; l < lanes; l += 16) {
      __m512i hi = _mm512_loadu_si512(his + l);
      __m512i lo = _mm512_loadu_si512(los + l);
      __m512i nb = _mm512_loadu_si512(nbs + l);
      const __mmask16 need = _mm512_cmpgt_epi32_mask(threshold, nb);
      const uint32_t count = static_cast<uint32_t>(__builtin_popcount(need));
      const int64_t first = static_cast<int32_t>(base);
      __m512i word;
      if (first >= 0 && first + count <= num_words) {
        word = _mm512_maskz_expandloadu_epi32(need, stream + first);
      } else {
        __m512i pos = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(base)),
                                       _mm512_maskz_expand_epi32(need, iota));
        pos = _mm512_min_epi32(_mm512_max_epi32(pos, zero), last);
        word = _mm512_mask_i32gather_epi32(zero, need, pos, stream, 4);
      }
      hi = _mm512_or_si512(hi, _mm512_srlv_epi32(word, nb));
      lo = _mm512_or_si512(
          lo, _mm512_sllv_epi32(_mm512_slli_epi32(word, 1), _mm512_sub_epi32(c31, nb)));
      nb = _mm512_mask_add_epi32(nb, need, nb, c32);
      base += count;
      const __m512i rw = _mm512_loadu_si512(raw_row + l);
      __m512i out[kWords];
      if constexpr (kBits == 8) {
        __m512i x = _mm512_and_si512(_mm512_srli_epi32(rw, (g & 1) * 16),
                                     _mm512_set1_epi32(0xFFFF));
        x = _mm512_and_si512(_mm512_or_si512(x, _mm512_slli_epi32(x, 8)),
                             _mm512_set1_epi32(0x00FF00FF));
        x = _mm512_and_si512(_mm512_or_si512(x, _mm512_slli_epi32(x, 4)),
                             _mm512_set1_epi32(0x0F0F0F0F));
        out[0] = _mm512_or_si512(
            _mm512_slli_epi32(_mm512_and_si512(x, _mm512_set1_epi32(0x08080808)), 4),
            _mm512_and_si512(x, _mm512_set1_epi32(0x07070707)));
      } else {
        for (int p = 0; p < 2; ++p) {
          __m512i x = p ? _mm512_srli_epi32(rw, 16)
                        : _mm512_and_si512(rw, _mm512_set1_epi32(0xFFFF));
          x = _mm512_and_si512(_mm512_or_si512(x, _mm512_slli_epi32(x, 8)),
                               _mm512_set1_epi32(0x00FF00FF));
          out[p] = _mm512_or_si512(
              _mm512_slli_epi32(_mm512_and_si512(x, _mm512_set1_epi32(0x00800080)), 8),
              _mm512_and_si512(x, _mm512_set1_epi32(0x007F007F)));
        }
      }
#pragma GCC unroll 4
      for (int j = 0; j < kGroup; ++j) {
        const __m512i peek = _mm512_srli_epi32(hi, 24);
        const int shift = kBits * (j % kPerWord) + kSymShift;  // the symbol's place
        __m512i entry, symbol;
        if constexpr (kBytes) {
          // Bytes 1..3 of each dword look up entry 0: only the low byte is the entry.
          const __m512i low = _mm512_permutex2var_epi8(t0, peek, t1);
          const __m512i high = _mm512_permutex2var_epi8(t2, peek, t3);
          entry = _mm512_mask_blend_epi32(_mm512_test_epi32_mask(peek, c80), low, high);
          const __m512i sym = _mm512_and_si512(entry, cf0);  // symbol << 4
          symbol = shift >= 4 ? _mm512_slli_epi32(sym, shift - 4)
                              : _mm512_srli_epi32(sym, 4 - shift);
        } else {
          entry = _mm512_i32gather_epi32(peek, table32, 4);
          symbol = _mm512_slli_epi32(_mm512_srai_epi32(entry, 4), shift);
        }
        const __m512i length = _mm512_and_si512(entry, c15);
        // (hi << length) | (lo >> (32 - length)) in one vpshldvd: length <= 15, and length
        // 0 gives hi as XLA's shift by 32 does.
        hi = _mm512_shldv_epi32(hi, lo, length);
        lo = _mm512_sllv_epi32(lo, length);
        nb = _mm512_sub_epi32(nb, length);
        out[j / kPerWord] = _mm512_or_si512(out[j / kPerWord], symbol);
      }
      _mm512_storeu_si512(his + l, hi);
      _mm512_storeu_si512(los + l, lo);
      _mm512_storeu_si512(nbs + l, nb);
      for (int p = 0; p < kWords; ++p) _mm512_storeu_si512(out_row + p * lanes + l, out[p]);
    }
  }
}

bool HasAvx512() {
  static const bool has = __builtin_cpu_supports("avx512f") &&
                          __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vbmi") &&
                          __builtin_cpu_supports("avx512vbmi2");
  return has;
}
#endif  // x86

void DecodeChunk(const Problem& a, int64_t c, uint64_t* buf, int32_t* nbits) {
#ifdef ECF8_X86
  if (a.simd >= 2 && HasAvx512() && a.lanes % 16 == 0) {
    uint32_t* his = reinterpret_cast<uint32_t*>(buf);
    const bool bytes = TableFitsBytes(a.lut + c * kLutSize);
    if (a.bits == 8) {
      bytes ? DecodeChunkAvx512<8, true>(a, c, his, his + a.lanes, nbits)
            : DecodeChunkAvx512<8, false>(a, c, his, his + a.lanes, nbits);
    } else {
      bytes ? DecodeChunkAvx512<16, true>(a, c, his, his + a.lanes, nbits)
            : DecodeChunkAvx512<16, false>(a, c, his, his + a.lanes, nbits);
    }
    return;
  }
  if (a.simd >= 1 && HasAvx2() && a.lanes % 8 == 0) {
    // buf holds 2 * lanes uint32 words here: hi, then lo.
    uint32_t* his = reinterpret_cast<uint32_t*>(buf);
    if (a.bits == 8) {
      DecodeChunkAvx2<8>(a, c, his, his + a.lanes, nbits);
    } else {
      DecodeChunkAvx2<16>(a, c, his, his + a.lanes, nbits);
    }
    return;
  }
#endif
  const bool fast = FastPathHolds(a.lut + c * kLutSize, a.threshold[c]);
  if (a.bits == 8) {
    fast ? DecodeChunkFast<8>(a, c, buf, nbits) : DecodeChunkExact<8>(a, c, buf, nbits);
  } else {
    fast ? DecodeChunkFast<16>(a, c, buf, nbits) : DecodeChunkExact<16>(a, c, buf, nbits);
  }
}

// Chunks handed out by an atomic counter to the calling thread and pool tasks. The caller
// waits only for tasks that started work: a task that starts after the last chunk was taken
// touches nothing but this (shared, reference-counted) state.
struct Work {
  Problem problem;
  int64_t chunks;
  std::atomic<int64_t> next{0};
  std::mutex mu;
  std::condition_variable done;
  int64_t active = 0;

  void Run() {
    std::vector<uint64_t> buf(problem.lanes);
    std::vector<int32_t> nbits(problem.lanes);
    for (int64_t c = next.fetch_add(1); c < chunks; c = next.fetch_add(1)) {
      DecodeChunk(problem, c, buf.data(), nbits.data());
    }
  }
};

ffi::Error GroupedDecode(ffi::ThreadPool pool, ffi::Buffer<ffi::U32> stream,
                         ffi::Buffer<ffi::U32> offsets, ffi::Buffer<ffi::U32> raw,
                         ffi::Buffer<ffi::S32> lut, ffi::Buffer<ffi::S32> threshold,
                         ffi::Result<ffi::AnyBuffer> out, int64_t bits, int64_t max_threads, int64_t simd) {
  if (bits != 8 && bits != 16) {
    return ffi::Error::InvalidArgument("ecf8 grouped decode: bits must be 8 or 16, got " +
                                       std::to_string(bits));
  }
  const auto rd = raw.dimensions();
  if (rd.size() != 3 || stream.dimensions().size() != 1) {
    return ffi::Error::InvalidArgument("ecf8 grouped decode: bad ranks");
  }
  const int64_t chunks = rd[0], raw_rows = rd[1], lanes = rd[2];
  const int64_t groups = bits == 8 ? 2 * raw_rows : raw_rows;
  const int64_t words = bits == 8 ? groups : 2 * groups;
  const int64_t num_words = stream.dimensions()[0];
  // The output is any unsigned view of the words' bytes: uint32[C, words, L], or the values
  // themselves (uint8 or uint16, in slot order), which XLA then reads without unpacking words.
  const auto type = out->element_type();
  if ((type != ffi::DataType::U32 && type != ffi::DataType::U16 && type != ffi::DataType::U8) ||
      out->size_bytes() != static_cast<size_t>(chunks * words * lanes) * 4 ||
      lut.element_count() != chunks * kLutSize || threshold.element_count() != chunks ||
      static_cast<int64_t>(offsets.element_count()) < chunks ||
      (chunks > 0 && num_words < 1)) {
    return ffi::Error::InvalidArgument("ecf8 grouped decode: inconsistent shapes");
  }
  if (chunks == 0) return ffi::Error::Success();
  auto work = std::make_shared<Work>();
  work->problem = Problem{stream.typed_data(), num_words, offsets.typed_data(),
                          raw.typed_data(), lut.typed_data(), threshold.typed_data(),
                          static_cast<uint32_t*>(out->untyped_data()), lanes, groups, raw_rows, static_cast<int>(bits), static_cast<int>(simd)};
  work->chunks = chunks;
  int64_t helpers = std::min<int64_t>(pool.num_threads(), chunks - 1);
  if (max_threads > 0) helpers = std::min<int64_t>(helpers, max_threads - 1);
  for (int64_t i = 0; i < helpers; ++i) {
    pool.Schedule([work] {
      {
        std::lock_guard<std::mutex> lock(work->mu);
        ++work->active;
      }
      work->Run();
      std::lock_guard<std::mutex> lock(work->mu);
      if (--work->active == 0) work->done.notify_all();
    });
  }
  work->Run();
  std::unique_lock<std::mutex> lock(work->mu);
  work->done.wait(lock, [&] { return work->active == 0; });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(Ecf8GroupedDecode, GroupedDecode,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::U32>>()  // stream
                                  .Arg<ffi::Buffer<ffi::U32>>()  // chunk_offsets
                                  .Arg<ffi::Buffer<ffi::U32>>()  // raw
                                  .Arg<ffi::Buffer<ffi::S32>>()  // lut
                                  .Arg<ffi::Buffer<ffi::S32>>()  // threshold
                                  .Ret<ffi::AnyBuffer>()  // out
                                  .Attr<int64_t>("bits")
                                  .Attr<int64_t>("max_threads")
                                  .Attr<int64_t>("simd"));
