r"""The C kernel library written next to every generated model (``kernels.h``).

All kernels are C99 ``static`` functions in one header that ``model.c`` includes, so a
firmware links exactly the kernels its model uses (the compiler drops the others).

Activations are int8 and stored channels-last (an image tensor ``(C, H, W)`` as ``H * W`` pixels
of ``C`` channels, as CMSIS-NN does); the model's input and output keep the model's NCHW layout
and are transposed on the way in and out when the two orders differ. Weights are int8
``[OC][KH][KW][IC/groups]``: one contiguous row of ``K = KH * KW * IC/groups`` values per output
channel (the Arm DSP build stores each pair of rows interleaved, see below). Every convolution
and fully connected layer is a set of dot products between a weight row and an input column: the
layer's input itself for a fully connected layer, for a convolution the receptive field read in
place when it is one contiguous run (a 1x1 kernel, or whole image rows, inside the image) and
otherwise an im2col copy padded with the input zero point. The bias is stored pre-corrected as
``bias - zp_in * sum(w)``, so ``bias' + sum(w * x)`` equals ``bias + sum(w * (x - zp_in))``
exactly and padding contributes nothing in real terms. Depthwise convolution has its weights as
``[KH][KW][C]`` (the channels of one tap contiguous) and runs direct loops with the channels
innermost; its bias is stored as it is and the taps multiply ``x - zp_in``, so that the window
is clipped to the image and no tap is ever tested. Pooling, Add and the layout changes are
direct loops too.

Every convolution and fully connected layer ends in one output stage, ``tinyml_out_block``
(out of line: one copy in flash, its loop with the registers to itself): a row of int32 sums
requantized, offset by the output zero point, clamped and stored. Its constants are
``tinyml_oq_t``: int32 multipliers and int8 shifts per output channel.

The kernels have one implementation per instruction set, chosen at compile time by the target's
predefined macros (``TINYML_FORCE_PORTABLE`` selects the portable one anywhere):

* ``__ARM_FEATURE_MVE`` (Cortex-M55, Helium, ``<arm_mve.h>``): dot products 16 int8 lanes per
  ``vmladavaq_s8``, four weight rows per column vector, whole vectors unpredicated and the tail
  by a ``vctp8q`` predicate with zeroing loads (a predicate costs a ``VPST`` per load). Depthwise
  convolution keeps 16 channels of one output pixel in four ``int32x4`` accumulators: per tap
  four ``vldrbq_s32`` (4 int8 values sign-extended to int32) of the input, ``vsubq`` of the zero
  point, four of the weights, ``vmulq`` and ``vaddq`` (MVE has no vector-by-vector
  multiply-accumulate). Requantization runs four lanes at a time: ``VQSHL`` by the left shifts,
  ``VQRDMULH`` (the same rounding doubling high multiply) and the rounding right shift as
  CMSIS-NN's ``arm_divide_by_power_of_two_mve`` (``VRSHL`` after one less for negative values).
  Max pooling is ``vmaxq_s8`` on 16 channels;
* ``__ARM_FEATURE_DSP`` (Cortex-M4/M7/M33, ``<arm_acle.h>``): a convolution takes two output
  positions at a time (CMSIS-NN's ``arm_nn_mat_mult_kernel_s8_s16`` scheme): their two columns
  are widened once to int16 in ``__sxtb16`` order and interleaved, and two output channels are
  computed against both: per 4 values one ``LDM`` of the columns' four words, two weight words
  split by ``SXTB16`` / ``SXTB16 ROR 8`` and eight ``SMLAD``, 16 MACs in 16.5 instructions (the
  loop is inline assembly, unrolled twice: GCC 12 spills its 13 registers when it allocates them
  itself). For that the generator emits each pair of weight rows interleaved (a word of each row
  per 4 values) for this path only, in place of the plain rows, so flash does not grow. Fully
  connected layers use four weight rows per input word. Depthwise convolution takes four
  channels per 32-bit word, ``SXTAB16`` (widening and subtracting the zero point in one
  instruction) into halfword pairs and ``SMLABB`` / ``SMLATT`` into four accumulators, with the
  weights emitted for this path as ``[C/4][KH][KW][4]`` (when ``C`` is a multiple of 4) so that
  a channel group's taps are contiguous, and a row of three taps as 31 instructions of inline
  assembly. The output stage has a fast variant, for layers whose multipliers are all 0 or in
  ``[2^30, 2^31)`` and shifts in ``[-21, -1]`` (the generator checks and sets
  ``tinyml_oq_t.fast``): per value ``QADD`` (2x, saturated), ``SMMLAR`` (the high multiply
  plus the rounding and zero-point constant), an add of the sign, a shift and ``SSAT``, four
  values packed into a word and clamped by ``SSUB8`` + ``SEL``, about 9.5 instructions per output
  from per-channel constants prepared once per call (``tinyml_out_prepare``, 12 bytes per
  channel of scratch). It is exact: with ``2x`` in range it computes the same integers, and
  when ``2x`` saturates both give a value of magnitude at least 256 of the same sign, clamped
  alike. Max pooling takes four channels per word with ``__ssub8`` and ``__sel``;
* ``__AVX512VNNI__`` with AVX-512 BW/VL (x86-64 hosts): convolutions keep 16 output channels in
  the lanes of a vector and accumulate with ``VPDPBUSD`` against a second, interleaved copy of the
  weights (``[G][K/4][OC/G rounded up to 16][4]``, emitted only for this path). ``VPDPBUSD``
  multiplies unsigned by signed bytes, so activations are fed as ``x + 128`` and
  ``128 * sum(w)`` (also emitted only for this path) is subtracted. Output positions go eight
  (16 channels) or four (32 or more) at a time, so that each weight vector loaded serves them
  all and eight accumulator chains are in flight; a layer of 16 channels whose kernel rows are an
  even number of words takes two words per 8-byte broadcast, against weights emitted with each
  channel's word pairs side by side (channels 0-7, then 8-15, in the two vectors). Without groups
  the input is copied once as ``x + 128`` with its zero-point padding, an input of 3 or more
  channels that are not a multiple of 4 padded to the next multiple of 4 (with zero weights
  for the added channels), so that kernel rows are whole 4-byte words read from it in place;
  an input of 1 or 2 channels has its kernel rows copied from it. The output stage computes a
  tile's per-channel terms once for all its positions. A depthwise convolution of channel
  multiplier 1 takes 16 channels per vector, pixel after pixel, with the taps' weights widened
  to int32 once per block of channels (``VPMULLD`` per tap). Requantization and pooling run 16
  lanes at a time; an Add of 512 values or more, with AVX-512 VBMI, rescales each input by lookup in
  a table of its 256 possible values (``VPERMI2B`` on four byte planes), 64 values at a time,
  and requantizes only the sum;
* ``__AVX2__``: 16 int8 values sign-extended to int16 and multiplied pairwise into int32 by
  ``_mm256_madd_epi16``;
* otherwise portable C loops.

A convolution's scratch (``6 * K + 20 * OC`` bytes, ``K`` rounded up to 4) holds the DSP path's
two int8 columns, their int16 widening, two rows of sums and the output stage's constants; the
other paths use its first ``K`` bytes. A depthwise convolution's scratch holds a pixel's sums and
the constants (``16 * C + 64`` bytes), a fully connected layer's the constants.

Integer sums are exact, so every path gives bit-identical results: the tests build each path and
compare it with the numpy reference (:mod:`tinymlaas_ci.ml.cgen.reference`), on the host and
(DSP, MVE) bare-metal under QEMU. ``TINYML_EMULATE_DSP`` / ``TINYML_EMULATE_MVE`` compile the Arm
paths on any host with C definitions of the intrinsics (the inline assembly has C twins), so
their loop logic is also tested where no Arm toolchain is at hand.

Requantization (:func:`tinymlaas_ci.ml.cgen.fixedpoint.requantize`) is ``tinyml_requantize``:
the rounding doubling high multiply as one ``SMULL``/``SMLAL`` and a 64-bit add
(``floor((x * m + 2^30) / 2^31)``, equal to gemmlowp's nudge-and-truncate for every multiplier but
``INT32_MIN``, which never occurs; a left shift saturates in 32 bits first, so ``x`` stays an
int32), and the rounding shift with ties away from zero as ``(t >> r) + ((t >> (r - 1)) & 1)``
with ``t = x - 1`` for negative ``x``. It relies on ``>>`` of a negative integer being an
arithmetic shift, which GCC, Clang and Arm Compiler guarantee. The kernels need no heap; the
AVX-512 convolution keeps its columns and padded input copy on the stack (host builds only).
"""

from __future__ import annotations

__all__ = ["KERNELS_H"]

KERNELS_H = r"""/* TinyMLaaS-CI int8 kernels. Generated with the model; see model.c. */
#ifndef TINYML_KERNELS_H
#define TINYML_KERNELS_H

#include <stdint.h>
#include <string.h>

#if defined(TINYML_FORCE_PORTABLE)
#define TINYML_PATH_NAME "portable"
#elif (defined(__ARM_FEATURE_MVE) && (__ARM_FEATURE_MVE & 1)) || defined(TINYML_EMULATE_MVE)
#define TINYML_USE_MVE 1
#define TINYML_PATH_NAME "mve"
#elif (defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP) || defined(TINYML_EMULATE_DSP)
#define TINYML_USE_DSP 1
#define TINYML_PATH_NAME "dsp"
#elif defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define TINYML_USE_AVX2 1
#define TINYML_USE_VNNI 1
#define TINYML_PATH_NAME "avx512vnni"
#elif defined(__AVX2__)
#define TINYML_USE_AVX2 1
#define TINYML_PATH_NAME "avx2"
#else
#define TINYML_PATH_NAME "portable"
#endif

#if defined(__GNUC__)
/* A model uses some kernels only: the others must not warn under -Wall. */
#define TINYML_KERNEL static __attribute__((unused))
#else
#define TINYML_KERNEL static
#endif

#if defined(TINYML_USE_DSP)
#if defined(TINYML_EMULATE_DSP)
static inline int32_t tinyml_sxtb16(uint32_t x) {
    uint32_t lo = (uint32_t)(int32_t)(int8_t)(x & 0xffu) & 0xffffu;
    uint32_t hi = (uint32_t)(int32_t)(int8_t)((x >> 16) & 0xffu) & 0xffffu;
    return (int32_t)(lo | (hi << 16));
}
/* Halfwise a + the sign-extended bytes 0 and 2 of x. */
static inline int32_t tinyml_sxtab16(int32_t a, uint32_t x) {
    const uint32_t e = (uint32_t)tinyml_sxtb16(x);
    return (int32_t)(((uint32_t)a + e) & 0xffffu) | (int32_t)((((uint32_t)a >> 16) + (e >> 16)) << 16);
}
static inline int32_t tinyml_smlad(int32_t a, int32_t b, int32_t acc) {
    return acc + (int32_t)(int16_t)(a & 0xffff) * (int16_t)(b & 0xffff)
               + (int32_t)(int16_t)((uint32_t)a >> 16) * (int16_t)((uint32_t)b >> 16);
}
static inline int32_t tinyml_smlabb(int32_t a, int32_t b, int32_t acc) {
    return acc + (int32_t)(int16_t)(a & 0xffff) * (int16_t)(b & 0xffff);
}
static inline int32_t tinyml_smlatt(int32_t a, int32_t b, int32_t acc) {
    return acc + (int32_t)(int16_t)((uint32_t)a >> 16) * (int16_t)((uint32_t)b >> 16);
}
static inline int32_t tinyml_qadd(int32_t a, int32_t b) {
    const int64_t v = (int64_t)a + b;
    return v > INT32_MAX ? INT32_MAX : (v < INT32_MIN ? INT32_MIN : (int32_t)v);
}
static inline int32_t tinyml_smmulr(int32_t a, int32_t b) {
    return (int32_t)(((int64_t)a * b + ((int64_t)1 << 31)) >> 32);
}
static inline int32_t tinyml_ssat8(int32_t v) { return v < -128 ? -128 : (v > 127 ? 127 : v); }
/* acc + the high word of a * b rounded, modulo 2^32 (SMMLAR). */
static inline int32_t tinyml_smmlar(int32_t a, int32_t b, int32_t acc) {
    return (int32_t)((uint32_t)acc + (uint32_t)(int32_t)(((int64_t)a * b + ((int64_t)1 << 31)) >> 32));
}
/* Bytewise signed max / min of two words (SSUB8 sets the GE flags, SEL picks by them). */
static inline uint32_t tinyml_max8x4(uint32_t a, uint32_t b) {
    uint32_t r = 0;
    int i;
    for (i = 0; i < 32; i += 8) {
        const int8_t x = (int8_t)(a >> i), y = (int8_t)(b >> i);
        r |= (uint32_t)(uint8_t)(x >= y ? x : y) << i;
    }
    return r;
}
static inline uint32_t tinyml_min8x4(uint32_t a, uint32_t b) {
    uint32_t r = 0;
    int i;
    for (i = 0; i < 32; i += 8) {
        const int8_t x = (int8_t)(a >> i), y = (int8_t)(b >> i);
        r |= (uint32_t)(uint8_t)(x >= y ? y : x) << i;
    }
    return r;
}
#else
#include <arm_acle.h>
#define tinyml_sxtb16(x) __sxtb16((int32_t)(x))
#define tinyml_sxtab16(a, x) __sxtab16((a), (int32_t)(x))
#define tinyml_smlad(a, b, acc) __smlad((a), (b), (acc))
#define tinyml_smlabb(a, b, acc) __smlabb((a), (b), (acc))
#define tinyml_smlatt(a, b, acc) __smlatt((a), (b), (acc))
#define tinyml_qadd(a, b) __qadd((a), (b))
#define tinyml_ssat8(v) __ssat((v), 8)
#if defined(__GNUC__)
static inline int32_t tinyml_smmulr(int32_t a, int32_t b) {
    int32_t r;
    __asm__("smmulr %0, %1, %2" : "=r"(r) : "r"(a), "r"(b));
    return r;
}
static inline int32_t tinyml_smmlar(int32_t a, int32_t b, int32_t acc) {
    int32_t r;
    __asm__("smmlar %0, %1, %2, %3" : "=r"(r) : "r"(a), "r"(b), "r"(acc));
    return r;
}
#else
#define tinyml_smmulr(a, b) ((int32_t)(((int64_t)(a) * (b) + ((int64_t)1 << 31)) >> 32))
#define tinyml_smmlar(a, b, acc) ((int32_t)((uint32_t)(acc) + (uint32_t)tinyml_smmulr((a), (b))))
#endif
static inline uint32_t tinyml_max8x4(uint32_t a, uint32_t b) {
    (void)__ssub8((int8x4_t)a, (int8x4_t)b);
    return (uint32_t)__sel((uint8x4_t)a, (uint8x4_t)b);
}
static inline uint32_t tinyml_min8x4(uint32_t a, uint32_t b) {
    (void)__ssub8((int8x4_t)a, (int8x4_t)b);
    return (uint32_t)__sel((uint8x4_t)b, (uint8x4_t)a);
}
#endif
static inline uint32_t tinyml_load32(const int8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4); /* one LDR: unaligned word loads are allowed on Armv7E-M and Armv8-M */
    return v;
}
#define TINYML_ROR8(x) (((x) >> 8) | ((x) << 24))
#if defined(__GNUC__) && !defined(TINYML_EMULATE_DSP)
/* Bytes 1 and 3 sign-extended: SXTB16 with its built-in rotation, one instruction (GCC 12 does
 * not fold a separate rotate into it). */
static inline int32_t tinyml_sxtb16_ror8(uint32_t x) {
    int32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
    return r;
}
static inline int32_t tinyml_sxtab16_ror8(int32_t a, uint32_t x) {
    int32_t r;
    __asm__("sxtab16 %0, %1, %2, ror #8" : "=r"(r) : "r"(a), "r"(x));
    return r;
}
#else
#define tinyml_sxtb16_ror8(x) tinyml_sxtb16(TINYML_ROR8(x))
#define tinyml_sxtab16_ror8(a, x) tinyml_sxtab16((a), TINYML_ROR8(x))
#endif
#endif

#if defined(TINYML_USE_MVE)
#if defined(TINYML_EMULATE_MVE)
typedef struct { int8_t v[16]; } tinyml_s8x16;
typedef uint16_t tinyml_pred;
static inline tinyml_pred tinyml_vctp8q(uint32_t n) { return (tinyml_pred)(n >= 16 ? 0xffffu : ((1u << n) - 1u)); }
static inline tinyml_s8x16 tinyml_vld1q_z_s8(const int8_t *p, tinyml_pred m) {
    tinyml_s8x16 r;
    int i;
    for (i = 0; i < 16; i++) r.v[i] = (m >> i) & 1u ? p[i] : 0;
    return r;
}
static inline tinyml_s8x16 tinyml_vld1q_s8(const int8_t *p) { return tinyml_vld1q_z_s8(p, 0xffffu); }
static inline void tinyml_vst1q_s8(int8_t *p, tinyml_s8x16 v) { memcpy(p, v.v, 16); }
static inline tinyml_s8x16 tinyml_vdupq_n_s8(int8_t x) {
    tinyml_s8x16 r;
    memset(r.v, (uint8_t)x, 16);
    return r;
}
static inline tinyml_s8x16 tinyml_vmaxq_s8(tinyml_s8x16 a, tinyml_s8x16 b) {
    int i;
    for (i = 0; i < 16; i++) a.v[i] = a.v[i] >= b.v[i] ? a.v[i] : b.v[i];
    return a;
}
static inline tinyml_s8x16 tinyml_vminq_s8(tinyml_s8x16 a, tinyml_s8x16 b) {
    int i;
    for (i = 0; i < 16; i++) a.v[i] = a.v[i] <= b.v[i] ? a.v[i] : b.v[i];
    return a;
}
static inline int32_t tinyml_vmladavaq_s8(int32_t acc, tinyml_s8x16 a, tinyml_s8x16 b) {
    int i;
    for (i = 0; i < 16; i++) acc += (int32_t)a.v[i] * b.v[i];
    return acc;
}
/* Four int32 lanes: 4 int8 values sign-extended (VLDRB.S32), multiplied and added. */
typedef struct { int32_t v[4]; } tinyml_s32x4;
static inline tinyml_pred tinyml_vctp32q(uint32_t n) {
    return (tinyml_pred)(n >= 4 ? 0xffffu : ((1u << (4 * n)) - 1u));
}
static inline tinyml_s32x4 tinyml_vldrbq_z_s32(const int8_t *p, tinyml_pred m) {
    tinyml_s32x4 r;
    int i;
    for (i = 0; i < 4; i++) r.v[i] = (m >> (4 * i)) & 1u ? p[i] : 0;
    return r;
}
static inline tinyml_s32x4 tinyml_vldrbq_s32(const int8_t *p) { return tinyml_vldrbq_z_s32(p, 0xffffu); }
static inline tinyml_s32x4 tinyml_vdupq_n_s32(int32_t x) {
    tinyml_s32x4 r;
    int i;
    for (i = 0; i < 4; i++) r.v[i] = x;
    return r;
}
static inline tinyml_s32x4 tinyml_vldrwq_s32(const int32_t *p) {
    tinyml_s32x4 r;
    memcpy(r.v, p, sizeof r.v);
    return r;
}
static inline tinyml_s32x4 tinyml_vmlaq_s32(tinyml_s32x4 acc, tinyml_s32x4 a, tinyml_s32x4 b) {
    int i;
    for (i = 0; i < 4; i++) acc.v[i] = (int32_t)((uint32_t)acc.v[i] + (uint32_t)a.v[i] * (uint32_t)b.v[i]);
    return acc;
}
static inline tinyml_s32x4 tinyml_vmlaq_n_s32(tinyml_s32x4 acc, tinyml_s32x4 a, int32_t b) {
    return tinyml_vmlaq_s32(acc, a, tinyml_vdupq_n_s32(b));
}
static inline void tinyml_vst1q_s32(int32_t *p, tinyml_s32x4 v) { memcpy(p, v.v, sizeof v.v); }
static inline tinyml_s32x4 tinyml_vldrwq_z_s32(const int32_t *p, tinyml_pred m) {
    tinyml_s32x4 r;
    int i;
    for (i = 0; i < 4; i++) r.v[i] = (m >> (4 * i)) & 1u ? p[i] : 0;
    return r;
}
static inline void tinyml_vstrbq_p_s32(int8_t *p, tinyml_s32x4 v, tinyml_pred m) {
    int i;
    for (i = 0; i < 4; i++)
        if ((m >> (4 * i)) & 1u) p[i] = (int8_t)v.v[i];
}
static inline tinyml_s32x4 tinyml_vsubq_n_s32(tinyml_s32x4 a, int32_t b) {
    int i;
    for (i = 0; i < 4; i++) a.v[i] = (int32_t)((uint32_t)a.v[i] - (uint32_t)b);
    return a;
}
static inline tinyml_s32x4 tinyml_vaddq_n_s32(tinyml_s32x4 a, int32_t b) {
    return tinyml_vsubq_n_s32(a, (int32_t)(0u - (uint32_t)b));
}
static inline tinyml_s32x4 tinyml_vmaxq_s32(tinyml_s32x4 a, tinyml_s32x4 b) {
    int i;
    for (i = 0; i < 4; i++) a.v[i] = a.v[i] >= b.v[i] ? a.v[i] : b.v[i];
    return a;
}
static inline tinyml_s32x4 tinyml_vminq_s32(tinyml_s32x4 a, tinyml_s32x4 b) {
    int i;
    for (i = 0; i < 4; i++) a.v[i] = a.v[i] <= b.v[i] ? a.v[i] : b.v[i];
    return a;
}
static inline int32_t tinyml_sat32(int64_t v) {
    return v > INT32_MAX ? INT32_MAX : (v < INT32_MIN ? INT32_MIN : (int32_t)v);
}
/* VQSHL (by a register vector, here >= 0), VQRDMULH, VQADD, VRSHL (here a right shift, s <= 0). */
static inline tinyml_s32x4 tinyml_vqshlq_s32(tinyml_s32x4 a, tinyml_s32x4 s) {
    int i;
    for (i = 0; i < 4; i++) a.v[i] = tinyml_sat32((int64_t)a.v[i] * ((int64_t)1 << s.v[i]));
    return a;
}
static inline tinyml_s32x4 tinyml_vqrdmulhq_s32(tinyml_s32x4 a, tinyml_s32x4 b) {
    int i;
    for (i = 0; i < 4; i++) a.v[i] = tinyml_sat32((2 * (int64_t)a.v[i] * b.v[i] + ((int64_t)1 << 31)) >> 32);
    return a;
}
static inline tinyml_s32x4 tinyml_vqaddq_s32(tinyml_s32x4 a, tinyml_s32x4 b) {
    int i;
    for (i = 0; i < 4; i++) a.v[i] = tinyml_sat32((int64_t)a.v[i] + b.v[i]);
    return a;
}
static inline tinyml_s32x4 tinyml_vrshlq_s32(tinyml_s32x4 a, tinyml_s32x4 s) {
    int i;
    for (i = 0; i < 4; i++)
        if (s.v[i] < 0) a.v[i] = (int32_t)(((int64_t)a.v[i] + ((int64_t)1 << (-s.v[i] - 1))) >> -s.v[i]);
    return a;
}
/* (a & s) >> 31 arithmetic: -1 in the lanes where both a and s are negative. */
static inline tinyml_s32x4 tinyml_vnegfix_s32(tinyml_s32x4 a, tinyml_s32x4 s) {
    int i;
    for (i = 0; i < 4; i++) a.v[i] = (a.v[i] & s.v[i]) < 0 ? -1 : 0;
    return a;
}
#else
#include <arm_mve.h>
typedef int8x16_t tinyml_s8x16;
typedef mve_pred16_t tinyml_pred;
#define tinyml_vctp8q(n) vctp8q(n)
#define tinyml_vld1q_z_s8(p, m) vld1q_z_s8((p), (m))
#define tinyml_vld1q_s8(p) vld1q_s8(p)
#define tinyml_vst1q_s8(p, v) vst1q_s8((p), (v))
#define tinyml_vdupq_n_s8(x) vdupq_n_s8(x)
#define tinyml_vmaxq_s8(a, b) vmaxq_s8((a), (b))
#define tinyml_vminq_s8(a, b) vminq_s8((a), (b))
#define tinyml_vmladavaq_s8(acc, a, b) vmladavaq_s8((acc), (a), (b))
typedef int32x4_t tinyml_s32x4;
#define tinyml_vctp32q(n) vctp32q(n)
#define tinyml_vldrbq_z_s32(p, m) vldrbq_z_s32((p), (m))
#define tinyml_vldrbq_s32(p) vldrbq_s32(p)
#define tinyml_vdupq_n_s32(x) vdupq_n_s32(x)
#define tinyml_vldrwq_s32(p) vldrwq_s32(p)
/* MVE multiplies-accumulates vectors by a scalar only: multiply, then add. */
#define tinyml_vmlaq_s32(acc, a, b) vaddq_s32((acc), vmulq_s32((a), (b)))
#define tinyml_vmlaq_n_s32(acc, a, b) vmlaq_n_s32((acc), (a), (b))
#define tinyml_vst1q_s32(p, v) vst1q_s32((p), (v))
#define tinyml_vldrwq_z_s32(p, m) vldrwq_z_s32((p), (m))
#define tinyml_vstrbq_p_s32(p, v, m) vstrbq_p_s32((p), (v), (m))
#define tinyml_vsubq_n_s32(a, b) vsubq_n_s32((a), (b))
#define tinyml_vaddq_n_s32(a, b) vaddq_n_s32((a), (b))
#define tinyml_vmaxq_s32(a, b) vmaxq_s32((a), (b))
#define tinyml_vminq_s32(a, b) vminq_s32((a), (b))
#define tinyml_vqshlq_s32(a, s) vqshlq_s32((a), (s))
#define tinyml_vqrdmulhq_s32(a, b) vqrdmulhq_s32((a), (b))
#define tinyml_vqaddq_s32(a, b) vqaddq_s32((a), (b))
#define tinyml_vrshlq_s32(a, s) vrshlq_s32((a), (s))
#define tinyml_vnegfix_s32(a, s) vshrq_n_s32(vandq_s32((a), (s)), 31)
#endif
#endif

#if defined(TINYML_USE_AVX2)
#include <immintrin.h>
static inline int32_t tinyml_hsum(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}
#define TINYML_AVX_ROW(x16, p) _mm256_madd_epi16((x16), _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(p))))
#endif

#if defined(TINYML_USE_VNNI)
/* Weight-row sums times 128 (VPDPBUSD multiplies unsigned by signed bytes, so x is fed as
 * x + 128, x ^ 0x80, and 128 * sum(w) is subtracted again) and the interleaved weights: only this
 * path has these fields in its layer structs. */
#define TINYML_VNNI_FIELDS(...) , __VA_ARGS__
#else
#define TINYML_VNNI_FIELDS(...)
#endif

/* Fixed-point requantization: x * mult * 2^(shift - 31), TFLite / CMSIS-NN rounding, with
 * mult in [0, 2^31). The doubling high multiply rounds half up, floor((x * mult + 2^30) / 2^31):
 * the same as gemmlowp's nudge-and-truncate for every mult but INT32_MIN (never a multiplier
 * here), and one SMULL plus a 64-bit add on Arm. The rounding shift rounds ties away from zero
 * as gemmlowp's RoundingDivideByPOT: one less for a negative value (it is > INT32_MIN, since
 * mult < 2^31), then the bits above the shift plus the last bit shifted out, which cannot
 * overflow as adding 2^(r-1) could. */
static inline int32_t tinyml_requantize(int32_t x, int32_t mult, int32_t shift) {
    int32_t high;
    if (shift > 0) {
        /* Saturated in 32 bits, so that x stays an int32 and the product is one SMULL. */
        const int32_t lim = INT32_MAX >> shift;
        x = x > lim ? INT32_MAX : (x < -lim - 1 ? INT32_MIN : (int32_t)((uint32_t)x << shift));
    }
    high = (int32_t)(((int64_t)x * mult + ((int64_t)1 << 30)) >> 31);
    if (shift < 0) {
        const int32_t r = -shift, t = high + (high >> 31);
        high = (t >> r) + ((t >> (r - 1)) & 1);
    }
    return high;
}

static inline int8_t tinyml_clamp(int32_t v, int32_t lo, int32_t hi) {
    return (int8_t)(v < lo ? lo : (v > hi ? hi : v));
}

#if defined(__GNUC__)
#define TINYML_NOINLINE __attribute__((noinline, unused))
#else
#define TINYML_NOINLINE
#endif

/* A layer's output quantization: per output channel multiplier and shift, zero point, clamp.
 * fast: every multiplier is 0 or in [2^30, 2^31) and every shift in [-21, -1] (the emitter sets a
 * zero multiplier's shift to -1), for the DSP path's shorter output stage. */
typedef struct {
    const int32_t *mult;
    const int8_t *shift;
    int16_t zp, lo, hi, fast;
} tinyml_oq_t;

/* The DSP path's per channel constants of a fast output stage, prepared once per layer call:
 * the multiplier, 2^(r - 1) + zp * 2^r and r = -shift. */
typedef struct {
    int32_t mult, round, r;
} tinyml_rq_t;

#define TINYML_RQ_BYTES(n) (12 * (n))

#if defined(TINYML_USE_MVE)
/* tinyml_requantize on four lanes: VQSHL by the left shifts, VQRDMULH (the same rounding
 * doubling high multiply), then the rounding right shift as CMSIS-NN's
 * arm_divide_by_power_of_two_mve: one less for a negative value, VRSHL (round half up). */
static inline tinyml_s32x4 tinyml_requantize_x4(tinyml_s32x4 x, tinyml_s32x4 mult, tinyml_s32x4 shift) {
    const tinyml_s32x4 zero = tinyml_vdupq_n_s32(0);
    const tinyml_s32x4 right = tinyml_vminq_s32(shift, zero);
    tinyml_s32x4 h = tinyml_vqrdmulhq_s32(tinyml_vqshlq_s32(x, tinyml_vmaxq_s32(shift, zero)), mult);
    h = tinyml_vqaddq_s32(h, tinyml_vnegfix_s32(h, right));
    return tinyml_vrshlq_s32(h, right);
}

/* Channels c .. c + n - 1 (n <= 4; none when n <= 0) of acc requantized and stored to dst + c. */
static inline void tinyml_out_x4(const tinyml_oq_t *q, int32_t c, tinyml_s32x4 acc, int32_t n, int8_t *dst) {
    const tinyml_pred m = tinyml_vctp32q((uint32_t)(n > 0 ? n : 0));
    const tinyml_s32x4 mult = tinyml_vldrwq_z_s32(q->mult + c, m), shift = tinyml_vldrbq_z_s32(q->shift + c, m);
    tinyml_s32x4 v = tinyml_requantize_x4(acc, mult, shift);
    v = tinyml_vmaxq_s32(tinyml_vaddq_n_s32(v, q->zp), tinyml_vdupq_n_s32(q->lo));
    tinyml_vstrbq_p_s32(dst + c, tinyml_vminq_s32(v, tinyml_vdupq_n_s32(q->hi)), m);
}
#endif

/* tab[j] for channels 0 .. n - 1 when q->fast (DSP path only; tab may be 0 elsewhere). */
static TINYML_NOINLINE void tinyml_out_prepare(const tinyml_oq_t *q, int32_t n, tinyml_rq_t *tab) {
#if defined(TINYML_USE_DSP)
    int32_t j;
    if (!q->fast) return;
    for (j = 0; j < n; j++) {
        const int32_t r = -q->shift[j];
        tab[j].mult = q->mult[j];
        tab[j].round = (int32_t)((1u << (r - 1)) + ((uint32_t)q->zp << r));
        tab[j].r = r;
    }
#else
    (void)q;
    (void)n;
    (void)tab;
#endif
}

#if defined(TINYML_USE_DSP)
/* The fast output stage (q->fast) of one value: 2x saturated (QADD); h, the high word of 2x * m
 * rounded, plus 2^(r-1) + zp * 2^r (SMMLAR); one less if x is negative; >> r; saturated to int8.
 * With 2x in range h is tinyml_requantize's high multiply and this its rounding shift plus zp
 * exactly (|h| <= 2^30, nothing overflows; a negative x with h = 0 gives 0 either way as r >= 1);
 * when 2x saturates, |x| >= 2^30 and both give |value| >= 2^29 >> 21 = 256 of the same sign,
 * clamped alike. */
static inline int32_t tinyml_out_fast(int32_t x, const tinyml_rq_t *t) {
    const int32_t h = tinyml_smmlar(tinyml_qadd(x, x), t->mult, t->round);
    return tinyml_ssat8((h + (x >> 31)) >> t->r);
}
#endif

/* dst[c + j] = clamp(requantize(acc[j]) + zp) for j < n: the output stage of every convolution
 * and fully connected layer, out of line (one copy in flash) and with few live values, so that
 * the compiler keeps them all in registers. tab: tinyml_out_prepare's constants (DSP path). */
static TINYML_NOINLINE void tinyml_out_block(const tinyml_oq_t *q, const tinyml_rq_t *tab, int32_t c,
                                             const int32_t *acc, int32_t n, int8_t *dst) {
    const int32_t *const mult = q->mult + c;
    const int8_t *const shift = q->shift + c;
    const int32_t zp = q->zp, lo = q->lo, hi = q->hi;
    int32_t j = 0;
#if defined(TINYML_USE_MVE)
    for (; j < n; j += 4)
        tinyml_out_x4(q, c + j, tinyml_vldrwq_z_s32(acc + j, tinyml_vctp32q((uint32_t)(n - j))), n - j, dst);
    (void)tab;
#elif defined(TINYML_USE_DSP)
    if (q->fast) {
        /* Four values a word, clamped bytewise (SSUB8 + SEL). */
        const uint32_t lo4 = 0x01010101u * (uint8_t)lo, hi4 = 0x01010101u * (uint8_t)hi;
        tab += c;
        dst += c;
#if defined(__GNUC__) && !defined(TINYML_EMULATE_DSP)
        /* The loop below in assembly, 38 instructions per four outputs: LDM of a channel's three
         * constants needs them in ascending registers. */
        if (n >= 4) {
            register int32_t m __asm__("r4"), rnd __asm__("r5"), r __asm__("r6");
            const int32_t *a = acc, *const end = acc + (n & ~3);
            int32_t x, t;
            uint32_t v;
            int8_t *d = dst;
#define TINYML_OUT_ASM(store)                                                                  \
    "ldm %[tab]!, {%[m], %[rnd], %[r]}\n\t"                                                    \
    "ldr %[x], [%[a]], #4\n\t"                                                                 \
    "qadd %[t], %[x], %[x]\n\t"                                                                \
    "smmlar %[t], %[t], %[m], %[rnd]\n\t"                                                      \
    "add %[t], %[t], %[x], asr #31\n\t"                                                        \
    "asr %[t], %[t], %[r]\n\t" store
            __asm__ volatile("1:\n\t"
                             TINYML_OUT_ASM("ssat %[v], #8, %[t]\n\t")
                             TINYML_OUT_ASM("ssat %[t], #8, %[t]\n\tbfi %[v], %[t], #8, #8\n\t")
                             TINYML_OUT_ASM("ssat %[t], #8, %[t]\n\tbfi %[v], %[t], #16, #8\n\t")
                             TINYML_OUT_ASM("ssat %[t], #8, %[t]\n\tbfi %[v], %[t], #24, #8\n\t")
                             "ssub8 %[t], %[v], %[lo4]\n\t"
                             "sel %[v], %[v], %[lo4]\n\t"
                             "ssub8 %[t], %[v], %[hi4]\n\t"
                             "sel %[v], %[hi4], %[v]\n\t"
                             "str %[v], [%[d]], #4\n\t"
                             "cmp %[a], %[end]\n\t"
                             "bne 1b\n\t"
                             : [tab] "+r"(tab), [a] "+r"(a), [d] "+r"(d), [m] "=&r"(m), [rnd] "=&r"(rnd),
                               [r] "=&r"(r), [x] "=&r"(x), [t] "=&r"(t), [v] "=&r"(v)
                             : [end] "r"(end), [lo4] "r"(lo4), [hi4] "r"(hi4)
                             : "cc", "memory");
#undef TINYML_OUT_ASM
            j = n & ~3;
        }
#else
        for (; j + 4 <= n; j += 4, tab += 4) {
            uint32_t v = (uint8_t)tinyml_out_fast(acc[j], tab);
            v |= (uint32_t)(uint8_t)tinyml_out_fast(acc[j + 1], tab + 1) << 8;
            v |= (uint32_t)(uint8_t)tinyml_out_fast(acc[j + 2], tab + 2) << 16;
            v |= (uint32_t)tinyml_out_fast(acc[j + 3], tab + 3) << 24;
            v = tinyml_min8x4(tinyml_max8x4(v, lo4), hi4);
            memcpy(dst + j, &v, 4);
        }
#endif
        for (; j < n; j++, tab++) dst[j] = tinyml_clamp(tinyml_out_fast(acc[j], tab), lo, hi);
        return;
    }
#else
    (void)tab;
#endif
    for (; j < n; j++) dst[c + j] = tinyml_clamp(tinyml_requantize(acc[j], mult[j], shift[j]) + zp, lo, hi);
}

/* acc[r] += dot(x, w + r * stride) over k values, for r = 0..3. */
static inline void tinyml_dot4(const int8_t *x, const int8_t *w, int32_t k, int32_t stride, int32_t *acc) {
    const int8_t *w0 = w, *w1 = w + stride, *w2 = w + 2 * stride, *w3 = w + 3 * stride;
    int32_t a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
    int32_t i = 0;
#if defined(TINYML_USE_MVE)
    /* Whole vectors unpredicated (a predicate costs a VPST per load), the tail predicated. */
    for (; i + 16 <= k; i += 16) {
        tinyml_s8x16 xv = tinyml_vld1q_s8(x + i);
        a0 = tinyml_vmladavaq_s8(a0, xv, tinyml_vld1q_s8(w0 + i));
        a1 = tinyml_vmladavaq_s8(a1, xv, tinyml_vld1q_s8(w1 + i));
        a2 = tinyml_vmladavaq_s8(a2, xv, tinyml_vld1q_s8(w2 + i));
        a3 = tinyml_vmladavaq_s8(a3, xv, tinyml_vld1q_s8(w3 + i));
    }
    if (i < k) {
        tinyml_pred p = tinyml_vctp8q((uint32_t)(k - i));
        tinyml_s8x16 xv = tinyml_vld1q_z_s8(x + i, p);
        a0 = tinyml_vmladavaq_s8(a0, xv, tinyml_vld1q_z_s8(w0 + i, p));
        a1 = tinyml_vmladavaq_s8(a1, xv, tinyml_vld1q_z_s8(w1 + i, p));
        a2 = tinyml_vmladavaq_s8(a2, xv, tinyml_vld1q_z_s8(w2 + i, p));
        a3 = tinyml_vmladavaq_s8(a3, xv, tinyml_vld1q_z_s8(w3 + i, p));
    }
#else
#if defined(TINYML_USE_DSP)
    for (; i + 4 <= k; i += 4) {
        uint32_t xw = tinyml_load32(x + i), ww;
        int32_t xe = tinyml_sxtb16(xw), xo = tinyml_sxtb16_ror8(xw);
        ww = tinyml_load32(w0 + i);
        a0 = tinyml_smlad(tinyml_sxtb16(ww), xe, a0);
        a0 = tinyml_smlad(tinyml_sxtb16_ror8(ww), xo, a0);
        ww = tinyml_load32(w1 + i);
        a1 = tinyml_smlad(tinyml_sxtb16(ww), xe, a1);
        a1 = tinyml_smlad(tinyml_sxtb16_ror8(ww), xo, a1);
        ww = tinyml_load32(w2 + i);
        a2 = tinyml_smlad(tinyml_sxtb16(ww), xe, a2);
        a2 = tinyml_smlad(tinyml_sxtb16_ror8(ww), xo, a2);
        ww = tinyml_load32(w3 + i);
        a3 = tinyml_smlad(tinyml_sxtb16(ww), xe, a3);
        a3 = tinyml_smlad(tinyml_sxtb16_ror8(ww), xo, a3);
    }
#elif defined(TINYML_USE_AVX2)
    if (k >= 16) {
        __m256i v0 = _mm256_setzero_si256(), v1 = v0, v2 = v0, v3 = v0;
        for (; i + 16 <= k; i += 16) {
            __m256i xv = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(x + i)));
            v0 = _mm256_add_epi32(v0, TINYML_AVX_ROW(xv, w0 + i));
            v1 = _mm256_add_epi32(v1, TINYML_AVX_ROW(xv, w1 + i));
            v2 = _mm256_add_epi32(v2, TINYML_AVX_ROW(xv, w2 + i));
            v3 = _mm256_add_epi32(v3, TINYML_AVX_ROW(xv, w3 + i));
        }
        a0 += tinyml_hsum(v0);
        a1 += tinyml_hsum(v1);
        a2 += tinyml_hsum(v2);
        a3 += tinyml_hsum(v3);
    }
#endif
    for (; i < k; i++) {
        int32_t xv = x[i];
        a0 += xv * w0[i];
        a1 += xv * w1[i];
        a2 += xv * w2[i];
        a3 += xv * w3[i];
    }
#endif
    acc[0] = a0;
    acc[1] = a1;
    acc[2] = a2;
    acc[3] = a3;
}

/* dot(x, w) over k values plus acc. */
static inline int32_t tinyml_dot1(const int8_t *x, const int8_t *w, int32_t k, int32_t acc) {
    int32_t i = 0;
#if defined(TINYML_USE_MVE)
    for (; i + 16 <= k; i += 16) acc = tinyml_vmladavaq_s8(acc, tinyml_vld1q_s8(x + i), tinyml_vld1q_s8(w + i));
    if (i < k) {
        tinyml_pred p = tinyml_vctp8q((uint32_t)(k - i));
        acc = tinyml_vmladavaq_s8(acc, tinyml_vld1q_z_s8(x + i, p), tinyml_vld1q_z_s8(w + i, p));
    }
#else
#if defined(TINYML_USE_DSP)
    for (; i + 4 <= k; i += 4) {
        uint32_t xw = tinyml_load32(x + i), ww = tinyml_load32(w + i);
        acc = tinyml_smlad(tinyml_sxtb16(ww), tinyml_sxtb16(xw), acc);
        acc = tinyml_smlad(tinyml_sxtb16_ror8(ww), tinyml_sxtb16_ror8(xw), acc);
    }
#elif defined(TINYML_USE_AVX2)
    if (k >= 16) {
        __m256i v = _mm256_setzero_si256();
        for (; i + 16 <= k; i += 16) {
            __m256i xv = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(x + i)));
            v = _mm256_add_epi32(v, TINYML_AVX_ROW(xv, w + i));
        }
        acc += tinyml_hsum(v);
    }
#endif
    for (; i < k; i++) acc += (int32_t)x[i] * w[i];
#endif
    return acc;
}

#if defined(TINYML_USE_VNNI)
/* Eight dot products of x with rows w, w + k, ..., w + 7k (k values each), as one vector. */
static inline __m256i tinyml_dot8_vnni(const int8_t *x, const int8_t *w, int32_t k) {
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    __m256i y0, y1, y2, y3, y4, y5, y6, y7, h0, h1;
    int32_t i = 0;
    for (; i + 64 <= k; i += 64) {
        __m512i xv = _mm512_xor_si512(_mm512_loadu_si512((const void *)(x + i)), flip);
        a0 = _mm512_dpbusd_epi32(a0, xv, _mm512_loadu_si512((const void *)(w + i)));
        a1 = _mm512_dpbusd_epi32(a1, xv, _mm512_loadu_si512((const void *)(w + k + i)));
        a2 = _mm512_dpbusd_epi32(a2, xv, _mm512_loadu_si512((const void *)(w + 2 * k + i)));
        a3 = _mm512_dpbusd_epi32(a3, xv, _mm512_loadu_si512((const void *)(w + 3 * k + i)));
        a4 = _mm512_dpbusd_epi32(a4, xv, _mm512_loadu_si512((const void *)(w + 4 * k + i)));
        a5 = _mm512_dpbusd_epi32(a5, xv, _mm512_loadu_si512((const void *)(w + 5 * k + i)));
        a6 = _mm512_dpbusd_epi32(a6, xv, _mm512_loadu_si512((const void *)(w + 6 * k + i)));
        a7 = _mm512_dpbusd_epi32(a7, xv, _mm512_loadu_si512((const void *)(w + 7 * k + i)));
    }
    if (i < k) {
        /* Masked-off weight bytes load as 0, so the x lanes beyond k contribute nothing. */
        const __mmask64 m = (__mmask64)(~0ULL >> (64 - (k - i)));
        __m512i xv = _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, x + i), flip);
        a0 = _mm512_dpbusd_epi32(a0, xv, _mm512_maskz_loadu_epi8(m, w + i));
        a1 = _mm512_dpbusd_epi32(a1, xv, _mm512_maskz_loadu_epi8(m, w + k + i));
        a2 = _mm512_dpbusd_epi32(a2, xv, _mm512_maskz_loadu_epi8(m, w + 2 * k + i));
        a3 = _mm512_dpbusd_epi32(a3, xv, _mm512_maskz_loadu_epi8(m, w + 3 * k + i));
        a4 = _mm512_dpbusd_epi32(a4, xv, _mm512_maskz_loadu_epi8(m, w + 4 * k + i));
        a5 = _mm512_dpbusd_epi32(a5, xv, _mm512_maskz_loadu_epi8(m, w + 5 * k + i));
        a6 = _mm512_dpbusd_epi32(a6, xv, _mm512_maskz_loadu_epi8(m, w + 6 * k + i));
        a7 = _mm512_dpbusd_epi32(a7, xv, _mm512_maskz_loadu_epi8(m, w + 7 * k + i));
    }
#define TINYML_HALF(a) _mm256_add_epi32(_mm512_castsi512_si256(a), _mm512_extracti64x4_epi64((a), 1))
    y0 = TINYML_HALF(a0), y1 = TINYML_HALF(a1), y2 = TINYML_HALF(a2), y3 = TINYML_HALF(a3);
    y4 = TINYML_HALF(a4), y5 = TINYML_HALF(a5), y6 = TINYML_HALF(a6), y7 = TINYML_HALF(a7);
#undef TINYML_HALF
    h0 = _mm256_hadd_epi32(_mm256_hadd_epi32(y0, y1), _mm256_hadd_epi32(y2, y3));
    h1 = _mm256_hadd_epi32(_mm256_hadd_epi32(y4, y5), _mm256_hadd_epi32(y6, y7));
    return _mm256_add_epi32(_mm256_permute2x128_si256(h0, h1, 0x20), _mm256_permute2x128_si256(h0, h1, 0x31));
}
#endif

#if defined(TINYML_USE_VNNI)
/* tinyml_requantize on eight lanes widened to int64 (the same integer steps, so the same results). */
static inline __m256i tinyml_requantize8_wide(__m256i x, __m256i mult, __m256i shift) {
    const __m512i zero = _mm512_setzero_si512(), one = _mm512_set1_epi64(1);
    const __m512i s = _mm512_cvtepi32_epi64(shift);
    const __m512i left = _mm512_max_epi64(s, zero), right = _mm512_max_epi64(_mm512_sub_epi64(zero, s), zero);
    __m512i v = _mm512_sllv_epi64(_mm512_cvtepi32_epi64(x), left), t;
    v = _mm512_min_epi64(_mm512_max_epi64(v, _mm512_set1_epi64(INT32_MIN)), _mm512_set1_epi64(INT32_MAX));
    v = _mm512_mul_epi32(v, _mm512_cvtepi32_epi64(mult));
    v = _mm512_srai_epi64(_mm512_add_epi64(v, _mm512_set1_epi64((long long)1 << 30)), 31);
    t = _mm512_add_epi64(v, _mm512_srai_epi64(v, 63));
    v = _mm512_add_epi64(_mm512_srav_epi64(t, right),
                         _mm512_and_si512(_mm512_srav_epi64(t, _mm512_sub_epi64(right, one)), one));
    return _mm512_cvtepi64_epi32(v);
}

/* tinyml_requantize on sixteen int32 lanes, the same integer steps: the high multiply as
 * (x * mult + 2^30) >> 31 on the even and the odd lanes' int64 products (the odd ones shifted
 * left by one so that their result is the high half), then the rounding shift t >> r plus bit
 * r - 1 of t, t one less for a negative value. A lane with r = 0 comes out unchanged: bit -1 is
 * read as the sign, which adds back the one taken. */
static inline __m512i tinyml_requantize16(__m512i x, __m512i mult, __m512i shift) {
    const __m512i zero = _mm512_setzero_si512(), one = _mm512_set1_epi32(1);
    const __m512i half = _mm512_set1_epi64((long long)1 << 30);
    __m512i even, odd, high, right, t;
    if (_mm512_cmpgt_epi32_mask(shift, zero)) {
        /* Some factor is >= 1 and needs a saturating left shift first: the int64 route. */
        __m256i lo = tinyml_requantize8_wide(_mm512_castsi512_si256(x), _mm512_castsi512_si256(mult),
                                             _mm512_castsi512_si256(shift));
        __m256i hi = tinyml_requantize8_wide(_mm512_extracti64x4_epi64(x, 1), _mm512_extracti64x4_epi64(mult, 1),
                                             _mm512_extracti64x4_epi64(shift, 1));
        return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
    }
    even = _mm512_srai_epi64(_mm512_add_epi64(_mm512_mul_epi32(x, mult), half), 31);
    odd = _mm512_mul_epi32(_mm512_srli_epi64(x, 32), _mm512_srli_epi64(mult, 32));
    odd = _mm512_slli_epi64(_mm512_add_epi64(odd, half), 1);
    high = _mm512_mask_blend_epi32((__mmask16)0xaaaa, even, odd);
    right = _mm512_sub_epi32(zero, shift);
    t = _mm512_add_epi32(high, _mm512_srai_epi32(high, 31));
    return _mm512_add_epi32(_mm512_srav_epi32(t, right),
                            _mm512_and_si512(_mm512_srav_epi32(t, _mm512_sub_epi32(right, one)), one));
}

static inline __m256i tinyml_requantize8v(__m256i x, __m256i mult, __m256i shift) {
    return _mm512_castsi512_si256(tinyml_requantize16(_mm512_zextsi256_si512(x), _mm512_zextsi256_si512(mult),
                                                      _mm512_zextsi256_si512(shift)));
}

static inline __m256i tinyml_requantize8(__m256i x, const int32_t *mult, const int8_t *shift) {
    const __m256i m = _mm256_loadu_si256((const __m256i *)mult);
    return tinyml_requantize8v(x, m, _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)shift)));
}

/* Eight int8 values widened to int32, minus the zero point. */
static inline __m256i tinyml_load8_centered(const int8_t *p, int32_t zp) {
    return _mm256_sub_epi32(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)), _mm256_set1_epi32(zp));
}

/* Clamp eight int32 lanes and store them as int8. */
static inline void tinyml_store8(int8_t *p, __m256i v, int32_t lo, int32_t hi) {
    v = _mm256_min_epi32(_mm256_max_epi32(v, _mm256_set1_epi32(lo)), _mm256_set1_epi32(hi));
    _mm_storel_epi64((__m128i *)p, _mm256_cvtepi32_epi8(v));
}
#endif

#if defined(__GNUC__) && !defined(__clang__)
/* With a layer's constants inlined, GCC 12 analyses the n % 4 tail loop below even where it
 * never runs (n a multiple of 4) and warns of an iteration that would overflow. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Waggressive-loop-optimizations"
#endif
/* n outputs dst[c + r] = clamp(requantize(bias[r] + dot(x, w + r * k)) + zp), channels c .. c + n - 1
 * (tab: tinyml_out_prepare's constants). */
static inline void tinyml_rows_s8(const int8_t *x, const int8_t *w, int32_t k, int32_t n, const int32_t *bias,
                                  const int32_t *wsum, const tinyml_oq_t *q, const tinyml_rq_t *tab, int32_t c,
                                  int8_t *dst) {
    int32_t o = 0, r;
#if defined(TINYML_USE_VNNI)
    const __m256i zp = _mm256_set1_epi32(q->zp), lo = _mm256_set1_epi32(q->lo), hi = _mm256_set1_epi32(q->hi);
    for (; o + 8 <= n; o += 8) {
        __m256i acc = tinyml_dot8_vnni(x, w + o * k, k);
        acc = _mm256_add_epi32(acc, _mm256_sub_epi32(_mm256_loadu_si256((const __m256i *)(bias + o)),
                                                     _mm256_loadu_si256((const __m256i *)(wsum + o))));
        acc = _mm256_add_epi32(tinyml_requantize8(acc, q->mult + c + o, q->shift + c + o), zp);
        acc = _mm256_min_epi32(_mm256_max_epi32(acc, lo), hi);
        _mm_storel_epi64((__m128i *)(dst + c + o), _mm256_cvtepi32_epi8(acc));
    }
#else
    (void)wsum;
#endif
    for (; o + 4 <= n; o += 4) {
        int32_t acc[4];
        for (r = 0; r < 4; r++) acc[r] = bias[o + r];
        tinyml_dot4(x, w + (size_t)o * (size_t)k, k, k, acc);
#if defined(TINYML_USE_MVE)
        tinyml_out_x4(q, c + o, tinyml_vldrwq_s32(acc), 4, dst);
        (void)tab;
#else
        tinyml_out_block(q, tab, c + o, acc, 4, dst);
#endif
    }
    for (; o < n; o++) {
        const int32_t acc = tinyml_dot1(x, w + (size_t)o * (size_t)k, k, bias[o]);
        tinyml_out_block(q, tab, c + o, &acc, 1, dst);
    }
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

typedef struct {
    tinyml_oq_t q;
    const int8_t *weight;  /* [out_c][kh][kw][in_c / groups] (DSP: row pairs interleaved); depthwise [kh][kw][out_c] */
    const int32_t *bias;   /* bias - in_zp * sum(weight row); depthwise: the bias as it is */
    int16_t in_c, in_h, in_w, out_c, out_h, out_w;
    int16_t kh, kw, sh, sw, pad_t, pad_l, groups, in_zp;
#if defined(TINYML_USE_VNNI)
    const int32_t *wsum;   /* 128 * sum(weight row) */
    const int8_t *wq;      /* [groups][ceil(K / 4)][out_c / groups rounded up to 16][4] */
#endif
} tinyml_conv_t;

/* One output position's receptive field of group g, ordered (ky, kx, c), padded with in_zp. */
static inline void tinyml_im2col(const tinyml_conv_t *p, const int8_t *in, int32_t g, int32_t oy, int32_t ox,
                                 int8_t *col) {
    const int32_t icg = p->in_c / p->groups;
    const int32_t y0 = oy * p->sh - p->pad_t, x0 = ox * p->sw - p->pad_l;
    const int32_t inner = p->groups == 1 && x0 >= 0 && x0 + p->kw <= p->in_w;
    int32_t ky, kx;
    for (ky = 0; ky < p->kh; ky++) {
        const int32_t y = y0 + ky;
        if (y < 0 || y >= p->in_h) {
            memset(col, (uint8_t)p->in_zp, (size_t)(p->kw * icg));
            col += p->kw * icg;
        } else if (inner) {
            /* The whole kernel row is in the image: kw pixels of in_c channels are contiguous. */
            memcpy(col, in + (y * p->in_w + x0) * p->in_c, (size_t)(p->kw * p->in_c));
            col += p->kw * p->in_c;
        } else {
            for (kx = 0; kx < p->kw; kx++) {
                const int32_t x = x0 + kx;
                if (x < 0 || x >= p->in_w) {
                    memset(col, (uint8_t)p->in_zp, (size_t)icg);
                } else {
                    memcpy(col, in + (y * p->in_w + x) * p->in_c + g * icg, (size_t)icg);
                }
                col += icg;
            }
        }
    }
}

/* The receptive field of output position pos as one contiguous run of K values: in place in the
 * input when it is one (a 1x1 kernel, or whole image rows, inside the image, no groups), else
 * its im2col copy in col. */
static inline const int8_t *tinyml_column(const tinyml_conv_t *p, const int8_t *in, int32_t g, int32_t pos,
                                          int8_t *col) {
    const int32_t oy = pos / p->out_w, ox = pos - oy * p->out_w;
    const int32_t y0 = oy * p->sh - p->pad_t, x0 = ox * p->sw - p->pad_l;
    if (p->groups == 1 && (p->kh == 1 || p->kw == p->in_w) && y0 >= 0 && x0 >= 0 && y0 + p->kh <= p->in_h &&
        x0 + p->kw <= p->in_w)
        return in + (y0 * p->in_w + x0) * p->in_c;
    tinyml_im2col(p, in, g, oy, ox, col);
    return col;
}

#if defined(TINYML_USE_VNNI)
/* n bytes of int8 as uint8 (x + 128), 64 at a time. */
static inline void tinyml_copy_flip(uint8_t *dst, const int8_t *src, int32_t n) {
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    for (; n >= 64; n -= 64, src += 64, dst += 64)
        _mm512_storeu_si512((void *)dst, _mm512_xor_si512(_mm512_loadu_si512((const void *)src), flip));
    if (n > 0) {
        const __mmask64 m = (__mmask64)(~0ULL >> (64 - n));
        _mm512_mask_storeu_epi8(dst, m, _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, src), flip));
    }
}

/* tinyml_im2col as uint8 (x + 128); the caller zeroes the column up to a multiple of 4 bytes. */
static inline void tinyml_im2col_u8(const tinyml_conv_t *p, const int8_t *in, int32_t g, int32_t oy, int32_t ox,
                                    uint8_t *col) {
    const int32_t icg = p->in_c / p->groups;
    const int32_t y0 = oy * p->sh - p->pad_t, x0 = ox * p->sw - p->pad_l;
    const int32_t inner = p->groups == 1 && x0 >= 0 && x0 + p->kw <= p->in_w;
    const uint8_t pad = (uint8_t)(p->in_zp + 128);
    uint8_t *c = col;
    int32_t ky, kx;
    for (ky = 0; ky < p->kh; ky++) {
        const int32_t y = y0 + ky;
        if (y < 0 || y >= p->in_h) {
            memset(c, pad, (size_t)(p->kw * icg));
            c += p->kw * icg;
        } else if (inner) {
            tinyml_copy_flip(c, in + (y * p->in_w + x0) * p->in_c, p->kw * p->in_c);
            c += p->kw * p->in_c;
        } else {
            for (kx = 0; kx < p->kw; kx++) {
                const int32_t x = x0 + kx;
                if (x < 0 || x >= p->in_w) {
                    memset(c, pad, (size_t)icg);
                } else {
                    tinyml_copy_flip(c, in + (y * p->in_w + x) * p->in_c + g * icg, icg);
                }
                c += icg;
            }
        }
    }
}

/* The lanes of output channels o .. o + n - 1 (n <= 16; none past n). */
static inline __mmask16 tinyml_lanes16(int32_t n) {
    return (__mmask16)(n >= 16 ? 0xffffu : (n > 0 ? (1u << n) - 1u : 0u));
}

/* The starting sums of channels o .. o + n - 1: bias - 128 * sum(weight row), the second term
 * undoing the + 128 of the uint8 columns. */
static inline __m512i tinyml_vnni_bias16(const tinyml_conv_t *p, int32_t o, int32_t n) {
    const __mmask16 m = tinyml_lanes16(n);
    return _mm512_sub_epi32(_mm512_maskz_loadu_epi32(m, p->bias + o), _mm512_maskz_loadu_epi32(m, p->wsum + o));
}

/* The output stage of 16 channels o .. o + n - 1, its per-channel terms computed once for all
 * the output positions of a tile (tinyml_vnni_oq_load), then applied to each position's
 * accumulator (tinyml_vnni_store): requantize, add the zero point, clamp, store channels below
 * n. With no left shift among the channels (every factor below 1, the usual case)
 * tinyml_requantize16's 32-bit route is spelled out with those terms hoisted. */
typedef struct {
    __m512i mult, mult_odd, shift, right, right1, zp, lo, hi;
    __mmask16 lanes;
    int wide; /* some factor is >= 1: tinyml_requantize16 as it is */
} tinyml_vnni_oq_t;

static inline __attribute__((always_inline)) void tinyml_vnni_oq_load(const tinyml_conv_t *p, int32_t o, int32_t n,
                                                                     tinyml_vnni_oq_t *r) {
    const __m512i zero = _mm512_setzero_si512();
    r->lanes = tinyml_lanes16(n);
    r->mult = _mm512_maskz_loadu_epi32(r->lanes, p->q.mult + o);
    r->mult_odd = _mm512_srli_epi64(r->mult, 32);
    r->shift = _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(r->lanes, p->q.shift + o));
    r->right = _mm512_sub_epi32(zero, r->shift);
    r->right1 = _mm512_sub_epi32(r->right, _mm512_set1_epi32(1));
    r->zp = _mm512_set1_epi32(p->q.zp);
    r->lo = _mm512_set1_epi32(p->q.lo);
    r->hi = _mm512_set1_epi32(p->q.hi);
    r->wide = _mm512_cmpgt_epi32_mask(r->shift, zero) != 0;
}

static inline __attribute__((always_inline)) void tinyml_vnni_store(const tinyml_vnni_oq_t *r, __m512i x,
                                                                   int8_t *dst) {
    __m512i v;
    if (r->wide) {
        v = tinyml_requantize16(x, r->mult, r->shift);
    } else {
        const __m512i half = _mm512_set1_epi64((long long)1 << 30), one = _mm512_set1_epi32(1);
        const __m512i even = _mm512_srai_epi64(_mm512_add_epi64(_mm512_mul_epi32(x, r->mult), half), 31);
        const __m512i odd =
            _mm512_slli_epi64(_mm512_add_epi64(_mm512_mul_epi32(_mm512_srli_epi64(x, 32), r->mult_odd), half), 1);
        const __m512i high = _mm512_mask_blend_epi32((__mmask16)0xaaaa, even, odd);
        const __m512i t = _mm512_add_epi32(high, _mm512_srai_epi32(high, 31));
        v = _mm512_add_epi32(_mm512_srav_epi32(t, r->right), _mm512_and_si512(_mm512_srav_epi32(t, r->right1), one));
    }
    v = _mm512_min_epi32(_mm512_max_epi32(_mm512_add_epi32(v, r->zp), r->lo), r->hi);
    _mm_mask_storeu_epi8(dst, r->lanes, _mm512_cvtepi32_epi8(v));
}

/* One tile of the lane-parallel convolution: np output positions (their columns at x[0 .. np - 1],
 * nseg segments of words 4-byte words each, seg_stride apart) times nb blocks of 16 channels
 * (weights w, one step per word). Each accumulator is its own VPDPBUSD chain; np * nb = 8 keeps
 * eight chains in flight, and every weight vector loaded serves np positions. Called with
 * constant np and nb, so the accumulators live in registers. Only the first valid positions
 * are stored. */
static inline __attribute__((always_inline)) void tinyml_vnni_tile(const tinyml_conv_t *p, const uint8_t *const *x,
                                                                  const int32_t np, const int32_t nb,
                                                                  const int8_t *w, size_t step, int32_t nseg,
                                                                  size_t seg_stride, int32_t words, int32_t o,
                                                                  int32_t left, int32_t valid, int8_t *const *dst) {
    __m512i acc[2][8];
    tinyml_vnni_oq_t oq;
    int32_t i, seg, q;
    const __m512i b0 = tinyml_vnni_bias16(p, o, left), b1 = nb > 1 ? tinyml_vnni_bias16(p, o + 16, left - 16) : b0;
    for (i = 0; i < np; i++) acc[0][i] = b0, acc[1][i] = b1;
    for (seg = 0; seg < nseg; seg++) {
        const size_t at = (size_t)seg * seg_stride;
        for (q = 0; q < words; q++, w += step) {
            const __m512i w0 = _mm512_loadu_si512((const void *)w);
            const __m512i w1 = nb > 1 ? _mm512_loadu_si512((const void *)(w + 64)) : w0;
            for (i = 0; i < np; i++) {
                int32_t word;
                __m512i u;
                memcpy(&word, x[i] + at + 4 * (size_t)q, 4);
                u = _mm512_set1_epi32(word);
                acc[0][i] = _mm512_dpbusd_epi32(acc[0][i], u, w0);
                if (nb > 1) acc[1][i] = _mm512_dpbusd_epi32(acc[1][i], u, w1);
            }
        }
    }
    tinyml_vnni_oq_load(p, o, left, &oq);
    for (i = 0; i < np && i < valid; i++) tinyml_vnni_store(&oq, acc[0][i], dst[i] + o);
    if (nb > 1) {
        tinyml_vnni_oq_load(p, o + 16, left - 16, &oq);
        for (i = 0; i < np && i < valid; i++) tinyml_vnni_store(&oq, acc[1][i], dst[i] + o + 16);
    }
}

/* The tile of a convolution of at most 16 output channels (per group): eight output positions,
 * two column words per load. The weights hold, per pair of words, channels 0-7 then 8-15, each
 * channel's two words side by side (lane 2c: word q of channel c, lane 2c + 1: word q + 1), so
 * that one 8-byte broadcast of a position's two words feeds both vectors: half the broadcasts
 * of tinyml_vnni_tile. Used when every segment of the column has an even number of words. The
 * lanes' two halves are added at the end. */
static inline __attribute__((always_inline)) void tinyml_vnni_tile_pairs(const tinyml_conv_t *p,
                                                                        const uint8_t *const *x, const int8_t *w,
                                                                        int32_t nseg, size_t seg_stride,
                                                                        int32_t pairs, int32_t o, int32_t left,
                                                                        int32_t valid, int8_t *const *dst) {
    const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    const __m512i bias = tinyml_vnni_bias16(p, o, left);
    __m512i lo[8], hi[8];
    tinyml_vnni_oq_t oq;
    int32_t i, seg, q;
    for (i = 0; i < 8; i++) lo[i] = hi[i] = _mm512_setzero_si512();
    for (seg = 0; seg < nseg; seg++) {
        const size_t at = (size_t)seg * seg_stride;
        for (q = 0; q < pairs; q++, w += 128) {
            const __m512i w0 = _mm512_loadu_si512((const void *)w), w1 = _mm512_loadu_si512((const void *)(w + 64));
            for (i = 0; i < 8; i++) {
                long long words;
                __m512i u;
                memcpy(&words, x[i] + at + 8 * (size_t)q, 8);
                u = _mm512_set1_epi64(words);
                lo[i] = _mm512_dpbusd_epi32(lo[i], u, w0);
                hi[i] = _mm512_dpbusd_epi32(hi[i], u, w1);
            }
        }
    }
    tinyml_vnni_oq_load(p, o, left, &oq);
    for (i = 0; i < 8 && i < valid; i++) {
        const __m512i sum = _mm512_add_epi32(_mm512_permutex2var_epi32(lo[i], even, hi[i]),
                                             _mm512_permutex2var_epi32(lo[i], odd, hi[i]));
        tinyml_vnni_store(&oq, _mm512_add_epi32(sum, bias), dst[i] + o);
    }
}

/* The channel stride of the VNNI convolution's padded input copy: a convolution without groups
 * whose input has 3 or more channels, not a multiple of 4, gets its channels padded to the next
 * multiple of 4 (the weights of the added channels are zero, see the emitter), so that its
 * kernel rows are whole 4-byte words read in place; other inputs keep their channel count. */
static inline int32_t tinyml_vnni_stride(const tinyml_conv_t *p) {
    return p->groups == 1 && p->in_c % 4 != 0 && p->in_c >= 3 ? (p->in_c + 3) & ~3 : p->in_c;
}

/* Convolution with output channels in vector lanes: per 4 column bytes, one VPDPBUSD per 16
 * channels against the interleaved weights wq, no horizontal sums. Output positions are taken
 * eight at a time (one block of 16 channels) or four at a time (two blocks), see
 * tinyml_vnni_tile. Without groups the input is first copied once as uint8 (x + 128) with its
 * zero-point padding (and its channels padded, see tinyml_vnni_stride), so that a position's
 * kernel rows are read from it in place as whole 4-byte words, or, for an input of 1 or 2
 * channels, copied from it row by row; with groups each position's column is gathered from the
 * input. */
static void tinyml_conv_vnni(const tinyml_conv_t *p, const int8_t *in, int8_t *out) {
    const int32_t icg = p->in_c / p->groups, ocg = p->out_c / p->groups;
    const int32_t k = icg * p->kh * p->kw, kq = (k + 3) / 4, ocp = (ocg + 15) & ~15;
    const size_t step = (size_t)ocp * 4;
    const int32_t whole = p->groups == 1, cs = tinyml_vnni_stride(p), row_bytes = p->kw * cs;
    const int32_t direct = whole && row_bytes % 4 == 0;
    const int32_t ph = whole ? (p->out_h - 1) * p->sh + p->kh : 1;
    const int32_t pw = whole ? (p->out_w - 1) * p->sw + p->kw : 1;
    /* Up to 16 channels whose segments (kernel rows read in place, or the whole column) are an
     * even number of words: words in pairs (tinyml_vnni_tile_pairs), as the emitter lays out the
     * weights. */
    const int32_t nseg = direct ? p->kh : 1, words = direct ? row_bytes / 4 : kq;
    const int32_t pairs = ocp == 16 && words % 2 == 0;
    const size_t seg_stride = direct ? (size_t)pw * cs : 0;
    const int32_t positions = p->out_h * p->out_w, np = ocp == 16 ? 8 : 4;
    const __mmask64 row_mask = row_bytes < 64 ? (__mmask64)(~0ULL >> (64 - row_bytes)) : ~(__mmask64)0;
    uint8_t col[direct ? 1 : 8][4 * kq];
    uint8_t padded[whole ? ph * pw * cs : 1];
    const uint8_t *x[8];
    int8_t *dst[8];
    int32_t g, pos, b, i, q, oy0 = 0, ox0 = 0;
    if (!direct) /* The columns' last partial group of 4 bytes: zero once, never written after. */
        for (i = 0; i < 8; i++)
            for (q = k; q < 4 * kq; q++) col[i][q] = 0;
    if (whole) {
        const uint8_t pad = (uint8_t)(p->in_zp + 128);
        int32_t y, c;
        for (y = 0; y < ph; y++) {
            uint8_t *row = padded + (size_t)y * pw * cs;
            const int32_t iy = y - p->pad_t;
            const int32_t left = p->pad_l < pw ? p->pad_l : pw;
            int32_t mid = pw - left < p->in_w ? pw - left : p->in_w;
            const int8_t *src = in;
            if (iy < 0 || iy >= p->in_h) mid = 0;
            else src += (size_t)iy * p->in_w * p->in_c;
            if (cs == p->in_c) {
                memset(row, pad, (size_t)left * cs);
                if (mid > 0) tinyml_copy_flip(row + left * cs, src, mid * cs);
                memset(row + (left + mid) * cs, pad, (size_t)(pw - left - mid) * cs);
            } else {
                /* Padded channels: the pixel's channels, then pad bytes (against zero weights). */
                memset(row, pad, (size_t)pw * cs);
                if (cs <= 64) {
                    const __mmask64 keep = (__mmask64)(~0ULL >> (64 - p->in_c));
                    const __mmask64 all = cs < 64 ? (__mmask64)(~0ULL >> (64 - cs)) : ~(__mmask64)0;
                    const __m512i padv = _mm512_set1_epi8((char)pad), flip = _mm512_set1_epi8((char)0x80);
                    for (i = 0; i < mid; i++) {
                        const __m512i v = _mm512_xor_si512(_mm512_maskz_loadu_epi8(keep, src + i * p->in_c), flip);
                        _mm512_mask_storeu_epi8(row + (left + i) * cs, all, _mm512_mask_blend_epi8(keep, padv, v));
                    }
                } else {
                    for (i = 0; i < mid; i++)
                        for (c = 0; c < p->in_c; c++)
                            row[(left + i) * cs + c] = (uint8_t)(src[i * p->in_c + c] ^ 0x80);
                }
            }
        }
    }
    for (pos = 0; pos < positions; pos += np) {
        const int32_t valid = positions - pos < np ? positions - pos : np;
        for (g = 0; g < p->groups; g++) {
            const int8_t *wg = p->wq + (size_t)g * kq * step;
            int32_t oy = oy0, ox = ox0;
            for (i = 0; i < np; i++) {
                /* Positions past the end repeat the last one; they are computed, never stored. */
                if (i >= valid) {
                    x[i] = x[valid - 1];
                    dst[i] = dst[valid - 1];
                    continue;
                }
                dst[i] = out + (size_t)(pos + i) * p->out_c;
                if (direct) {
                    x[i] = padded + ((size_t)oy * p->sh * pw + (size_t)ox * p->sw) * cs;
                } else if (whole) {
                    const uint8_t *src = padded + ((size_t)oy * p->sh * pw + (size_t)ox * p->sw) * cs;
                    int32_t ky;
                    for (ky = 0; ky < p->kh; ky++) {
                        uint8_t *to = col[i] + ky * row_bytes;
                        const uint8_t *from = src + (size_t)ky * pw * cs;
                        if (row_bytes <= 64)
                            _mm512_mask_storeu_epi8(to, row_mask, _mm512_maskz_loadu_epi8(row_mask, from));
                        else
                            memcpy(to, from, (size_t)row_bytes);
                    }
                    x[i] = col[i];
                } else {
                    tinyml_im2col_u8(p, in, g, oy, ox, col[i]);
                    x[i] = col[i];
                }
                if (++ox == p->out_w) ox = 0, oy++;
            }
            for (b = 0; b < ocp; b += 32) {
                const int8_t *w = wg + (size_t)b * 4;
                if (pairs)
                    tinyml_vnni_tile_pairs(p, x, w, nseg, seg_stride, words / 2, g * ocg, ocg, valid, dst);
                else if (np == 8)
                    tinyml_vnni_tile(p, x, 8, 1, w, step, nseg, seg_stride, words, g * ocg + b, ocg - b, valid, dst);
                else if (b + 16 < ocp)
                    tinyml_vnni_tile(p, x, 4, 2, w, step, nseg, seg_stride, words, g * ocg + b, ocg - b, valid, dst);
                else
                    tinyml_vnni_tile(p, x, 4, 1, w, step, nseg, seg_stride, words, g * ocg + b, ocg - b, valid, dst);
            }
        }
        ox0 += valid;
        while (ox0 >= p->out_w) ox0 -= p->out_w, oy0++;
    }
}
#endif

#if defined(TINYML_USE_DSP)
/* Two columns c0, c1 of k int8 values widened to int16 and interleaved for tinyml_dot2x2: per 4
 * values a, b, c, d of each column the halfword pairs (a, c), (b, d) that SXTB16 and SXTB16 ROR 8
 * make of a weight word, c0's two words then c1's; the last k % 4 values as int16, c0 and c1
 * alternating. */
static inline void tinyml_widen2(const int8_t *c0, const int8_t *c1, int32_t k, uint32_t *dst) {
    int16_t *tail;
    int32_t i;
    for (i = 0; i + 4 <= k; i += 4, dst += 4) {
        const uint32_t u = tinyml_load32(c0 + i), v = tinyml_load32(c1 + i);
        dst[0] = (uint32_t)tinyml_sxtb16(u);
        dst[1] = (uint32_t)tinyml_sxtb16_ror8(u);
        dst[2] = (uint32_t)tinyml_sxtb16(v);
        dst[3] = (uint32_t)tinyml_sxtb16_ror8(v);
    }
    tail = (int16_t *)dst;
    for (; i < k; i++) {
        *tail++ = c0[i];
        *tail++ = c1[i];
    }
}

/* Two weight rows against two widened columns x (tinyml_widen2) over k values:
 * acc = {w0.c0, w0.c1, w1.c0, w1.c1} added. The rows are interleaved as the DSP path stores them
 * (per 4 values a word of each row, then the last k % 4 values of each row). Per 4 values: the
 * columns' four words, 2 weight words, 4 SXTB16 and 8 SMLAD for 16 MACs, which fits the core's
 * registers (CMSIS-NN's 2 x 2 scheme, with both operands in one stream each). */
static inline void tinyml_dot2x2(const uint32_t *x, const int8_t *w, int32_t k, int32_t *acc) {
    int32_t a = acc[0], b = acc[1], c = acc[2], d = acc[3], n;
    const int16_t *t;
    const int32_t rest = k & 3;
#if defined(__GNUC__) && !defined(TINYML_EMULATE_DSP)
    /* The same loop in assembly: 16.5 instructions per 16 MACs in 13 registers (GCC 12 spills
     * some of them to the stack when this is inlined into a larger loop); the columns' four words
     * by one LDM, which needs them in ascending registers. */
    if (k >= 4) {
        const int8_t *const end = w + 8 * (k >> 2);
        register uint32_t x0e __asm__("r8"), x0o __asm__("r9"), x1e __asm__("r10"), x1o __asm__("r11");
        uint32_t u, e;
        __asm__ volatile(
            /* Unrolled twice; an odd count enters at the second copy. */
            "sub %[u], %[end], %[w]\n\t"
            "tst %[u], #8\n\t"
            "bne 2f\n\t"
            "1:\n\t"
            "ldm %[x]!, {%[x0e], %[x0o], %[x1e], %[x1o]}\n\t"
            "ldr %[u], [%[w]], #4\n\t"
            "sxtb16 %[e], %[u]\n\t"
            "sxtb16 %[u], %[u], ror #8\n\t"
            "smlad %[a], %[e], %[x0e], %[a]\n\t"
            "smlad %[a], %[u], %[x0o], %[a]\n\t"
            "smlad %[b], %[e], %[x1e], %[b]\n\t"
            "smlad %[b], %[u], %[x1o], %[b]\n\t"
            "ldr %[u], [%[w]], #4\n\t"
            "sxtb16 %[e], %[u]\n\t"
            "sxtb16 %[u], %[u], ror #8\n\t"
            "smlad %[c], %[e], %[x0e], %[c]\n\t"
            "smlad %[c], %[u], %[x0o], %[c]\n\t"
            "smlad %[d], %[e], %[x1e], %[d]\n\t"
            "smlad %[d], %[u], %[x1o], %[d]\n\t"
            "2:\n\t"
            "ldm %[x]!, {%[x0e], %[x0o], %[x1e], %[x1o]}\n\t"
            "ldr %[u], [%[w]], #4\n\t"
            "sxtb16 %[e], %[u]\n\t"
            "sxtb16 %[u], %[u], ror #8\n\t"
            "smlad %[a], %[e], %[x0e], %[a]\n\t"
            "smlad %[a], %[u], %[x0o], %[a]\n\t"
            "smlad %[b], %[e], %[x1e], %[b]\n\t"
            "smlad %[b], %[u], %[x1o], %[b]\n\t"
            "ldr %[u], [%[w]], #4\n\t"
            "sxtb16 %[e], %[u]\n\t"
            "sxtb16 %[u], %[u], ror #8\n\t"
            "smlad %[c], %[e], %[x0e], %[c]\n\t"
            "smlad %[c], %[u], %[x0o], %[c]\n\t"
            "smlad %[d], %[e], %[x1e], %[d]\n\t"
            "smlad %[d], %[u], %[x1o], %[d]\n\t"
            "cmp %[w], %[end]\n\t"
            "bne 1b\n\t"
            : [a] "+r"(a), [b] "+r"(b), [c] "+r"(c), [d] "+r"(d), [x] "+r"(x), [w] "+r"(w), [x0e] "=&r"(x0e),
              [x0o] "=&r"(x0o), [x1e] "=&r"(x1e), [x1o] "=&r"(x1o), [u] "=&r"(u), [e] "=&r"(e)
            : [end] "r"(end)
            : "cc", "memory");
    }
    n = 0;
#else
    n = k >> 2;
#endif
    for (; n > 0; n--, x += 4, w += 8) {
        const uint32_t u = tinyml_load32(w), v = tinyml_load32(w + 4);
        const int32_t x0e = (int32_t)x[0], x0o = (int32_t)x[1], x1e = (int32_t)x[2], x1o = (int32_t)x[3];
        int32_t e = tinyml_sxtb16(u), o = tinyml_sxtb16_ror8(u);
        a = tinyml_smlad(e, x0e, a);
        a = tinyml_smlad(o, x0o, a);
        b = tinyml_smlad(e, x1e, b);
        b = tinyml_smlad(o, x1o, b);
        e = tinyml_sxtb16(v);
        o = tinyml_sxtb16_ror8(v);
        c = tinyml_smlad(e, x0e, c);
        c = tinyml_smlad(o, x0o, c);
        d = tinyml_smlad(e, x1e, d);
        d = tinyml_smlad(o, x1o, d);
    }
    t = (const int16_t *)x;
    for (n = 0; n < rest; n++) {
        a += w[n] * t[2 * n];
        b += w[n] * t[2 * n + 1];
        c += w[rest + n] * t[2 * n];
        d += w[rest + n] * t[2 * n + 1];
    }
    acc[0] = a;
    acc[1] = b;
    acc[2] = c;
    acc[3] = d;
}

/* One plain weight row against two widened columns: acc = {w.c0, w.c1} added. */
static inline void tinyml_dot1x2(const uint32_t *x, const int8_t *w, int32_t k, int32_t *acc) {
    int32_t a = acc[0], b = acc[1], n;
    const int16_t *t;
    for (n = k >> 2; n > 0; n--, x += 4, w += 4) {
        const uint32_t u = tinyml_load32(w);
        const int32_t e = tinyml_sxtb16(u), o = tinyml_sxtb16_ror8(u);
        a = tinyml_smlad(e, (int32_t)x[0], a);
        a = tinyml_smlad(o, (int32_t)x[1], a);
        b = tinyml_smlad(e, (int32_t)x[2], b);
        b = tinyml_smlad(o, (int32_t)x[3], b);
    }
    t = (const int16_t *)x;
    for (n = 0; n < (k & 3); n++) {
        a += w[n] * t[2 * n];
        b += w[n] * t[2 * n + 1];
    }
    acc[0] = a;
    acc[1] = b;
}

/* The sums of output channels o .. end - 1 (weights w on) for two widened columns, into sum0 and
 * sum1. Out of line, so that the inner loop has the registers to itself. */
static TINYML_NOINLINE void tinyml_conv_dsp_sums(const uint32_t *wide, const int8_t *w, const int32_t *bias,
                                                 int32_t k, int32_t o, int32_t end, int32_t *sum0, int32_t *sum1) {
    for (; o + 2 <= end; o += 2, w += 2 * k) {
        int32_t acc[4];
        acc[0] = acc[1] = bias[o];
        acc[2] = acc[3] = bias[o + 1];
        tinyml_dot2x2(wide, w, k, acc);
        sum0[o] = acc[0];
        sum1[o] = acc[1];
        sum0[o + 1] = acc[2];
        sum1[o + 1] = acc[3];
    }
    if (o < end) {
        int32_t acc[2];
        acc[0] = acc[1] = bias[o];
        tinyml_dot1x2(wide, w, k, acc);
        sum0[o] = acc[0];
        sum1[o] = acc[1];
    }
}

/* Convolution, two output positions at a time: their columns widened to int16 once, then two
 * output channels per pass of tinyml_dot2x2 into two rows of int32 sums, requantized by
 * tinyml_out_block. col: the widened pair (4 * K4 bytes, K4 = K rounded up to 4), the two int8
 * columns (K4 bytes each), the two rows of sums (4 * out_c bytes each), then tab. */
static void tinyml_conv_dsp(const tinyml_conv_t *p, const int8_t *in, int8_t *out, int8_t *col,
                            const tinyml_rq_t *tab) {
    const int32_t icg = p->in_c / p->groups, ocg = p->out_c / p->groups, oc = p->out_c;
    const int32_t k = icg * p->kh * p->kw, k4 = (k + 3) & ~3, npos = p->out_h * p->out_w;
    uint32_t *const wide = (uint32_t *)(void *)col;
    int8_t *const col0 = col + 4 * k4, *const col1 = col0 + k4;
    int32_t *const sum0 = (int32_t *)(void *)(col1 + k4), *const sum1 = sum0 + oc;
    int32_t pos, g;
    for (pos = 0; pos < npos; pos += 2) {
        const int32_t pair = pos + 1 < npos;
        int8_t *const dst0 = out + pos * oc;
        for (g = 0; g < p->groups; g++) {
            const int32_t end = (g + 1) * ocg;
            const int8_t *x0 = tinyml_column(p, in, g, pos, col0);
            const int8_t *x1 = pair ? tinyml_column(p, in, g, pos + 1, col1) : x0;
            tinyml_widen2(x0, x1, k, wide);
            tinyml_conv_dsp_sums(wide, p->weight + g * ocg * k, p->bias, k, g * ocg, end, sum0, sum1);
        }
        tinyml_out_block(&p->q, tab, 0, sum0, oc, dst0);
        if (pair) tinyml_out_block(&p->q, tab, 0, sum1, oc, dst0 + oc);
    }
}
#endif

/* Convolution, NHWC in and out, through im2col: col needs 6 * K4 + 20 * out_c bytes, K4 =
 * (in_c / groups) * kh * kw rounded up to 4 (the DSP path's two int8 and two int16 columns, two
 * rows of sums and the output stage's constants; the others use K4). */
TINYML_KERNEL void tinyml_conv_s8(const tinyml_conv_t *p, const int8_t *in, int8_t *out, int8_t *col) {
    const int32_t icg = p->in_c / p->groups, ocg = p->out_c / p->groups;
    const int32_t k = icg * p->kh * p->kw, k4 = (k + 3) & ~3, npos = p->out_h * p->out_w;
    tinyml_rq_t *const tab = (tinyml_rq_t *)(void *)(col + 6 * k4 + 8 * p->out_c);
    int32_t g, pos;
#if defined(TINYML_USE_VNNI)
    if (p->wq) {
        /* This path keeps its two columns on the stack. */
        tinyml_conv_vnni(p, in, out);
        (void)col;
        return;
    }
#endif
#if defined(TINYML_USE_DSP)
    tinyml_out_prepare(&p->q, p->out_c, tab);
    tinyml_conv_dsp(p, in, out, col, tab);
    return;
#endif
    for (pos = 0; pos < npos; pos++) {
        int8_t *dst = out + pos * p->out_c;
        for (g = 0; g < p->groups; g++) {
            const int32_t o = g * ocg;
            const int8_t *x = tinyml_column(p, in, g, pos, col);
#if defined(TINYML_USE_VNNI)
            const int32_t *ws = p->wsum ? p->wsum + o : 0;
#else
            const int32_t *ws = 0;
#endif
            tinyml_rows_s8(x, p->weight + o * k, k, ocg, p->bias + o, ws, &p->q, tab, o, dst);
        }
    }
}

/* acc[0..3] += four channels of one tap: x and w point at the tap's channels c .. c + 3; the
 * input minus its zero point, so that a tap outside the image (the padding) adds nothing. */
#if defined(TINYML_USE_DSP)
/* SXTAB16 widens a word of four channels into the halfword pairs (0, 2) and (1, 3) and adds
 * -in_zp to each half in the same instruction; SMLABB / SMLATT multiply-accumulate the bottom /
 * top halves. */
#define TINYML_DW4_TAP(x, w)                                                                    \
    do {                                                                                        \
        const uint32_t u_ = tinyml_load32(x), v_ = tinyml_load32(w);                           \
        const int32_t xe_ = tinyml_sxtab16(nzp, u_), xo_ = tinyml_sxtab16_ror8(nzp, u_);       \
        const int32_t we_ = tinyml_sxtb16(v_), wo_ = tinyml_sxtb16_ror8(v_);                   \
        a0 = tinyml_smlabb(xe_, we_, a0);                                                       \
        a1 = tinyml_smlabb(xo_, wo_, a1);                                                       \
        a2 = tinyml_smlatt(xe_, we_, a2);                                                       \
        a3 = tinyml_smlatt(xo_, wo_, a3);                                                       \
    } while (0)
#else
#define TINYML_DW4_TAP(x, w)                                                                    \
    do {                                                                                        \
        a0 += ((x)[0] - zp) * (w)[0];                                                           \
        a1 += ((x)[1] - zp) * (w)[1];                                                           \
        a2 += ((x)[2] - zp) * (w)[2];                                                           \
        a3 += ((x)[3] - zp) * (w)[3];                                                           \
    } while (0)
#endif

/* Four channels of one output pixel over the window's taps inside the image: nky rows of nkx
 * taps, x and w at the first one (rows xrow and wrow bytes apart, taps c bytes apart). */
static inline void tinyml_dw_4(const int32_t *bias, const int8_t *x, const int8_t *w, int32_t nky, int32_t nkx,
                               int32_t xrow, int32_t wrow, int32_t c, int32_t zp, int32_t *acc) {
    int32_t a0 = bias[0], a1 = bias[1], a2 = bias[2], a3 = bias[3], ky, kx;
#if defined(TINYML_USE_DSP)
    const int32_t nzp = (int32_t)(((uint32_t)-zp & 0xffffu) * 0x10001u);
#endif
    for (ky = 0; ky < nky; ky++, x += xrow, w += wrow) {
        const int8_t *xp = x, *wp = w;
        for (kx = 0; kx < nkx; kx++, xp += c, wp += c) TINYML_DW4_TAP(xp, wp);
    }
    acc[0] = a0;
    acc[1] = a1;
    acc[2] = a2;
    acc[3] = a3;
}

#if defined(TINYML_USE_DSP)
/* All channels of one output pixel, four at a time, for weights in this path's layout
 * [C / 4][kh][kw][4] (the taps of four channels contiguous): nky rows of nkx taps inside the image,
 * x and w at the first one of channel group 0, input taps c bytes apart (rows xrow), weight rows
 * wrow bytes apart, groups kk4 bytes apart. A row of three taps is unrolled. Out of line, so that
 * the tap loop has the registers to itself. */
static TINYML_NOINLINE void tinyml_dw_pixel_dsp(const int32_t *bias, const int8_t *x, const int8_t *w, int32_t groups,
                                                int32_t nky, int32_t nkx, int32_t xrow, int32_t wrow, int32_t kk4,
                                                int32_t c, int32_t zp, int32_t *acc) {
    const int32_t nzp = (int32_t)(((uint32_t)-zp & 0xffffu) * 0x10001u), c2 = 2 * c;
    int32_t g, ky, kx;
    for (g = 0; g < groups; g++, x += 4, w += kk4, bias += 4, acc += 4) {
        int32_t a0 = bias[0], a1 = bias[1], a2 = bias[2], a3 = bias[3];
        const int8_t *xr = x, *wr = w;
        for (ky = 0; ky < nky; ky++, xr += xrow, wr += wrow) {
            if (nkx == 3) {
#if defined(__GNUC__) && !defined(TINYML_EMULATE_DSP)
                /* A row of three taps in 31 instructions and 13 registers (GCC 12 spills). */
                const int8_t *wp = wr;
                uint32_t u, v, xe, we;
                __asm__ volatile(
#define TINYML_DW4_ASM(load)                                                                   \
    load "ldr %[v], [%[w]], #4\n\t"                                                            \
         "sxtab16 %[xe], %[z], %[u]\n\t"                                                       \
         "sxtab16 %[u], %[z], %[u], ror #8\n\t"                                                \
         "sxtb16 %[we], %[v]\n\t"                                                              \
         "sxtb16 %[v], %[v], ror #8\n\t"                                                       \
         "smlabb %[a0], %[xe], %[we], %[a0]\n\t"                                               \
         "smlatt %[a2], %[xe], %[we], %[a2]\n\t"                                               \
         "smlabb %[a1], %[u], %[v], %[a1]\n\t"                                                 \
         "smlatt %[a3], %[u], %[v], %[a3]\n\t"
                    TINYML_DW4_ASM("ldr %[u], [%[x]]\n\t")
                    TINYML_DW4_ASM("ldr %[u], [%[x], %[c]]\n\t")
                    TINYML_DW4_ASM("ldr %[u], [%[x], %[c2]]\n\t")
#undef TINYML_DW4_ASM
                    : [a0] "+r"(a0), [a1] "+r"(a1), [a2] "+r"(a2), [a3] "+r"(a3), [w] "+r"(wp), [u] "=&r"(u),
                      [v] "=&r"(v), [xe] "=&r"(xe), [we] "=&r"(we)
                    : [x] "r"(xr), [c] "r"(c), [c2] "r"(c2), [z] "r"(nzp)
                    : "memory");
#else
                TINYML_DW4_TAP(xr, wr);
                TINYML_DW4_TAP(xr + c, wr + 4);
                TINYML_DW4_TAP(xr + c2, wr + 8);
#endif
            } else {
                const int8_t *xp = xr, *wp = wr;
                for (kx = 0; kx < nkx; kx++, xp += c, wp += 4) TINYML_DW4_TAP(xp, wp);
            }
        }
        acc[0] = a0;
        acc[1] = a1;
        acc[2] = a2;
        acc[3] = a3;
    }
}
#endif

#if defined(TINYML_USE_MVE)
/* 16 channels (n of them, n <= 16) of one output pixel, as tinyml_dw_4: four int32x4
 * accumulators; per tap four VLDRB.S32 of the input, VSUB of the zero point, four VLDRB.S32 of
 * the weights, VMUL and VADD, into acc (16 values, room for all). Whole blocks unpredicated. */
static inline void tinyml_dw_mve(const tinyml_conv_t *p, const int8_t *x, const int8_t *w, int32_t c, int32_t n,
                                 int32_t nky, int32_t nkx, int32_t xrow, int32_t wrow, int32_t *acc) {
    const int32_t C = p->out_c, zp = p->in_zp;
    const int32_t *bias = p->bias + c;
    tinyml_s32x4 a0, a1, a2, a3;
    int32_t ky, kx;
    x += c;
    w += c;
    if (n == 16) {
        a0 = tinyml_vldrwq_s32(bias);
        a1 = tinyml_vldrwq_s32(bias + 4);
        a2 = tinyml_vldrwq_s32(bias + 8);
        a3 = tinyml_vldrwq_s32(bias + 12);
        for (ky = 0; ky < nky; ky++, x += xrow, w += wrow) {
            const int8_t *xp = x, *wp = w;
            for (kx = 0; kx < nkx; kx++, xp += C, wp += C) {
                a0 = tinyml_vmlaq_s32(a0, tinyml_vsubq_n_s32(tinyml_vldrbq_s32(xp), zp), tinyml_vldrbq_s32(wp));
                a1 = tinyml_vmlaq_s32(a1, tinyml_vsubq_n_s32(tinyml_vldrbq_s32(xp + 4), zp), tinyml_vldrbq_s32(wp + 4));
                a2 = tinyml_vmlaq_s32(a2, tinyml_vsubq_n_s32(tinyml_vldrbq_s32(xp + 8), zp), tinyml_vldrbq_s32(wp + 8));
                a3 = tinyml_vmlaq_s32(a3, tinyml_vsubq_n_s32(tinyml_vldrbq_s32(xp + 12), zp),
                                      tinyml_vldrbq_s32(wp + 12));
            }
        }
    } else {
        /* Lanes beyond n load 0 weights, so their input lanes add nothing. */
        const tinyml_pred p0 = tinyml_vctp32q((uint32_t)n), p1 = tinyml_vctp32q((uint32_t)(n > 4 ? n - 4 : 0));
        const tinyml_pred p2 = tinyml_vctp32q((uint32_t)(n > 8 ? n - 8 : 0));
        const tinyml_pred p3 = tinyml_vctp32q((uint32_t)(n > 12 ? n - 12 : 0));
        a0 = tinyml_vldrwq_z_s32(bias, p0);
        a1 = tinyml_vldrwq_z_s32(bias + 4, p1);
        a2 = tinyml_vldrwq_z_s32(bias + 8, p2);
        a3 = tinyml_vldrwq_z_s32(bias + 12, p3);
        for (ky = 0; ky < nky; ky++, x += xrow, w += wrow) {
            const int8_t *xp = x, *wp = w;
            for (kx = 0; kx < nkx; kx++, xp += C, wp += C) {
                a0 = tinyml_vmlaq_s32(a0, tinyml_vsubq_n_s32(tinyml_vldrbq_z_s32(xp, p0), zp),
                                      tinyml_vldrbq_z_s32(wp, p0));
                a1 = tinyml_vmlaq_s32(a1, tinyml_vsubq_n_s32(tinyml_vldrbq_z_s32(xp + 4, p1), zp),
                                      tinyml_vldrbq_z_s32(wp + 4, p1));
                a2 = tinyml_vmlaq_s32(a2, tinyml_vsubq_n_s32(tinyml_vldrbq_z_s32(xp + 8, p2), zp),
                                      tinyml_vldrbq_z_s32(wp + 8, p2));
                a3 = tinyml_vmlaq_s32(a3, tinyml_vsubq_n_s32(tinyml_vldrbq_z_s32(xp + 12, p3), zp),
                                      tinyml_vldrbq_z_s32(wp + 12, p3));
            }
        }
    }
    tinyml_vst1q_s32(acc, a0);
    tinyml_vst1q_s32(acc + 4, a1);
    tinyml_vst1q_s32(acc + 8, a2);
    tinyml_vst1q_s32(acc + 12, a3);
}
#endif

/* The taps k0 .. k1 - 1 of a depthwise window along one axis that fall inside the image: the
 * window of output o starts at o * stride - pad (returned), kernel k, image size n. */
static inline int32_t tinyml_dw_clip(int32_t o, int32_t stride, int32_t pad, int32_t k, int32_t n, int32_t *k0,
                                     int32_t *k1) {
    const int32_t start = o * stride - pad;
    *k0 = start < 0 ? -start : 0;
    *k1 = n - start < k ? n - start : k;
    return start;
}

#if defined(TINYML_USE_VNNI)
/* Depthwise convolution with a channel multiplier of 1, 16 channels per vector: per block of
 * channels the taps' weights are widened to int32 once and the output stage's terms computed
 * once, then every output pixel sums its window's taps inside the image (x - in_zp times the
 * weight, VPMULLD) from the bias and goes through tinyml_vnni_store. */
static void tinyml_dw_vnni(const tinyml_conv_t *p, const int8_t *in, int8_t *out) {
    const int32_t C = p->out_c, kw = p->kw, taps = p->kh * p->kw;
    const __m512i zp = _mm512_set1_epi32(p->in_zp);
    __m512i wt[taps];
    int32_t c, t, oy, ox, ky, kx;
    for (c = 0; c < C; c += 16) {
        const int32_t n = C - c < 16 ? C - c : 16;
        const __mmask16 m = tinyml_lanes16(n);
        const __m512i bias = _mm512_maskz_loadu_epi32(m, p->bias + c);
        tinyml_vnni_oq_t oq;
        tinyml_vnni_oq_load(p, c, n, &oq);
        for (t = 0; t < taps; t++) wt[t] = _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, p->weight + t * C + c));
        for (oy = 0; oy < p->out_h; oy++) {
            int32_t ky0, ky1, kx0, kx1;
            const int32_t y0 = tinyml_dw_clip(oy, p->sh, p->pad_t, p->kh, p->in_h, &ky0, &ky1);
            for (ox = 0; ox < p->out_w; ox++) {
                const int32_t x0 = tinyml_dw_clip(ox, p->sw, p->pad_l, kw, p->in_w, &kx0, &kx1);
                __m512i acc = bias;
                for (ky = ky0; ky < ky1; ky++) {
                    const int8_t *row = in + (size_t)(y0 + ky) * p->in_w * C + c;
                    for (kx = kx0; kx < kx1; kx++) {
                        const __m512i x = _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, row + (size_t)(x0 + kx) * C));
                        acc = _mm512_add_epi32(acc, _mm512_mullo_epi32(_mm512_sub_epi32(x, zp), wt[ky * kw + kx]));
                    }
                }
                tinyml_vnni_store(&oq, acc, out + ((size_t)oy * p->out_w + ox) * C + c);
            }
        }
    }
}
#endif

/* Depthwise convolution (one input channel per group), NHWC, weights [kh][kw][out_c] (channels
 * contiguous per tap), no im2col. The bias is not corrected for the input zero point: the taps
 * multiply x - in_zp, so that the window is simply clipped to the image (the padding adds
 * nothing) and no tap is tested. With a channel multiplier of 1 the channels are the inner loop,
 * 16 at a time. */
TINYML_KERNEL void tinyml_depthwise_s8(const tinyml_conv_t *p, const int8_t *in, int8_t *out, int8_t *scratch) {
    const int32_t C = p->out_c, mult = C / p->in_c, zp = p->in_zp, kw = p->kw;
    const int32_t xrow = p->in_w * p->in_c, wrow = kw * C;
    int32_t *const acc = (int32_t *)(void *)scratch;
    tinyml_rq_t *const tab = (tinyml_rq_t *)(void *)(scratch + 4 * C);
    int32_t c, j, oy, ox, ky, kx;
#if defined(TINYML_USE_VNNI)
    if (mult == 1) {
        tinyml_dw_vnni(p, in, out);
        return;
    }
#endif
    tinyml_out_prepare(&p->q, C, tab);
    for (oy = 0; oy < p->out_h; oy++) {
        int32_t ky0, ky1, kx0, kx1;
        const int32_t y0 = tinyml_dw_clip(oy, p->sh, p->pad_t, p->kh, p->in_h, &ky0, &ky1);
        for (ox = 0; ox < p->out_w; ox++) {
            const int32_t x0 = tinyml_dw_clip(ox, p->sw, p->pad_l, kw, p->in_w, &kx0, &kx1);
            const int32_t nky = ky1 - ky0, nkx = kx1 - kx0;
            /* The first tap inside the image, of input and weights. */
            const int8_t *x = in + (y0 + ky0) * xrow + (x0 + kx0) * p->in_c;
            const int8_t *w = p->weight + (ky0 * kw + kx0) * C;
            int8_t *dst = out + (oy * p->out_w + ox) * C;
#if defined(TINYML_USE_DSP)
            if (mult == 1 && C % 4 == 0) {
                /* The weights in groups of four channels (see tinyml_dw_pixel_dsp). */
                tinyml_dw_pixel_dsp(p->bias, x, p->weight + (ky0 * kw + kx0) * 4, C / 4, nky, nkx, xrow, kw * 4,
                                    p->kh * kw * 4, C, zp, acc);
                tinyml_out_block(&p->q, tab, 0, acc, C, dst);
                continue;
            }
#endif
            for (c = 0; c < C; c += 16) {
                const int32_t n = C - c < 16 ? C - c : 16;
#if defined(TINYML_USE_MVE)
                if (mult == 1) {
                    tinyml_dw_mve(p, x, w, c, n, nky, nkx, xrow, wrow, acc + c);
                    continue;
                }
#endif
                j = 0;
#if !defined(TINYML_USE_DSP)
                if (mult == 1)
                    for (; j + 4 <= n; j += 4)
                        tinyml_dw_4(p->bias + c + j, x + c + j, w + c + j, nky, nkx, xrow, wrow, C, zp, acc + c + j);
#endif
                for (; j < n; j++) {
                    const int32_t o = c + j, ch = o / mult;
                    int32_t a = p->bias[o];
                    for (ky = 0; ky < nky; ky++)
                        for (kx = 0; kx < nkx; kx++)
                            a += (x[ky * xrow + kx * p->in_c + ch] - zp) * w[ky * wrow + kx * C + o];
                    acc[c + j] = a;
                }
            }
            tinyml_out_block(&p->q, tab, 0, acc, C, dst);
        }
    }
}

typedef struct {
    tinyml_oq_t q;
    const int8_t *weight; /* [out_n][in_n] */
    const int32_t *bias;  /* bias - in_zp * sum(weight row) */
    int32_t in_n, out_n;
#if defined(TINYML_USE_VNNI)
    const int32_t *wsum;  /* 128 * sum(weight row) */
#endif
} tinyml_fc_t;

/* Fully connected; scratch: the output stage's constants, 12 * out_n bytes. */
TINYML_KERNEL void tinyml_fc_s8(const tinyml_fc_t *p, const int8_t *in, int8_t *out, int8_t *scratch) {
    tinyml_rq_t *const tab = (tinyml_rq_t *)(void *)scratch;
#if defined(TINYML_USE_VNNI)
    const int32_t *ws = p->wsum;
#else
    const int32_t *ws = 0;
#endif
    tinyml_out_prepare(&p->q, p->out_n, tab);
    tinyml_rows_s8(in, p->weight, p->in_n, p->out_n, p->bias, ws, &p->q, tab, 0, out);
}

typedef struct {
    int32_t n, a_zp, b_zp, out_zp, left_shift, act_min, act_max;
    int32_t a_mult, a_shift, b_mult, b_shift, out_mult, out_shift;
} tinyml_add_t;

#if defined(TINYML_USE_VNNI) && defined(__AVX512VBMI__)
/* An Add input's rescaled value requantize((x - zp) << left_shift, mult, shift) depends on its
 * int8 value x only: a table of 256 int32 (index x + 128), kept as four byte planes for VPERMI2B. */
static inline void tinyml_add_table(int32_t zp, int32_t left_shift, int32_t mult, int32_t shift,
                                    uint8_t planes[4][256]) {
    const __m512i m = _mm512_set1_epi32(mult), s = _mm512_set1_epi32(shift);
    const __m512i lanes = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    int32_t v, k;
    for (v = 0; v < 256; v += 16) {
        const __m512i x = _mm512_add_epi32(lanes, _mm512_set1_epi32(v - 128 - zp));
        const __m512i t = tinyml_requantize16(_mm512_sllv_epi32(x, _mm512_set1_epi32(left_shift)), m, s);
        for (k = 0; k < 4; k++)
            _mm_storeu_si128((__m128i *)(planes[k] + v), _mm512_cvtepi32_epi8(_mm512_srli_epi32(t, 8 * k)));
    }
}

/* Byte k of the table entries of the 64 indices idx (x + 128; hi: their top bits). */
static inline __m512i tinyml_add_plane(const uint8_t *plane, __m512i idx, __mmask64 hi) {
    const __m512i lo = _mm512_permutex2var_epi8(_mm512_loadu_si512((const void *)plane), idx,
                                                _mm512_loadu_si512((const void *)(plane + 64)));
    const __m512i up = _mm512_permutex2var_epi8(_mm512_loadu_si512((const void *)(plane + 128)), idx,
                                                _mm512_loadu_si512((const void *)(plane + 192)));
    return _mm512_mask_blend_epi8(hi, lo, up);
}

/* The table entries of 64 int8 values as int32, in the order of the byte unpacks: d[j] holds,
 * in each 128-bit lane c, the entries of values 16c + 4j .. 16c + 4j + 3. */
static inline void tinyml_add_lookup(const uint8_t planes[4][256], const int8_t *x, __m512i d[4]) {
    const __m512i idx = _mm512_xor_si512(_mm512_loadu_si512((const void *)x), _mm512_set1_epi8((char)0x80));
    const __mmask64 hi = _mm512_movepi8_mask(idx);
    const __m512i b0 = tinyml_add_plane(planes[0], idx, hi), b1 = tinyml_add_plane(planes[1], idx, hi);
    const __m512i b2 = tinyml_add_plane(planes[2], idx, hi), b3 = tinyml_add_plane(planes[3], idx, hi);
    const __m512i l01 = _mm512_unpacklo_epi8(b0, b1), h01 = _mm512_unpackhi_epi8(b0, b1);
    const __m512i l23 = _mm512_unpacklo_epi8(b2, b3), h23 = _mm512_unpackhi_epi8(b2, b3);
    d[0] = _mm512_unpacklo_epi16(l01, l23);
    d[1] = _mm512_unpackhi_epi16(l01, l23);
    d[2] = _mm512_unpacklo_epi16(h01, h23);
    d[3] = _mm512_unpackhi_epi16(h01, h23);
}
#endif

TINYML_KERNEL void tinyml_add_s8(const tinyml_add_t *p, const int8_t *a, const int8_t *b, int8_t *out) {
    int32_t i = 0;
#if defined(TINYML_USE_VNNI) && defined(__AVX512VBMI__)
    /* Long inputs: each input's rescaling by table lookup (tinyml_add_table), 64 values at a
     * time; only the sum is requantized. The packs undo the unpacks' order (values are clamped
     * to int8 first, so they do not saturate). */
    if (p->n >= 512) {
        uint8_t ta[4][256], tb[4][256];
        const __m512i om = _mm512_set1_epi32(p->out_mult), os = _mm512_set1_epi32(p->out_shift);
        const __m512i ozp = _mm512_set1_epi32(p->out_zp);
        const __m512i lo = _mm512_set1_epi32(p->act_min), hi = _mm512_set1_epi32(p->act_max);
        tinyml_add_table(p->a_zp, p->left_shift, p->a_mult, p->a_shift, ta);
        tinyml_add_table(p->b_zp, p->left_shift, p->b_mult, p->b_shift, tb);
        for (; i + 64 <= p->n; i += 64) {
            __m512i da[4], db[4], o[4];
            int32_t j;
            tinyml_add_lookup((const uint8_t(*)[256])ta, a + i, da);
            tinyml_add_lookup((const uint8_t(*)[256])tb, b + i, db);
            for (j = 0; j < 4; j++) {
                const __m512i v = _mm512_add_epi32(tinyml_requantize16(_mm512_add_epi32(da[j], db[j]), om, os), ozp);
                o[j] = _mm512_min_epi32(_mm512_max_epi32(v, lo), hi);
            }
            _mm512_storeu_si512((void *)(out + i), _mm512_packs_epi16(_mm512_packs_epi32(o[0], o[1]),
                                                                      _mm512_packs_epi32(o[2], o[3])));
        }
    }
#endif
#if defined(TINYML_USE_VNNI)
    const __m512i am = _mm512_set1_epi32(p->a_mult), as = _mm512_set1_epi32(p->a_shift);
    const __m512i bm = _mm512_set1_epi32(p->b_mult), bs = _mm512_set1_epi32(p->b_shift);
    const __m512i om = _mm512_set1_epi32(p->out_mult), os = _mm512_set1_epi32(p->out_shift);
    const __m512i azp = _mm512_set1_epi32(p->a_zp), bzp = _mm512_set1_epi32(p->b_zp);
    const __m512i ozp = _mm512_set1_epi32(p->out_zp);
    for (; i + 16 <= p->n; i += 16) {
        __m512i xa = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(a + i)));
        __m512i xb = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b + i)));
        __m512i sum;
        xa = _mm512_sllv_epi32(_mm512_sub_epi32(xa, azp), _mm512_set1_epi32(p->left_shift));
        xb = _mm512_sllv_epi32(_mm512_sub_epi32(xb, bzp), _mm512_set1_epi32(p->left_shift));
        sum = _mm512_add_epi32(tinyml_requantize16(xa, am, as), tinyml_requantize16(xb, bm, bs));
        sum = _mm512_add_epi32(tinyml_requantize16(sum, om, os), ozp);
        sum = _mm512_min_epi32(_mm512_max_epi32(sum, _mm512_set1_epi32(p->act_min)), _mm512_set1_epi32(p->act_max));
        _mm_storeu_si128((__m128i *)(out + i), _mm512_cvtepi32_epi8(sum));
    }
#endif
    for (; i < p->n; i++) {
        int32_t xa = (int32_t)(((uint32_t)(a[i] - p->a_zp)) << p->left_shift);
        int32_t xb = (int32_t)(((uint32_t)(b[i] - p->b_zp)) << p->left_shift);
        int32_t s = tinyml_requantize(xa, p->a_mult, p->a_shift) + tinyml_requantize(xb, p->b_mult, p->b_shift);
        out[i] = tinyml_clamp(tinyml_requantize(s, p->out_mult, p->out_shift) + p->out_zp, p->act_min, p->act_max);
    }
}

typedef struct {
    int32_t c, in_h, in_w, out_h, out_w, kh, kw, sh, sw, pad_t, pad_l;
    int32_t in_zp, out_zp, act_min, act_max, count_include_pad;
    int32_t rescale;        /* maxpool: 0 when the output keeps the input's scale */
    const int32_t *mult;    /* avgpool: index count - 1; maxpool: one value when rescale */
    const int32_t *shift;
} tinyml_pool_t;

/* n values v[i] -> dst[i] = clamp(requantize(v[i], mult, shift) + zp), one factor for all. */
static inline void tinyml_requantize_block(const int32_t *v, int32_t n, int32_t mult, int32_t shift, int32_t zp,
                                           int32_t lo, int32_t hi, int8_t *dst) {
    int32_t i = 0;
#if defined(TINYML_USE_VNNI)
    const __m512i m = _mm512_set1_epi32(mult), s = _mm512_set1_epi32(shift), z = _mm512_set1_epi32(zp);
    for (; i + 16 <= n; i += 16) {
        __m512i r = _mm512_add_epi32(tinyml_requantize16(_mm512_loadu_si512((const void *)(v + i)), m, s), z);
        r = _mm512_min_epi32(_mm512_max_epi32(r, _mm512_set1_epi32(lo)), _mm512_set1_epi32(hi));
        _mm_storeu_si128((__m128i *)(dst + i), _mm512_cvtepi32_epi8(r));
    }
#endif
    for (; i < n; i++) dst[i] = tinyml_clamp(tinyml_requantize(v[i], mult, shift) + zp, lo, hi);
}

#define TINYML_POOL_CHUNK 64

#if defined(TINYML_USE_DSP) || defined(TINYML_USE_MVE)
/* Max pooling that keeps the scale: four channels per word (DSP: SSUB8 + SEL) or sixteen per
 * vector (MVE: VMAX), the clamp the same way. The scalar loop below takes the rest. */
static int32_t tinyml_maxpool_simd(const tinyml_pool_t *p, const int8_t *in, int8_t *dst, int32_t y0, int32_t x0) {
    int32_t c = 0, ky, kx;
#if defined(TINYML_USE_MVE)
    const tinyml_s8x16 lo = tinyml_vdupq_n_s8((int8_t)p->act_min), hi = tinyml_vdupq_n_s8((int8_t)p->act_max);
    for (; c + 16 <= p->c; c += 16) {
        tinyml_s8x16 m = tinyml_vdupq_n_s8(-128);
        for (ky = 0; ky < p->kh; ky++) {
            const int32_t y = y0 + ky;
            if (y < 0 || y >= p->in_h) continue;
            for (kx = 0; kx < p->kw; kx++) {
                const int32_t x = x0 + kx;
                if (x < 0 || x >= p->in_w) continue;
                m = tinyml_vmaxq_s8(m, tinyml_vld1q_s8(in + (y * p->in_w + x) * p->c + c));
            }
        }
        tinyml_vst1q_s8(dst + c, tinyml_vminq_s8(tinyml_vmaxq_s8(m, lo), hi));
    }
#else
    const uint32_t lo = 0x01010101u * (uint8_t)p->act_min, hi = 0x01010101u * (uint8_t)p->act_max;
    for (; c + 4 <= p->c; c += 4) {
        uint32_t m = 0x80808080u;
        for (ky = 0; ky < p->kh; ky++) {
            const int32_t y = y0 + ky;
            if (y < 0 || y >= p->in_h) continue;
            for (kx = 0; kx < p->kw; kx++) {
                const int32_t x = x0 + kx;
                if (x < 0 || x >= p->in_w) continue;
                m = tinyml_max8x4(m, tinyml_load32(in + (y * p->in_w + x) * p->c + c));
            }
        }
        m = tinyml_min8x4(tinyml_max8x4(m, lo), hi);
        memcpy(dst + c, &m, 4);
    }
#endif
    return c;
}
#endif

/* Max pooling, NHWC: channels innermost, 64 at a time. */
TINYML_KERNEL void tinyml_maxpool_s8(const tinyml_pool_t *p, const int8_t *in, int8_t *out) {
    int32_t c0, oy, ox, ky, kx, j;
    for (oy = 0; oy < p->out_h; oy++) {
        for (ox = 0; ox < p->out_w; ox++) {
            const int32_t y0 = oy * p->sh - p->pad_t, x0 = ox * p->sw - p->pad_l;
            int8_t *dst = out + (oy * p->out_w + ox) * p->c;
            c0 = 0;
#if defined(TINYML_USE_DSP) || defined(TINYML_USE_MVE)
            if (!p->rescale) c0 = tinyml_maxpool_simd(p, in, dst, y0, x0);
#endif
            for (; c0 < p->c; c0 += TINYML_POOL_CHUNK) {
                const int32_t n = p->c - c0 < TINYML_POOL_CHUNK ? p->c - c0 : TINYML_POOL_CHUNK;
                int32_t m[TINYML_POOL_CHUNK];
                for (j = 0; j < n; j++) m[j] = -128;
                for (ky = 0; ky < p->kh; ky++) {
                    const int32_t y = y0 + ky;
                    if (y < 0 || y >= p->in_h) continue;
                    for (kx = 0; kx < p->kw; kx++) {
                        const int32_t x = x0 + kx;
                        const int8_t *px;
                        if (x < 0 || x >= p->in_w) continue;
                        px = in + (y * p->in_w + x) * p->c + c0;
                        for (j = 0; j < n; j++) m[j] = px[j] > m[j] ? px[j] : m[j];
                    }
                }
                if (p->rescale) {
                    for (j = 0; j < n; j++) m[j] -= p->in_zp;
                    tinyml_requantize_block(m, n, p->mult[0], p->shift[0], p->out_zp, p->act_min, p->act_max, dst + c0);
                } else {
                    for (j = 0; j < n; j++) dst[c0 + j] = tinyml_clamp(m[j], p->act_min, p->act_max);
                }
            }
        }
    }
}

/* Average pooling, NHWC: sum(x - zp) rescaled by s_in / (s_out * count), channels innermost. */
TINYML_KERNEL void tinyml_avgpool_s8(const tinyml_pool_t *p, const int8_t *in, int8_t *out) {
    int32_t c0, oy, ox, ky, kx, j;
    for (oy = 0; oy < p->out_h; oy++) {
        for (ox = 0; ox < p->out_w; ox++) {
            const int32_t y0 = oy * p->sh - p->pad_t, x0 = ox * p->sw - p->pad_l;
            int8_t *dst = out + (oy * p->out_w + ox) * p->c;
            for (c0 = 0; c0 < p->c; c0 += TINYML_POOL_CHUNK) {
                const int32_t n = p->c - c0 < TINYML_POOL_CHUNK ? p->c - c0 : TINYML_POOL_CHUNK;
                int32_t sum[TINYML_POOL_CHUNK], count = 0;
                for (j = 0; j < n; j++) sum[j] = 0;
                for (ky = 0; ky < p->kh; ky++) {
                    const int32_t y = y0 + ky;
                    if (y < 0 || y >= p->in_h) continue;
                    for (kx = 0; kx < p->kw; kx++) {
                        const int32_t x = x0 + kx;
                        const int8_t *px;
                        if (x < 0 || x >= p->in_w) continue;
                        px = in + (y * p->in_w + x) * p->c + c0;
                        for (j = 0; j < n; j++) sum[j] += px[j];
                        count++;
                    }
                }
                /* The zero point once per element summed: sum(x - zp) = sum(x) - count * zp. */
                for (j = 0; j < n; j++) sum[j] -= count * p->in_zp;
                if (p->count_include_pad) count = p->kh * p->kw;
                tinyml_requantize_block(sum, n, p->mult[count - 1], p->shift[count - 1], p->out_zp, p->act_min,
                                        p->act_max, dst + c0);
            }
        }
    }
}

/* (C, H, W) planes to (H, W, C) pixels, and back. */
TINYML_KERNEL void tinyml_chw_to_hwc(int32_t c, int32_t hw, const int8_t *in, int8_t *out) {
    int32_t i, j;
    for (i = 0; i < hw; i++)
        for (j = 0; j < c; j++) out[i * c + j] = in[j * hw + i];
}

TINYML_KERNEL void tinyml_hwc_to_chw(int32_t c, int32_t hw, const int8_t *in, int8_t *out) {
    int32_t i, j;
    for (j = 0; j < c; j++)
        for (i = 0; i < hw; i++) out[j * hw + i] = in[i * c + j];
}

/* Elementwise rescale and clamp over n values. */
TINYML_KERNEL void tinyml_requantize_s8(int32_t n, const int8_t *in, int8_t *out, int32_t in_zp, int32_t out_zp,
                                        int32_t mult, int32_t shift, int32_t act_min, int32_t act_max) {
    int32_t i = 0;
#if defined(TINYML_USE_VNNI)
    const __m256i m = _mm256_set1_epi32(mult), s = _mm256_set1_epi32(shift), zp = _mm256_set1_epi32(out_zp);
    for (; i + 8 <= n; i += 8)
        tinyml_store8(out + i, _mm256_add_epi32(tinyml_requantize8v(tinyml_load8_centered(in + i, in_zp), m, s), zp),
                      act_min, act_max);
#endif
    for (; i < n; i++)
        out[i] = tinyml_clamp(tinyml_requantize(in[i] - in_zp, mult, shift) + out_zp, act_min, act_max);
}

/* Copy with clamp (a concatenated input that keeps its scale). */
TINYML_KERNEL void tinyml_clamp_copy_s8(int32_t n, const int8_t *in, int8_t *out, int32_t act_min, int32_t act_max) {
    int32_t i;
    if (act_min <= -128 && act_max >= 127) {
        memcpy(out, in, (size_t)n);
        return;
    }
    for (i = 0; i < n; i++) out[i] = tinyml_clamp(in[i], act_min, act_max);
}

#endif /* TINYML_KERNELS_H */
"""
