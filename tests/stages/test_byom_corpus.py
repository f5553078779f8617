"""Models and datasets in the layouts people publish, each through every stage.

Each case is made at test time with the real libraries (torch, safetensors, onnx, transformers)
and served by a real repository folder or the local Hub server; accuracy is compared with the
same model evaluated directly in torch with its own preprocessing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.hubserver import FakeHub
from tests.stages.byom_corpus import (
    MEAN,
    NAMES,
    NET_PY,
    STD,
    eval_images,
    imagefolder_zip,
    load_net,
    run_pipeline,
    torch_accuracy,
    train_net,
)

torch = pytest.importorskip("torch")

PREPROCESS = {"mean": MEAN, "std": STD}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The trained net, its module, and the folder holding net.py."""
    folder = tmp_path_factory.mktemp("net")
    module = load_net(folder, name="net")
    model = train_net(module)
    x, y = eval_images()
    reference = torch_accuracy(model, x, y)
    assert reference >= 0.9, reference
    return model, module, folder, reference


def _repo(tmp_path: Path, files: dict[str, bytes]) -> Path:
    repo = tmp_path / "repo"
    for rel, data in files.items():
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return repo


def _ok(result: dict) -> dict:
    assert "failed" not in result, (result.get("failed"), result.get("error"), result["log"][-3000:])
    return result["infer"]["metrics"]


def _within_one_point(metrics: dict, reference: float) -> None:
    _report(metrics, reference)
    assert abs(metrics["accuracy"] - reference) <= 0.01, (metrics["accuracy"], reference)


def _report(metrics: dict, reference: float) -> None:
    """With TINYMLAAS_CORPUS_REPORT set, append this case's numbers (a JSON line) to that file."""
    import os

    out = os.environ.get("TINYMLAAS_CORPUS_REPORT")
    if out:
        case = os.environ.get("PYTEST_CURRENT_TEST", "?").split("::")[-1].split(" ")[0]
        row = {"case": case, "accuracy": metrics["accuracy"], "torch_reference": reference}
        with open(out, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")


def test_safetensors_with_python_architecture_labels_and_normalisation(tmp_path, trained):
    from safetensors.torch import save_file

    model, _, _, reference = trained
    buf = tmp_path / "w.safetensors"
    save_file(model.state_dict(), str(buf))
    repo = _repo(
        tmp_path,
        {
            "uploads/net/model.safetensors": buf.read_bytes(),
            "uploads/net/net.py": NET_PY.encode(),
            "uploads/data/data.zip": imagefolder_zip(),
        },
    )
    result = run_pipeline(
        tmp_path / "run",
        repo,
        {
            "model": {"upload": "uploads/net/model.safetensors", "architecture": {"python": "net.py:Net"}},
            "dataset": {"upload": "uploads/data/data.zip", "labels": NAMES, "preprocess": PREPROCESS},
            "compression": {"quantization": "static-int8", "calibration_samples": 40},
        },
    )
    metrics = _ok(result)
    assert result["fetch"]["records"]["model"]["format"] == "safetensors"
    assert "net.py" in result["fetch"]["records"]["model"]["support_files"]
    assert metrics["labels"] == NAMES and metrics["label_source"] == "dataset.labels"
    assert metrics["preprocess"]["mean"] == MEAN and metrics["preprocess"]["source"]["mean"] == "spec"
    assert metrics["preprocess"]["scale"] == pytest.approx(1 / 255)
    _within_one_point({"accuracy": metrics["baseline_accuracy"]}, reference)
    assert metrics["accuracy"] >= reference - 0.05  # static int8


def test_without_normalisation_or_label_order_the_numbers_are_wrong_and_it_says_so(tmp_path, trained):
    model, _, _, reference = trained
    pkl = tmp_path / "model.pkl"
    torch.save(model, pkl)
    repo = _repo(
        tmp_path,
        {
            "uploads/net/model.pkl": pkl.read_bytes(),
            "uploads/net/net.py": NET_PY.encode(),
            "uploads/data/data.zip": imagefolder_zip(),
        },
    )
    result = run_pipeline(
        tmp_path / "run",
        repo,
        {"model": {"upload": "uploads/net/model.pkl"}, "dataset": {"upload": "uploads/data/data.zip"}},
    )
    metrics = _ok(result)
    assert "the label order is ASSUMED" in result["log"] and "dataset.labels" in result["log"]
    assert metrics["label_source"] == "folders (sorted names, assumed)"
    assert metrics["labels"] == sorted(NAMES)
    assert metrics["accuracy"] < reference - 0.2


def test_hub_transformers_model_with_config_preprocessor_and_id2label(tmp_path):
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import save_file

    config = transformers.ResNetConfig(
        num_channels=3,
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        layer_type="basic",
        num_labels=4,
        id2label=dict(enumerate(NAMES)),
        label2id={n: i for i, n in enumerate(NAMES)},
    )
    torch.manual_seed(0)
    hf = transformers.ResNetForImageClassification(config).eval()
    folder = tmp_path / "hf"
    hf.config.save_pretrained(folder)
    save_file(hf.state_dict(), str(folder / "model.safetensors"))
    pre = {"do_normalize": True, "image_mean": MEAN, "image_std": STD, "do_rescale": True, "rescale_factor": 1 / 255}
    x, y = eval_images()
    reference = torch_accuracy(hf, x, y)
    repo = _repo(tmp_path, {"uploads/data/data.zip": imagefolder_zip()})
    with FakeHub() as hub:
        hub.add_repo(
            "org/tiny-resnet",
            files={
                "config.json": (folder / "config.json").read_bytes(),
                "preprocessor_config.json": json.dumps(pre).encode(),
                "model.safetensors": (folder / "model.safetensors").read_bytes(),
                "README.md": b"# tiny resnet\n",
            },
        )
        result = run_pipeline(
            tmp_path / "run",
            repo,
            {
                "model": {"huggingface": "org/tiny-resnet", "file": "model.safetensors"},
                "dataset": {"upload": "uploads/data/data.zip"},
            },
            env_extra={"HF_ENDPOINT": hub.endpoint},
        )
    metrics = _ok(result)
    assert set(result["fetch"]["records"]["model"]["support_files"]) == {"config.json", "preprocessor_config.json"}
    assert metrics["labels"] == NAMES and metrics["label_source"] == "config.json id2label"
    assert metrics["preprocess"]["source"]["mean"] == "model"
    _within_one_point(metrics, reference)


def test_onnx_with_external_data_nhwc_and_unsorted_graph(tmp_path, trained):
    import onnx

    model, _, _, reference = trained

    class Nhwc(torch.nn.Module):
        """What a Keras/TF conversion gives: channels-last input."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x.permute(0, 3, 1, 2))

    out = tmp_path / "export"
    out.mkdir()
    torch.onnx.export(
        Nhwc(model).eval(),
        (torch.zeros(2, 16, 16, 3),),
        str(out / "model.onnx"),
        input_names=["image"],
        dynamic_axes={"image": {0: "n"}},
        dynamo=False,
    )
    proto = onnx.load(str(out / "model.onnx"))
    nodes = list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend(reversed(nodes))  # a valid graph, stored out of order
    onnx.save_model(
        proto, str(out / "model.onnx"), save_as_external_data=True, location="model.onnx.data", size_threshold=0
    )
    assert (out / "model.onnx.data").stat().st_size > 1000
    with pytest.raises(Exception, match="topologically sorted"):
        onnx.checker.check_model(onnx.load(str(out / "model.onnx")))
    files = {"model.onnx": (out / "model.onnx").read_bytes(), "model.onnx.data": (out / "model.onnx.data").read_bytes()}
    spec = {
        "dataset": {"upload": "uploads/data/data.zip", "labels": NAMES, "preprocess": PREPROCESS},
        "compression": {"quantization": "dynamic-int8"},
    }
    repo = _repo(
        tmp_path, {**{f"uploads/m/{k}": v for k, v in files.items()}, "uploads/data/data.zip": imagefolder_zip()}
    )
    upload = run_pipeline(tmp_path / "run-upload", repo, {"model": {"upload": "uploads/m/model.onnx"}, **spec})
    metrics = _ok(upload)
    assert upload["fetch"]["records"]["model"]["support_files"] == ["model.onnx.data"]
    assert metrics["input_layout"] == "nhwc"
    _within_one_point({"accuracy": metrics["baseline_accuracy"]}, reference)
    with FakeHub() as hub:
        hub.add_repo("org/onnx-model", files={f"onnx/{k}": v for k, v in files.items()})
        from_hub = run_pipeline(
            tmp_path / "run-hub",
            repo,
            {"model": {"huggingface": "org/onnx-model", "file": "onnx/model.onnx"}, **spec},
            env_extra={"HF_ENDPOINT": hub.endpoint},
        )
    metrics = _ok(from_hub)
    assert from_hub["fetch"]["records"]["model"]["support_files"] == ["model.onnx.data"]
    _within_one_point({"accuracy": metrics["baseline_accuracy"]}, reference)


def test_exported_program_compiles_and_infers(tmp_path, trained):
    model, _, _, reference = trained
    pt2 = tmp_path / "model.pt2"
    torch.export.save(
        torch.export.export(model, (torch.zeros(2, 3, 16, 16),), dynamic_shapes=({0: torch.export.Dim("batch")},)),
        str(pt2),
    )
    repo = _repo(tmp_path, {"uploads/m/model.pt2": pt2.read_bytes(), "uploads/data/data.zip": imagefolder_zip()})
    result = run_pipeline(
        tmp_path / "run",
        repo,
        {
            "model": {"upload": "uploads/m/model.pt2"},
            "dataset": {"upload": "uploads/data/data.zip", "labels": NAMES, "preprocess": PREPROCESS},
        },
    )
    metrics = _ok(result)
    assert result["compile"]["records"]["source_format"] == "exported-program"
    _within_one_point(metrics, reference)


def test_hub_pickle_with_its_modeling_file(tmp_path, trained):
    _, _, folder, reference = trained
    # A pickle of a class from "modeling.py", as Hub repositories publish custom code.
    code = folder / "hubcode"
    code.mkdir()
    (code / "modeling.py").write_text(NET_PY)
    script = textwrap.dedent(
        f"""
        import sys, torch
        sys.path.insert(0, {str(code)!r})
        import modeling
        sys.path.insert(0, {str(ROOT)!r})
        from tests.stages.byom_corpus import train_net
        torch.save(train_net(modeling), {str(code / "model.pkl")!r})
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    repo = _repo(tmp_path, {"uploads/data/data.zip": imagefolder_zip()})
    with FakeHub() as hub:
        hub.add_repo(
            "org/custom",
            files={"model.pkl": (code / "model.pkl").read_bytes(), "modeling.py": NET_PY.encode()},
        )
        result = run_pipeline(
            tmp_path / "run",
            repo,
            {
                "model": {"huggingface": "org/custom", "file": "model.pkl"},
                "dataset": {"upload": "uploads/data/data.zip", "labels": NAMES, "preprocess": PREPROCESS},
            },
            env_extra={"HF_ENDPOINT": hub.endpoint},
        )
    metrics = _ok(result)
    artifacts = result["fetch"]["artifacts"]
    assert "model-file:modeling.py" in artifacts  # so its digest is in the later cache keys
    _within_one_point(metrics, reference)


def test_pickle_saved_from_a_training_script_main_with_model_code(tmp_path):
    upload = tmp_path / "script"
    upload.mkdir()
    train_py = NET_PY + textwrap.dedent(
        f"""

        if __name__ == "__main__":
            import sys
            sys.path.insert(0, {str(ROOT)!r})
            from tests.stages import byom_corpus
            torch.save(byom_corpus.train_net(sys.modules[__name__]), "model.pkl")
        """
    )
    (upload / "train.py").write_text(train_py)
    subprocess.run([sys.executable, "train.py"], cwd=upload, check=True, timeout=300)
    repo = _repo(
        tmp_path,
        {
            "uploads/m/model.pkl": (upload / "model.pkl").read_bytes(),
            "uploads/m/train.py": train_py.encode(),
            "uploads/data/data.zip": imagefolder_zip(),
        },
    )
    dataset = {"upload": "uploads/data/data.zip", "labels": NAMES, "preprocess": PREPROCESS}
    failed = run_pipeline(tmp_path / "run-1", repo, {"model": {"upload": "uploads/m/model.pkl"}, "dataset": dataset})
    assert failed["failed"] == "compile"
    assert "model.code" in failed["error"]["hint"] and "train.py" in failed["error"]["hint"]
    result = run_pipeline(
        tmp_path / "run-2", repo, {"model": {"upload": "uploads/m/model.pkl", "code": "train.py"}, "dataset": dataset}
    )
    metrics = _ok(result)
    assert metrics["accuracy"] >= 0.9


def test_csv_npz_and_tinymlaas_bin_datasets(tmp_path):
    """Tabular/sensor data: an MLP on 12 features, as CSV (split column), .npz and .bin tensors."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, size=(3, 12))

    def split(n, seed):
        r = np.random.default_rng(seed)
        y = np.arange(n) % 3
        return (centres[y] + r.normal(0, 1, size=(n, 12))).astype(np.float32), y

    (xtr, ytr), (xte, yte) = split(120, 1), split(45, 2)
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    opt = torch.optim.Adam(mlp.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(mlp(torch.from_numpy(xtr)), torch.from_numpy(ytr)).backward()
        opt.step()
    mlp.eval()
    with torch.no_grad():
        reference = float((mlp(torch.from_numpy(xte)).argmax(1).numpy() == yte).mean())
    scripted = tmp_path / "mlp.pt"
    torch.jit.save(torch.jit.script(mlp), str(scripted))
    header = ",".join([f"f{i}" for i in range(12)] + ["label", "split"])
    rows = [
        ",".join([*(f"{v:.6f}" for v in x), str(c), s])
        for xs, ys, s in ((xtr, ytr, "train"), (xte, yte, "test"))
        for x, c in zip(xs, ys, strict=True)
    ]
    csv = (header + "\n" + "\n".join(rows) + "\n").encode()
    import io
    import zipfile

    npz = io.BytesIO()
    np.savez(npz, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte, labels=np.asarray(["a", "b", "c"]))
    bins = io.BytesIO()
    with zipfile.ZipFile(bins, "w") as zf:
        for i, (x, c) in enumerate(zip(xte, yte, strict=True)):
            zf.writestr(f"test/{c}/{i}.bin", x.astype("<f4").tobytes())
    repo = _repo(
        tmp_path,
        {
            "uploads/m/mlp.pt": scripted.read_bytes(),
            "uploads/d/sensors.csv": csv,
            "uploads/d/sensors.npz": npz.getvalue(),
            "uploads/d/tensors.zip": bins.getvalue(),
        },
    )
    model = {"upload": "uploads/m/mlp.pt"}
    for name, dataset in (
        ("csv", {"upload": "uploads/d/sensors.csv", "split_column": "split"}),
        ("npz", {"upload": "uploads/d/sensors.npz"}),
        ("bin", {"upload": "uploads/d/tensors.zip"}),
    ):
        spec = {"model": {**model, "input_shape": [12]} if name == "bin" else model, "dataset": dataset}
        result = run_pipeline(tmp_path / f"run-{name}", repo, spec)
        metrics = _ok(result)
        _within_one_point(metrics, reference)
        assert (
            result["fetch"]["records"]["dataset"]["format"]
            == {"csv": "csv", "npz": "numpy", "bin": "imagefolder"}[name]
        )
    assert metrics["preprocess"]["scale"] == 1.0  # float data is not divided by 255


def test_preflight_fails_in_seconds_naming_both_sides(tmp_path, trained):
    model, _, _, _ = trained
    pkl = tmp_path / "model.pkl"
    torch.save(model, pkl)

    class Broken(torch.nn.Module):
        def forward(self, x):
            return torch.full((x.shape[0], 4), float("nan"))

    broken = torch.jit.script(Broken())
    torch.jit.save(broken, str(tmp_path / "nan.pt"))
    repo = _repo(
        tmp_path,
        {
            "uploads/net/model.pkl": pkl.read_bytes(),
            "uploads/net/net.py": NET_PY.encode(),
            "uploads/net/nan.pt": (tmp_path / "nan.pt").read_bytes(),
            "uploads/data/data.zip": imagefolder_zip(),
            "uploads/data/five.zip": imagefolder_zip(["a", "b", "c", "d"], counts=(("test", 8),)),
        },
    )
    shape = run_pipeline(
        tmp_path / "r1",
        repo,
        {
            "model": {"upload": "uploads/net/model.pkl", "input_shape": [3, 32, 32]},
            "dataset": {"upload": "uploads/data/data.zip"},
            "compression": {"quantization": "static-int8"},
        },
    )
    assert shape["failed"] == "compile"
    assert "[3, 16, 16]" in shape["error"]["message"] and "[3, 32, 32]" in shape["error"]["message"]
    assert "resize: [32, 32]" in shape["error"]["hint"]
    assert "calibrating" not in shape["log"]  # refused before anything slow
    labels = run_pipeline(
        tmp_path / "r2",
        repo,
        {
            "model": {"upload": "uploads/net/model.pkl"},
            "dataset": {"upload": "uploads/data/data.zip", "labels": ["zero", "one", "two", "three", "four"]},
        },
    )
    assert labels["failed"] == "compile" and "4 outputs, but there are 5 labels" in labels["error"]["message"]
    nan = run_pipeline(
        tmp_path / "r3",
        repo,
        {"model": {"upload": "uploads/net/nan.pt"}, "dataset": {"upload": "uploads/data/data.zip"}},
    )
    assert nan["failed"] == "compile" and "NaN or Inf" in nan["error"]["message"]


def test_torchvision_architecture(tmp_path, trained):
    """torchvision's builders, in a process where torchvision imports (see torchvision_site)."""
    site = torchvision_site(tmp_path)
    from safetensors.torch import save_file

    script = textwrap.dedent(
        f"""
        import torch, torchvision
        from safetensors.torch import save_file
        m = torchvision.models.get_model("mobilenet_v3_small", weights=None, num_classes=4).eval()
        save_file(m.state_dict(), {str(tmp_path / "tv.safetensors")!r})
        """
    )
    env = _site_env(site)
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=300)
    del save_file
    repo = _repo(
        tmp_path,
        {
            "uploads/m/model.safetensors": (tmp_path / "tv.safetensors").read_bytes(),
            "uploads/d/d.zip": imagefolder_zip(),
        },
    )
    result = run_pipeline(
        tmp_path / "run",
        repo,
        {
            "model": {
                "upload": "uploads/m/model.safetensors",
                "architecture": {"torchvision": "mobilenet_v3_small", "kwargs": {"num_classes": 4}},
            },
            "dataset": {"upload": "uploads/d/d.zip", "labels": NAMES, "preprocess": {**PREPROCESS, "resize": [32, 32]}},
        },
        env_extra={"PYTHONPATH": env["PYTHONPATH"]},
    )
    metrics = _ok(result)
    assert metrics["samples"] == 60 and result["compile"]["records"]["tools"].get("torchvision")


def torchvision_site(tmp_path: Path) -> Path:
    """A folder from which ``import torchvision`` works next to this torch.

    A torchvision wheel built against another torch cannot register its C++ operators here
    ("operator torchvision::nms does not exist", raised by the meta-kernel decorators); its
    model builders are pure Python. The copy guards only those decorators, so the builders run.
    """
    import importlib.util
    import os

    probe = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True, text=True, check=False)
    if probe.returncode == 0:
        return Path()
    spec = None
    for entry in os.environ.get("TINYMLAAS_TEST_SITE", "").split(os.pathsep) + sys.path:
        if entry and (Path(entry) / "torchvision" / "__init__.py").is_file():
            spec = Path(entry)
            break
    if spec is None and importlib.util.find_spec("torchvision") is None:
        pytest.skip(
            "torchvision is not installed (the torchvision extra); set TINYMLAAS_TEST_SITE to a folder holding it"
        )
    src = spec / "torchvision" if spec else Path(importlib.util.find_spec("torchvision").origin).parent
    site = tmp_path / "site"
    shutil.copytree(src, site / "torchvision")
    meta = site / "torchvision" / "_meta_registrations.py"
    text = meta.read_text()
    meta.write_text(
        text.replace(
            "        if torchvision.extension._has_ops():\n",
            "        if torchvision.extension._has_ops() and hasattr(torch.ops.torchvision, op_name):\n",
        ).replace("@torch.library.register_fake(", "@_guarded_fake(")
        + "\n"
    )
    text = meta.read_text()
    meta.write_text(
        text.replace(
            "import torchvision.extension  # noqa: F401\n",
            "import torchvision.extension  # noqa: F401\n\n\n"
            "def _guarded_fake(name):\n"
            "    def wrap(fn):\n"
            "        try:\n"
            "            return torch.library.register_fake(name)(fn)\n"
            "        except RuntimeError:\n"
            "            return fn\n"
            "    return wrap\n",
        )
    )
    env = _site_env(site)
    probe = subprocess.run(
        [sys.executable, "-c", "import torchvision.models"], capture_output=True, text=True, env=env, check=False
    )
    if probe.returncode != 0:
        pytest.skip(
            f"torchvision does not import next to this torch even with its operators guarded: {probe.stderr[-300:]}"
        )
    return site


def _site_env(site: Path) -> dict:
    import os

    env = dict(os.environ)
    extra = os.environ.get("TINYMLAAS_TEST_SITE", "")
    parts = (str(site), str(ROOT), *extra.split(os.pathsep), env.get("PYTHONPATH", ""))
    env["PYTHONPATH"] = os.pathsep.join(p for p in parts if p and p != ".")
    return env


def test_hub_timm_repo_from_its_config_json(tmp_path):
    """A timm repository as push_to_hub writes it: model.safetensors + config.json with
    architecture, num_classes, label_names and pretrained_cfg (mean, std, input_size)."""
    site = torchvision_site(tmp_path)
    env = _site_env(site)
    probe = subprocess.run([sys.executable, "-c", "import timm"], env=env, capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"timm (the timm extra) does not import here: {probe.stderr.strip().splitlines()[-1:]}")
    x, y = eval_images()
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(
        f"""
        import json, numpy as np, timm, torch
        from safetensors.torch import save_file
        torch.manual_seed(0)
        m = timm.create_model("test_resnet", pretrained=False, num_classes=4).eval()
        save_file(m.state_dict(), {str(tmp_path / "model.safetensors")!r})
        cfg = {{"architecture": "test_resnet", "num_classes": 4, "label_names": {NAMES!r},
               "pretrained_cfg": {{"input_size": [3, 32, 32], "mean": {MEAN!r}, "std": {STD!r}}}}}
        open({str(tmp_path / "config.json")!r}, "w").write(json.dumps(cfg))
        # its own preprocessing: resize (bilinear), then ToTensor + Normalize
        x = torch.from_numpy(np.load({str(tmp_path / "x.npy")!r}).astype("float32") / 255)
        x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
        x = (x - torch.tensor({MEAN!r})[None, :, None, None]) / torch.tensor({STD!r})[None, :, None, None]
        with torch.no_grad():
            pred = m(x).argmax(1).numpy()
        np.save({str(tmp_path / "pred.npy")!r}, pred)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=600)
    reference = float((np.load(tmp_path / "pred.npy") == y).mean())
    repo = _repo(tmp_path, {"uploads/d/d.zip": imagefolder_zip()})
    with FakeHub() as hub:
        hub.add_repo(
            "timm/test_resnet.tiny",
            files={
                "model.safetensors": (tmp_path / "model.safetensors").read_bytes(),
                "config.json": (tmp_path / "config.json").read_bytes(),
            },
        )
        result = run_pipeline(
            tmp_path / "run",
            repo,
            {
                "model": {"huggingface": "timm/test_resnet.tiny", "file": "model.safetensors"},
                "dataset": {"upload": "uploads/d/d.zip"},
            },
            env_extra={"HF_ENDPOINT": hub.endpoint, "PYTHONPATH": env["PYTHONPATH"]},
        )
    metrics = _ok(result)
    assert metrics["label_source"] == "config.json label_names" and metrics["labels"] == NAMES
    assert metrics["preprocess"]["resize"] == [32, 32] and metrics["preprocess"]["source"]["resize"] == "model"
    assert result["compile"]["records"]["input_shape"] == [3, 32, 32]
    _within_one_point(metrics, reference)
