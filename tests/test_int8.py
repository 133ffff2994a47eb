"""The int8 matmul kernels (nn/int8_matmul.cpp, ACESTEP_GGML_INT8) on their own: every tail of the
tiles (rows % 6, outputs % 64, inputs % 64), exact where int8 holds the operands exactly, close on
Gaussian data, NaN where the float product is NaN.  The models' parity with int8 matmuls is in
each model's test file (test_*_int8_*)."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import fresh_seed

import acestep_ggml
from acestep_ggml import _core

SEED = fresh_seed()
# (rows, inputs, outputs): one of each tail; 6-row tiles, 64-output groups, inputs padded to 64.
SHAPES = [(1, 1, 1), (5, 3, 17), (6, 64, 64), (7, 100, 80), (13, 65, 129), (97, 2048, 200), (200, 130, 1000)]


def _run_or_refuse(w, x, n_threads=2):
    if not _core.int8_supported():  # this CPU has no AVX-512 VNNI: refused, never wrong
        with pytest.raises(acestep_ggml.DeviceError, match="AVX-512 VNNI"):
            _core.int8_matmul(w, x, n_threads)
        return None
    return _core.int8_matmul(w, x, n_threads)


@pytest.mark.parametrize("rows,inputs,outputs", SHAPES)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_exact_where_int8_holds_the_operands(rows, inputs, outputs, n_threads):
    # Whole numbers in [-127, 127] with a 127 in every row: both scales are exactly 1, so each
    # product is an integer sum, exact in int32 and, for these random signs, far below float32's 2^24:
    # the result is exact.
    rng = np.random.default_rng(SEED + rows)
    w = rng.integers(-127, 128, (outputs, inputs)).astype(np.float32)
    x = rng.integers(-127, 128, (rows, inputs)).astype(np.float32)
    w[:, rng.integers(0, inputs)] = 127
    x[:, rng.integers(0, inputs)] = -127
    y = _run_or_refuse(w, x, n_threads)
    if y is not None:
        np.testing.assert_array_equal(y, x.astype(np.float64) @ w.T.astype(np.float64), err_msg=f"seed {SEED}")


@pytest.mark.parametrize("rows,inputs,outputs", SHAPES)
def test_close_on_gaussian_rows(rows, inputs, outputs):
    rng = np.random.default_rng(SEED + 7 * rows)
    w = rng.standard_normal((outputs, inputs), dtype=np.float32)
    x = rng.standard_normal((rows, inputs), dtype=np.float32) * rng.uniform(0.01, 100, (rows, 1)).astype(np.float32)
    y = _run_or_refuse(w, x)
    if y is None:
        return
    ref = x.astype(np.float64) @ w.T.astype(np.float64)
    rel = np.linalg.norm(y - ref) / np.linalg.norm(ref)
    # Two roundings to 1/127 of a row's largest magnitude (about 3.5 sigma for 2048 Gaussian
    # values): about 0.8 % relative each, 1.2 % together; measured at most 1.2 %.  Rows of any
    # scale (0.01 .. 100) come out alike: the scales are per row and per output channel.
    assert rel <= 0.02, f"seed {SEED}: rel {rel:.3e}"
    per_row = np.linalg.norm(y - ref, axis=1) / np.linalg.norm(ref, axis=1)
    assert per_row.max() <= 0.05, f"seed {SEED}: worst row {per_row.max():.3e}"


def test_non_finite_inputs_and_zero_rows():
    rng = np.random.default_rng(SEED)
    w = rng.standard_normal((70, 40), dtype=np.float32)
    x = rng.standard_normal((8, 40), dtype=np.float32)
    x[1, 3] = np.nan
    x[2, 39] = np.inf
    x[3] = 0
    w[5, 7] = np.nan  # a non-finite weight poisons its output channel, as in a float product
    y = _run_or_refuse(w, x)
    if y is None:
        return
    assert np.isnan(y[1]).all() and np.isnan(y[2]).all()
    np.testing.assert_array_equal(y[3, np.arange(70) != 5], 0)
    assert np.isnan(y[:, 5]).all()
    ok = np.delete(np.delete(y, [1, 2], axis=0), 5, axis=1)
    assert np.isfinite(ok).all()


def test_bad_shapes_are_input_errors():
    w = np.ones((4, 8), np.float32)
    for x in (np.ones((3, 7), np.float32), np.ones((0, 8), np.float32)):
        with pytest.raises((acestep_ggml.InputError, acestep_ggml.DeviceError)):
            _core.int8_matmul(w, x)
