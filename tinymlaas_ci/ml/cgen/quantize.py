"""Quantize an fp32 ONNX model into exactly the QDQ form the C generator reads.

ONNX Runtime's ``quantize_static`` with ``QuantFormat.QDQ``, int8 activations
(``ActivationSymmetric: False``, so each activation has its own zero point), int8 weights that
are symmetric (``WeightSymmetric: True``, zero point 0) and per output channel. This is the
same form the compile stage's ``static-int8`` writes with ``per_channel: true``.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from tinymlaas_ci.errors import TinymlError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = ["quantize_qdq"]

log = logging.getLogger(__name__)


def quantize_qdq(src: str | os.PathLike, dst: str | os.PathLike, calibration: np.ndarray) -> None:
    """Write the static-int8 QDQ model of the fp32 ONNX model ``src`` to ``dst``.

    ``calibration`` is a float32 batch ``(N, *input_shape)`` of representative inputs (a few
    hundred samples of the train split); activation ranges are their min/max.
    """
    import numpy as np
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calibration = np.ascontiguousarray(calibration, dtype=np.float32)
    if not len(calibration):
        raise TinymlError("static int8 quantization needs calibration inputs", hint="give a train or val split")
    src, dst = Path(src), Path(dst)
    proto = onnx.load(str(src), load_external_data=False)
    inits = {i.name for i in proto.graph.initializer}
    name = next(i.name for i in proto.graph.input if i.name not in inits)

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._i = 0

        def get_next(self):
            if self._i >= len(calibration):
                return None
            self._i += 1
            return {name: calibration[self._i - 1 : self._i]}

    root = logging.getLogger()
    level = root.level
    # ORT logs pre-processing advice on the root logger; pre-processing is done here.
    root.setLevel(max(level, logging.ERROR))
    try:
        with tempfile.TemporaryDirectory(prefix="tinymlaas-cgen-q-") as tmp:
            prepared = Path(tmp) / "prepared.onnx"
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
            except Exception as exc:
                log.info("quantization pre-processing skipped: %s", exc)
                prepared = src
            quantize_static(
                str(prepared),
                str(dst),
                _Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )
    except TinymlError:
        raise
    except Exception as exc:
        raise TinymlError(
            f"ONNX Runtime could not quantize {src.name} to static int8: {type(exc).__name__}: {exc}",
            hint="check that the model runs in ONNX Runtime in fp32 first",
        ) from exc
    finally:
        root.setLevel(level)
