"""Fixed-point requantization, exactly as the generated C computes it.

An int8 layer accumulates in int32 and must scale the accumulator by a real factor
``M = s_in * s_w / s_out`` (or another ratio of scales) before adding the output zero point.
Integer-only inference represents ``M`` as ``m * 2**(shift - 31)`` with ``m`` an int32 in
``[2**30, 2**31)`` (the *quantized multiplier*) and ``shift`` a small signed integer, and
computes ``x * M`` as

1. ``x << max(shift, 0)``, saturated to int32 (a left shift only happens for ``M >= 1``);
2. ``SaturatingRoundingDoublingHighMul(x, m)``: the high 32 bits of ``2 * x * m``, rounded to
   nearest with ties away from zero (gemmlowp; ``arm_nn_doubling_high_mult`` in CMSIS-NN);
3. ``RoundingDivideByPOT(x, max(-shift, 0))``: an arithmetic right shift rounded to nearest,
   ties away from zero (gemmlowp; ``arm_nn_divide_by_power_of_two`` in CMSIS-NN).

This is TensorFlow Lite's ``MultiplyByQuantizedMultiplier`` and CMSIS-NN's
``arm_nn_requantize`` (its default, double-rounding variant). The numpy functions below work on
int64 arrays holding int32 values so that every intermediate is exact; the C code in
:mod:`tinymlaas_ci.ml.cgen.csource` mirrors them line for line.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from tinymlaas_ci.errors import TinymlError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = ["INT32_MAX", "INT32_MIN", "quantize_multiplier", "requantize", "rounding_divide_by_pot", "srdhm"]

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1


def quantize_multiplier(real: float) -> tuple[int, int]:
    """``(m, shift)`` with ``real ~= m * 2**(shift - 31)``, ``m`` in ``[2**30, 2**31)``.

    Factors too small to change any int32 (below ``2**-31``) become ``(0, 0)``. A factor of
    ``2**30`` or more cannot be represented and raises :class:`TinymlError`: it means two
    quantization scales in the model are wildly inconsistent.
    """
    real = float(real)
    if not math.isfinite(real) or real < 0:
        raise TinymlError(
            f"requantization factor {real!r} is not a finite non-negative number",
            hint="the model's quantization scales must be positive; re-quantize the model",
        )
    if real == 0.0:
        return 0, 0
    frac, exp = math.frexp(real)  # real = frac * 2**exp, frac in [0.5, 1)
    m = round(frac * (1 << 31))
    if m == 1 << 31:
        m //= 2
        exp += 1
    if exp < -31:
        return 0, 0
    if exp > 30:
        raise TinymlError(
            f"requantization factor {real:.3g} is too large for a fixed-point multiplier",
            hint="the model's quantization scales are inconsistent; re-quantize the model",
        )
    return int(m), int(exp)


def srdhm(a: np.ndarray, m: np.ndarray | int) -> np.ndarray:
    """Saturating rounding doubling high multiply of int32 values ``a`` by multipliers ``m``.

    ``m`` is never ``INT32_MIN`` here (multipliers are non-negative), so the one overflow case
    of the gemmlowp definition cannot occur.
    """
    import numpy as np

    ab = np.asarray(a, dtype=np.int64) * np.asarray(m, dtype=np.int64)
    nudge = np.where(ab >= 0, np.int64(1 << 30), np.int64(1 - (1 << 30)))
    s = ab + nudge
    # C's int64 division truncates toward zero; numpy's >> floors, so divide the magnitude.
    return np.where(s >= 0, s >> 31, -((-s) >> 31)).astype(np.int64)


def rounding_divide_by_pot(x: np.ndarray, exponent: np.ndarray | int) -> np.ndarray:
    """Arithmetic right shift by ``exponent`` (0..31) rounding to nearest, ties away from zero."""
    import numpy as np

    x = np.asarray(x, dtype=np.int64)
    e = np.asarray(exponent, dtype=np.int64)
    mask = (np.int64(1) << e) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0).astype(np.int64)
    return (x >> e) + (remainder > threshold).astype(np.int64)


def requantize(x: np.ndarray, m: np.ndarray | int, shift: np.ndarray | int) -> np.ndarray:
    """``x * m * 2**(shift - 31)`` in the fixed-point arithmetic described in the module docstring."""
    import numpy as np

    x = np.asarray(x, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    x = np.clip(x << left, INT32_MIN, INT32_MAX)
    return rounding_divide_by_pot(srdhm(x, m), right)
