"""A hand-written int8 MLP in C with the generated-model interface, and its numpy reference.

Test fixture only: it stands in for the code generator's output so that the firmware, the
boards and the harness can be tested on their own. The C follows the TFLite / CMSIS-NN int8
conventions (per-channel symmetric weights, asymmetric activations, int32 bias, fixed-point
multiplier and shift with a rounding doubling high multiply and a rounding right shift), and
:func:`reference` performs the same integer arithmetic in numpy, so the board's outputs must
match it bit for bit.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["MlpFixture", "make_mlp"]


@dataclass
class _Layer:
    weights: np.ndarray  # int8 [out, in]
    bias: np.ndarray  # int32 [out]
    multiplier: np.ndarray  # int32 [out]
    shift: np.ndarray  # int32 [out]
    in_zp: int
    out_zp: int
    relu: bool


@dataclass
class MlpFixture:
    """The model: layer sizes, the integer parameters, quantization of input and output."""

    sizes: tuple[int, ...]
    layers: list[_Layer]
    input_scale: float
    input_zero_point: int
    output_scale: float
    output_zero_point: int

    @property
    def macs(self) -> int:
        return sum(a * b for a, b in zip(self.sizes[:-1], self.sizes[1:]))

    @property
    def weights_bytes(self) -> int:
        return sum(layer.weights.size + 12 * layer.bias.size for layer in self.layers)

    @property
    def arena_bytes(self) -> int:
        hidden = self.sizes[1:-1]
        return 2 * max(hidden) if hidden else 0

    def reference(self, x: np.ndarray) -> np.ndarray:
        """int8 outputs for int8 inputs ``x`` of shape [n, sizes[0]], the board's arithmetic."""
        act = x.astype(np.int64)
        for layer in self.layers:
            acc = (act - layer.in_zp) @ layer.weights.astype(np.int64).T + layer.bias
            acc = _requantize(acc, layer.multiplier.astype(np.int64), layer.shift.astype(np.int64))
            low = layer.out_zp if layer.relu else -128
            act = np.clip(acc + layer.out_zp, low, 127)
        return act.astype(np.int8)

    def write(self, folder: Path, *, simd: bool = False) -> Path:
        """Write ``model.h`` and ``model.c`` into ``folder`` and return it.

        ``simd`` uses SMLAD (Armv7E-M/Armv8-M DSP) or Helium (MVE) dot products where the
        target has them, with the input zero point folded into the bias as CMSIS-NN does; the
        integer results are the same.
        """
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.h").write_text(
            _HEADER.format(inputs=self.sizes[0], outputs=self.sizes[-1], arena=max(self.arena_bytes, 1))
        )
        (folder / "model.c").write_text(self._source(simd))
        return folder

    def _source(self, simd: bool) -> str:
        out = ["#define TINYML_FIXTURE_SIMD 1" if simd else "", _SOURCE_HEAD]
        out.append(f"const float tinyml_input_scale = {self.input_scale!r}f;")
        out.append(f"const int tinyml_input_zero_point = {self.input_zero_point};")
        out.append(f"const float tinyml_output_scale = {self.output_scale!r}f;")
        out.append(f"const int tinyml_output_zero_point = {self.output_zero_point};")
        out.append(f"const unsigned long tinyml_macs = {self.macs}ul;")
        out.append(f"const unsigned long tinyml_weights_bytes = {self.weights_bytes}ul;")
        out.append(f"static int8_t arena[{max(self.arena_bytes, 1)}] __attribute__((aligned(8)));")
        for i, layer in enumerate(self.layers):
            out.append(f"static const int8_t w{i}[{layer.weights.size}] = {{{_ints(layer.weights)}}};")
            bias = layer.bias.astype(np.int64)
            if simd:
                bias = bias - layer.in_zp * layer.weights.astype(np.int64).sum(axis=1)
            out.append(f"static const int32_t b{i}[{layer.bias.size}] = {{{_ints(bias)}}};")
            out.append(f"static const int32_t m{i}[{layer.bias.size}] = {{{_ints(layer.multiplier)}}};")
            out.append(f"static const int32_t s{i}[{layer.bias.size}] = {{{_ints(layer.shift)}}};")
        out.append("int tinyml_model_run(const int8_t *input, int8_t *output)\n{")
        half = max(self.arena_bytes // 2, 1)
        src = "input"
        for i, layer in enumerate(self.layers):
            last = i == len(self.layers) - 1
            dst = "output" if last else f"(arena + {(i % 2) * half})"
            n_out, n_in = layer.weights.shape
            low = layer.out_zp if layer.relu else -128
            out.append(
                f"    dense({src}, {dst}, w{i}, b{i}, m{i}, s{i}, {n_in}, {n_out}, "
                f"{layer.in_zp}, {layer.out_zp}, {low});"
            )
            src = dst
        out.append("    return 0;\n}")
        return "\n".join(out) + "\n"


def _ints(values: np.ndarray) -> str:
    return ",".join(str(int(v)) for v in values.reshape(-1))


def _requantize(acc: np.ndarray, multiplier: np.ndarray, shift: np.ndarray) -> np.ndarray:
    left = np.where(shift > 0, shift, 0)
    right = np.where(shift > 0, 0, -shift)
    a = np.clip(acc * (np.int64(1) << left), -(2**31), 2**31 - 1)
    ab = a * multiplier
    nudge = np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    total = ab + nudge
    high = np.where(total >= 0, total >> 31, -((-total) >> 31))  # C division truncates to zero
    mask = (np.int64(1) << right) - 1
    remainder = high & mask
    threshold = (mask >> 1) + (high < 0)
    return (high >> right) + (remainder > threshold)


def _quantize_multiplier(real: float) -> tuple[int, int]:
    mantissa, exponent = math.frexp(real)
    q = round(mantissa * (1 << 31))
    if q == 1 << 31:
        q //= 2
        exponent += 1
    return q, exponent


def make_mlp(sizes: tuple[int, ...] = (64, 64, 10), *, seed: int = 0) -> MlpFixture:
    """An MLP with random int8 weights whose activations use the whole int8 range."""
    rng = np.random.default_rng(seed)
    layers = []
    in_zp = int(rng.integers(-20, 20))
    input_zp = in_zp
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        relu = i < len(sizes) - 2
        out_zp = -128 if relu else int(rng.integers(-10, 10))
        weights = rng.integers(-127, 128, size=(n_out, n_in), dtype=np.int64).astype(np.int8)
        bias = rng.integers(-2000, 2000, size=n_out).astype(np.int32)
        # Spread the accumulator (std ~ 127 * 70 * sqrt(n_in)) over roughly +-100 codes.
        scales = rng.uniform(0.5, 1.5, size=n_out) * 100.0 / (127 * 70 * math.sqrt(n_in))
        pairs = [_quantize_multiplier(float(s)) for s in scales]
        layers.append(
            _Layer(
                weights=weights,
                bias=bias,
                multiplier=np.array([p[0] for p in pairs], dtype=np.int32),
                shift=np.array([p[1] for p in pairs], dtype=np.int32),
                in_zp=in_zp,
                out_zp=out_zp,
                relu=relu,
            )
        )
        in_zp = out_zp
    return MlpFixture(tuple(sizes), layers, 0.02, input_zp, 0.1, layers[-1].out_zp)


_HEADER = """#ifndef TINYML_MODEL_H
#define TINYML_MODEL_H
#include <stdint.h>
#define TINYML_INPUT_SIZE {inputs}
#define TINYML_OUTPUT_SIZE {outputs}
#define TINYML_ARENA_SIZE {arena}
extern const float tinyml_input_scale;
extern const int tinyml_input_zero_point;
extern const float tinyml_output_scale;
extern const int tinyml_output_zero_point;
extern const unsigned long tinyml_macs;
extern const unsigned long tinyml_weights_bytes;
int tinyml_model_run(const int8_t *input, int8_t *output);
#endif
"""

_SOURCE_HEAD = r"""#include <stdint.h>
#include "model.h"

static int32_t srdhm(int32_t a, int32_t b)
{
    if (a == b && a == INT32_MIN) {
        return INT32_MAX;
    }
    int64_t ab = (int64_t)a * (int64_t)b;
    int64_t nudge = ab >= 0 ? (1ll << 30) : (1 - (1ll << 30));
    return (int32_t)((ab + nudge) / (1ll << 31));
}

static int32_t rdbpot(int32_t x, int exponent)
{
    int32_t mask = (int32_t)((1ll << exponent) - 1);
    int32_t remainder = x & mask;
    int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
    return (x >> exponent) + (remainder > threshold ? 1 : 0);
}

static int32_t requantize(int32_t acc, int32_t multiplier, int32_t shift)
{
    int left = shift > 0 ? shift : 0;
    int right = shift > 0 ? 0 : -shift;
    int64_t scaled = (int64_t)acc * (1ll << left);
    if (scaled > INT32_MAX) {
        scaled = INT32_MAX;
    } else if (scaled < INT32_MIN) {
        scaled = INT32_MIN;
    }
    return rdbpot(srdhm((int32_t)scaled, multiplier), right);
}

#if defined(TINYML_FIXTURE_SIMD) && defined(__ARM_FEATURE_MVE)
#include <arm_mve.h>
static int32_t dot(const int8_t *x, const int8_t *w, int n)
{
    int32_t acc = 0;
    for (int i = 0; i < n; i += 16) {
        mve_pred16_t p = vctp8q((uint32_t)(n - i));
        acc = vmladavaq_p_s8(acc, vldrbq_z_s8(x + i, p), vldrbq_z_s8(w + i, p), p);
    }
    return acc;
}
#elif defined(TINYML_FIXTURE_SIMD) && defined(__ARM_FEATURE_DSP)
#include <arm_acle.h>
#include <string.h>
static int32_t dot(const int8_t *x, const int8_t *w, int n)
{
    int32_t acc = 0;
    int i = 0;
    for (; i + 4 <= n; i += 4) {
        uint32_t a, b;
        memcpy(&a, x + i, 4);
        memcpy(&b, w + i, 4);
        acc = __smlad(__sxtb16(a), __sxtb16(b), acc);
        acc = __smlad(__sxtb16((a >> 8) | (a << 24)), __sxtb16((b >> 8) | (b << 24)), acc);
    }
    for (; i < n; i++) {
        acc += (int32_t)x[i] * (int32_t)w[i];
    }
    return acc;
}
#endif

static void dense(const int8_t *x, int8_t *y, const int8_t *w, const int32_t *b, const int32_t *m,
                  const int32_t *s, int n_in, int n_out, int in_zp, int out_zp, int low)
{
    for (int j = 0; j < n_out; j++) {
        int32_t acc = b[j];
        const int8_t *row = w + j * n_in;
#if defined(TINYML_FIXTURE_SIMD) && (defined(__ARM_FEATURE_MVE) || defined(__ARM_FEATURE_DSP))
        (void)in_zp; /* folded into the bias */
        acc += dot(x, row, n_in);
#elif defined(TINYML_FIXTURE_SIMD)
#error "TINYML_FIXTURE_SIMD needs the DSP extension or MVE"
#else
        for (int i = 0; i < n_in; i++) {
            acc += ((int32_t)x[i] - in_zp) * (int32_t)row[i];
        }
#endif
        int32_t v = requantize(acc, m[j], s[j]) + out_zp;
        v = v < low ? low : (v > 127 ? 127 : v);
        y[j] = (int8_t)v;
    }
}
"""
