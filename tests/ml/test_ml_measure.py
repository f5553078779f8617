"""Inference sanity: latency statistics, accuracy bookkeeping, device facts."""

from __future__ import annotations

import numpy as np
import pytest

from tinymlaas_ci.errors import TinymlError
from tinymlaas_ci.ml import measure
from tinymlaas_ci.ml.runtime import load_session
from tinymlaas_ci.results.models import DeviceRecord, Latency, RuntimeRecord
from tinymlaas_ci.spec.models import LocalDevice


@pytest.fixture(scope="module")
def session(compiled):
    return load_session(compiled("static-int8").deployed, threads=1)


def test_latency_statistics_are_consistent(session, digits_data):
    lat = measure.measure_latency(session.run, digits_data["x_test"][:1], warmup=2, min_iterations=20, min_seconds=0)
    Latency.model_validate(lat)
    assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert lat["min"] <= lat["mean"] <= lat["max"]
    assert lat["iterations"] >= 20 and lat["warmup"] == 2
    assert lat["seconds"] >= lat["iterations"] * lat["min"] / 1000


def test_latency_runs_at_least_min_seconds(session, digits_data):
    lat = measure.measure_latency(session.run, digits_data["x_test"][:4], warmup=0, min_iterations=1, min_seconds=0.2)
    assert lat["seconds"] >= 0.2
    assert lat["iterations"] > 1


def test_accuracy_is_the_confusion_trace(session, digits_data):
    x, y = measure.eval_split(digits_data, "test")
    # An odd batch size checks that the last, short batch is counted too.
    ev = measure.evaluate(session.run, x, y, num_classes=10, batch_size=37)
    cm = np.array(ev["confusion_matrix"])
    assert cm.shape == (10, 10)
    assert cm.sum() == ev["samples"] == len(y)
    assert ev["accuracy"] == np.trace(cm) / ev["samples"]
    assert (cm.sum(axis=1) == np.bincount(y, minlength=10)).all()  # rows are the true labels
    assert ev["accuracy"] <= ev["top5_accuracy"] <= 1.0


def test_no_top5_with_five_classes_or_fewer():
    x = np.eye(4, dtype=np.float32)
    ev = measure.evaluate(lambda b: b, x, np.arange(4), num_classes=4)
    assert ev["accuracy"] == 1.0 and ev["top5_accuracy"] is None


def test_empty_or_missing_split_is_a_clear_error(digits_data):
    data = dict(digits_data, x_test=np.zeros((0, 1, 8, 8), np.float32), y_test=np.zeros(0, np.int64))
    with pytest.raises(TinymlError, match="no samples in split 'test'.*train, val"):
        measure.eval_split(data, "test")
    with pytest.raises(TinymlError, match="split 'holdout'"):
        measure.eval_split(digits_data, "holdout")


def test_wrong_number_of_classes_is_reported(session, digits_data):
    with pytest.raises(TinymlError, match="returns shape .*4 classes"):
        measure.evaluate(session.run, digits_data["x_test"][:8], digits_data["y_test"][:8] % 4, num_classes=4)


def test_percentile_interpolates():
    assert measure.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert measure.percentile([5.0], 99) == 5.0


def test_cpu_info_keeps_relevant_flags(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu sse4_2 avx2 fma avx512f avx512_vnni amx_int8 pni\n"
    )
    info = measure.cpu_info(cpuinfo)
    assert info["cpu_model"] == "Test CPU"
    assert info["isa_flags"] == ["amx_int8", "avx2", "avx512_vnni", "avx512f", "fma", "sse4_2"]
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd evtstrm asimddp\n")
    assert measure.cpu_info(arm)["isa_flags"] == ["asimd", "asimddp"]


def test_device_and_runtime_records_fit_the_result_model(session):
    DeviceRecord.model_validate(measure.device_record(LocalDevice(schema=1, name="host", kind="local", arch="amd64")))
    RuntimeRecord.model_validate(session.record())
    assert session.record()["threads"] == 1
    assert measure.peak_memory_mb() > 10
