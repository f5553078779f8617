"""A spec that fails validation still has its references checked: every problem at once."""

from __future__ import annotations

from tinymlaas_ci.spec.repo import load_repo


def test_invalid_spec_reports_bad_references_too(tmp_path):
    (tmp_path / "devices").mkdir()
    (tmp_path / "devices/host.yaml").write_text("schema: 1\nkind: local\n")
    (tmp_path / "runs/p").mkdir(parents=True)
    (tmp_path / "runs/p/r.yaml").write_text(
        "schema: 1\n"
        "model: {huggingface: acme/kws, file: model.onnx}\n"
        "dataset: {upload: uploads/nope.zip}\n"
        "compresion: {quantization: int8}\n"
        "device: hots\n"
        "pipeline: fast\n"
    )
    problems = [p.format() for p in load_repo(tmp_path).problems]
    assert problems == [
        "runs/p/r.yaml:3:19: upload 'uploads/nope.zip' does not exist "
        "(commit the file, or fix the path: it is relative to the repository root)",
        "runs/p/r.yaml:4:1: unknown key 'compresion' (did you mean 'compression'?)",
        "runs/p/r.yaml:5:9: device 'hots' is not defined in devices/ (did you mean 'host'?)",
        "runs/p/r.yaml:6:11: pipeline 'fast' is not defined in pipelines/ (known pipelines: default)",
    ]
