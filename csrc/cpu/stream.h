// Streaming (non-temporal) stores for outputs of at least stream_min_bytes() (core/stream.h): they
// go to memory without first reading their lines (no read for ownership), which saves a third of
// an elementwise op's memory traffic and half of a fill's. Kernels compute such an output a piece
// at a time into a staging buffer that stays in L1, then stream the piece out (the values are the
// same bits either way), and fence before their task ends: streaming stores are not ordered with
// the plain store that reports the task done.
#pragma once
#include <cstdint>
#include <cstring>
#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include "core/parallel.h"
#include "core/stream.h"

namespace fastmlp {
namespace cpu {
namespace {

constexpr int64_t kStreamPieceBytes = 512;  // a staging piece: eight lines

#if defined(__SSE2__)
constexpr bool kHaveStreamingStores = true;
#else
constexpr bool kHaveStreamingStores = false;  // staging would only add a copy
#endif

// Whether an output of n elements of T is streamed. Not when it is also an input (`out` equal to
// one of `inputs`, an in-place call): its lines are read anyway, so there is no read for
// ownership to skip, and streaming would only evict the lines just loaded.
template <class T, class... In>
inline bool stream_output(int64_t n, const T* out, const In*... inputs) {
  return kHaveStreamingStores && n > 0 && n * static_cast<int64_t>(sizeof(T)) >= stream_min_bytes() &&
         ((static_cast<const void*>(out) != static_cast<const void*>(inputs)) && ...);
}

// dst[0, bytes) = src[0, bytes): plain stores up to dst's first 64-byte line boundary and after its
// last, streaming stores of whole lines between (a partial line streamed costs a partial write).
inline void stream_copy_bytes(void* dst, const void* src, int64_t bytes) {
  char* d = static_cast<char*>(dst);
  const char* s = static_cast<const char*>(src);
  int64_t head = static_cast<int64_t>((64 - reinterpret_cast<uintptr_t>(d) % 64) % 64);
  if (head > bytes) head = bytes;
  std::memcpy(d, s, static_cast<size_t>(head));
  d += head;
  s += head;
  bytes -= head;
  const int64_t body = bytes / 64 * 64;
#if defined(__AVX512F__)
  for (int64_t i = 0; i < body; i += 64)
    _mm512_stream_si512(reinterpret_cast<__m512i*>(d + i), _mm512_loadu_si512(s + i));
#elif defined(__AVX__)
  for (int64_t i = 0; i < body; i += 64) {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(d + i), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i)));
    _mm256_stream_si256(reinterpret_cast<__m256i*>(d + i + 32),
                        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i + 32)));
  }
#elif defined(__SSE2__)
  for (int64_t i = 0; i < body; i += 16)
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + i), _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i)));
#else
  std::memcpy(d, s, static_cast<size_t>(body));
#endif
  std::memcpy(d + body, s + body, static_cast<size_t>(bytes - body));
}

// Makes this thread's streaming stores visible before anything it stores next (a task's "done").
inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

// Runs body(s, len, dst) over [b, e) so that it computes out[s, s + len) into dst: in one call with
// dst = out + b, or, when `stream`, in pieces into a staging buffer in L1, each then streamed to
// out + s. After a short first piece up to a line boundary of out (NumPy's large arrays start 16
// bytes past one) the pieces cover whole lines. Small pieces, so that the loads of the next piece
// overlap the streaming of this one (a page at a time was slower than plain stores). body may
// read out[s, s + len) (an in-place op): it is written only after body returns. Without Fence the
// caller fences (stream_fence) before its task ends.
template <bool Fence = true, class T, class Body>
inline void write_out(T* out, int64_t b, int64_t e, bool stream, const Body& body) {
  if (!stream) {
    body(b, e - b, out + b);
    return;
  }
  constexpr int64_t kPiece = kStreamPieceBytes / static_cast<int64_t>(sizeof(T));
  static_assert(kPiece % 16 == 0, "pieces hold whole vector bundles");
  alignas(64) T buf[kPiece];
  const int64_t to_line = elements_to_line(out + b);
  int64_t len = to_line > 0 ? to_line : kPiece;
  for (int64_t s = b; s < e; s += len, len = kPiece) {
    len = min_i64(len, e - s);
    body(s, len, buf);
    stream_copy_bytes(out + s, buf, len * static_cast<int64_t>(sizeof(T)));
  }
  if constexpr (Fence) stream_fence();
}

// An output range computed in order, a piece at a time, into a staging buffer and streamed out in
// whole 64-byte lines only: the rest of a piece's last line waits at the front of the buffer for
// the next piece (a line written in two parts with plain stores, as write_out's pieces would be
// when they cannot start on a line, is read for ownership first). For loops whose pieces are
// fixed by something other than out's alignment (a summation order). Use: p = slot(out + s);
// compute len <= Capacity elements into p; commit(len); ...; finish() at the end of the task.
// Consecutive slots must be consecutive in out.
template <class T, int64_t Capacity>
struct WholeLineStream {
  static constexpr int64_t kLine = 64 / static_cast<int64_t>(sizeof(T));
  alignas(64) T stage[Capacity + kLine];
  T* dst = nullptr;  // where stage[0] goes
  int64_t pending = 0;

  T* slot(T* out) {
    if (pending == 0) dst = out;
    return stage + pending;
  }
  void commit(int64_t len) {
    const int64_t have = pending + len;
    // the elements past the last line boundary in [dst, dst + have): all of them if there is none
    const int64_t held = min_i64(have, (kLine - elements_to_line(dst + have)) % kLine);
    stream_copy_bytes(dst, stage, (have - held) * static_cast<int64_t>(sizeof(T)));
    std::memmove(stage, stage + (have - held), static_cast<size_t>(held) * sizeof(T));
    dst += have - held;
    pending = held;
  }
  void finish() {
    stream_copy_bytes(dst, stage, pending * static_cast<int64_t>(sizeof(T)));
    pending = 0;
    stream_fence();
  }
};

}  // namespace
}  // namespace cpu
}  // namespace fastmlp
