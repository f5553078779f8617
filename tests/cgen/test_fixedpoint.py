"""The numpy requantization against a plain-integer transcription of gemmlowp's definitions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinymlaas_ci.errors import TinymlError
from tinymlaas_ci.ml.cgen.fixedpoint import quantize_multiplier, requantize

INT32 = st.integers(-(2**31), 2**31 - 1)


def _srdhm(a: int, b: int) -> int:
    # gemmlowp SaturatingRoundingDoublingHighMul, with C's truncating int64 division.
    if a == b == -(2**31):
        return 2**31 - 1
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    s = ab + nudge
    q = abs(s) >> 31
    return q if s >= 0 else -q


def _rdbpot(x: int, e: int) -> int:
    mask = (1 << e) - 1
    rem = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> e) + (1 if rem > threshold else 0)


def _requantize(x: int, m: int, shift: int) -> int:
    left, right = max(shift, 0), max(-shift, 0)
    v = min(max(x << left, -(2**31)), 2**31 - 1)
    return _rdbpot(_srdhm(v, m), right)


@settings(max_examples=400, deadline=None)
@given(x=INT32, m=st.integers(0, 2**31 - 1), shift=st.integers(-31, 30))
def test_requantize_matches_the_integer_definition(x, m, shift):
    assert int(requantize(np.array([x]), m, shift)[0]) == _requantize(x, m, shift)


@settings(max_examples=300, deadline=None)
@given(real=st.floats(min_value=2.0**-31, max_value=2.0**29, allow_nan=False, allow_infinity=False))
def test_quantized_multiplier_represents_the_factor(real):
    m, shift = quantize_multiplier(real)
    assert 2**30 <= m < 2**31
    assert abs(m * 2.0 ** (shift - 31) - real) <= real * 2.0**-30


@settings(max_examples=200, deadline=None)
@given(x=st.integers(-(2**24), 2**24), real=st.floats(min_value=1e-6, max_value=0.999))
def test_requantize_rounds_to_nearest(x, real):
    # Double rounding may be off by one from the exact product, never more.
    m, shift = quantize_multiplier(real)
    got = int(requantize(np.array([x]), m, shift)[0])
    assert abs(got - x * m * 2.0 ** (shift - 31)) <= 1.0


def test_tiny_and_invalid_factors():
    assert quantize_multiplier(0.0) == (0, 0)
    assert quantize_multiplier(2.0**-40) == (0, 0)
    with pytest.raises(TinymlError, match="too large"):
        quantize_multiplier(2.0**31)
    with pytest.raises(TinymlError, match="not a finite"):
        quantize_multiplier(float("nan"))


def _edge_cases(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random int32 inputs and multipliers, the extremes, and products that fall exactly on a tie."""
    x = rng.integers(-(2**31), 2**31, n, dtype=np.int64)
    m = rng.integers(0, 2**31, n, dtype=np.int64)
    shift = rng.integers(-31, 8, n, dtype=np.int64)
    x[:8] = [-(2**31), 2**31 - 1, -1, 0, 1, -(2**30), 2**30, -(2**31) + 1]
    m[:8] = [2**31 - 1, 2**31 - 1, 2**30, 2**31 - 1, 2**30, 2**30, 2**30, 2**31 - 1]
    # x * 2^30 / 2^31 = x / 2: ties of the high multiply; then ties of the shift for small x.
    ties = slice(8, n // 2)
    x[ties] = rng.integers(-(2**12), 2**12, n // 2 - 8)
    m[ties] = 2**30
    shift[ties] = rng.integers(-6, 1, n // 2 - 8)
    return x, m, shift


@pytest.mark.parametrize("path", ["portable", "dsp-emulated", "mve-emulated", "native"])
def test_the_c_requantization_matches_numpy(tmp_path, cc, path):
    import ctypes
    import subprocess

    from tests.cgen.conftest import PATHS
    from tinymlaas_ci.ml.cgen.csource import KERNELS_H

    (tmp_path / "kernels.h").write_text(KERNELS_H)
    (tmp_path / "rq.c").write_text(
        '#include "kernels.h"\n'
        "void rq(const int32_t *x, const int32_t *m, const int32_t *s, int32_t *out, int n) {\n"
        "    int i;\n"
        "    for (i = 0; i < n; i++) out[i] = tinyml_requantize(x[i], m[i], s[i]);\n"
        "}\n"
    )
    lib = tmp_path / "rq.so"
    subprocess.run([cc, *PATHS[path], "-shared", "-fPIC", "-o", str(lib), str(tmp_path / "rq.c")], check=True)
    x, m, shift = _edge_cases(np.random.default_rng(7), 4000)
    want = requantize(x, m, shift)
    args = [np.ascontiguousarray(a, dtype=np.int32) for a in (x, m, shift)]
    out = np.zeros(len(x), np.int32)
    ptr = ctypes.POINTER(ctypes.c_int32)
    ctypes.CDLL(str(lib)).rq(*(a.ctypes.data_as(ptr) for a in (*args, out)), ctypes.c_int(len(x)))
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("fast", [0, 1])
@pytest.mark.parametrize("path", ["portable", "dsp-emulated", "mve-emulated", "native"])
def test_the_output_stage_matches_numpy(tmp_path, cc, path, fast):
    # tinyml_out_block: requantize, add the zero point, clamp; the DSP path's fast variant
    # (normalized multipliers, shifts in [-21, -1]) included, at the saturation boundaries of 2x.
    import ctypes
    import subprocess

    from tests.cgen.conftest import PATHS
    from tinymlaas_ci.ml.cgen.csource import KERNELS_H

    (tmp_path / "kernels.h").write_text(KERNELS_H)
    (tmp_path / "out.c").write_text(
        '#include "kernels.h"\n'
        "void out(const int32_t *x, const int32_t *m, const int8_t *s, int32_t zp, int32_t lo, int32_t hi,\n"
        "         int32_t fast, int32_t n, int8_t *dst, tinyml_rq_t *tab) {\n"
        "    const tinyml_oq_t q = {m, s, (int16_t)zp, (int16_t)lo, (int16_t)hi, (int16_t)fast};\n"
        "    tinyml_out_prepare(&q, n, tab);\n"
        "    tinyml_out_block(&q, tab, 0, x, n, dst);\n"
        "}\n"
    )
    lib = tmp_path / "out.so"
    subprocess.run([cc, *PATHS[path], "-shared", "-fPIC", "-o", str(lib), str(tmp_path / "out.c")], check=True)
    rng = np.random.default_rng(11)
    n = 4003  # not a multiple of 4: the packed loop and its tail
    x, _, _ = _edge_cases(rng, n)
    edges = [2**30 - 1, 2**30, -(2**30), -(2**30) - 1, 2**31 - 1, -(2**31), -1, 0]
    x[8 : 8 + len(edges)] = edges
    m = rng.integers(2**30, 2**31, n, dtype=np.int64)
    m[::97] = 0
    shift = rng.integers(-21, 0, n, dtype=np.int64) if fast else rng.integers(-31, 8, n, dtype=np.int64)
    shift[m == 0] = -1
    shift[:4] = [-1, -21, -1, -21] if fast else [0, 3, -31, 7]
    for zp, lo, hi in [(-128, -128, 127), (5, 5, 127), (100, -128, 127), (-3, -20, 90)]:
        want = np.clip(requantize(x, m, shift) + zp, lo, hi)
        args = [np.ascontiguousarray(a, dtype=t) for a, t in ((x, np.int32), (m, np.int32), (shift, np.int8))]
        got = np.zeros(n, np.int8)
        tab = (ctypes.c_int32 * (3 * n))()
        ctypes.CDLL(str(lib)).out(
            *(a.ctypes.data_as(ctypes.c_void_p) for a in args),
            *(ctypes.c_int32(v) for v in (zp, lo, hi, fast, n)),
            got.ctypes.data_as(ctypes.c_void_p),
            tab,
        )
        np.testing.assert_array_equal(got, want)


def test_the_vnni_requantization_matches_numpy(tmp_path, cc):
    # tinyml_requantize16, sixteen lanes at a time: blocks whose shifts are all <= 0 (the 32-bit
    # route), blocks that mix in left shifts (the int64 route), and the ties and extremes.
    import ctypes
    import subprocess

    from tests.cgen.conftest import PATHS
    from tinymlaas_ci.ml.cgen.csource import KERNELS_H

    (tmp_path / "kernels.h").write_text(KERNELS_H)
    (tmp_path / "rq16.c").write_text(
        '#include "kernels.h"\n'
        "int rq16(const int32_t *x, const int32_t *m, const int32_t *s, int32_t *out, int n) {\n"
        "#if defined(TINYML_USE_VNNI)\n"
        "    int i;\n"
        "    for (i = 0; i + 16 <= n; i += 16) {\n"
        "        __m512i v = tinyml_requantize16(_mm512_loadu_si512((const void *)(x + i)),\n"
        "                                        _mm512_loadu_si512((const void *)(m + i)),\n"
        "                                        _mm512_loadu_si512((const void *)(s + i)));\n"
        "        _mm512_storeu_si512((void *)(out + i), v);\n"
        "    }\n"
        "    return 1;\n"
        "#else\n"
        "    (void)x; (void)m; (void)s; (void)out; (void)n;\n"
        "    return 0;\n"
        "#endif\n"
        "}\n"
    )
    lib = tmp_path / "rq16.so"
    subprocess.run([cc, *PATHS["native"], "-shared", "-fPIC", "-o", str(lib), str(tmp_path / "rq16.c")], check=True)
    rng = np.random.default_rng(5)
    x, m, shift = _edge_cases(rng, 4096)
    # The first half's shifts made <= 0, so its blocks take the 32-bit route throughout.
    shift[: len(x) // 2] = -np.abs(shift[: len(x) // 2])
    shift[:16] = [0, -1, -31, 0, -30, -2, 0, -1, -31, 0, -17, -5, 0, 0, -1, -31]
    want = requantize(x, m, shift)
    args = [np.ascontiguousarray(a, dtype=np.int32) for a in (x, m, shift)]
    out = np.zeros(len(x), np.int32)
    ptr = ctypes.POINTER(ctypes.c_int32)
    ran = ctypes.CDLL(str(lib)).rq16(*(a.ctypes.data_as(ptr) for a in (*args, out)), ctypes.c_int(len(x)))
    if not ran:
        pytest.skip("this CPU has no AVX-512 VNNI, so the native build has no tinyml_requantize16")
    np.testing.assert_array_equal(out, want)
