"""Hostile model uploads for the integrity tests: a pickled ``nn.Module`` whose unpickling (in
the compile stage, where the model's own code runs) tries to change what the run is graded on.

The model always answers class 0. Its ``__setstate__`` rewrites the fetch stage's
``dataset.npz`` so that every label is 0 — which would make it score accuracy 1.0 — and, in
the ``forge-record`` variant, also rewrites ``fetch/outputs.json`` with the forged file's
sha256, so that a check against the on-disk record alone would pass; in the ``compile``
variant it leaves fetch alone and makes the compile stage itself record a forged dataset in
its own folder as the evaluation data; in the ``peek`` variant it changes nothing but reads the
test split and memorises the answers (a lookup by nearest input), which would score 1.0. It then
carries on, so
the run goes on as if nothing happened; what it managed is written to ``compile/tamper.txt``.
"""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path

EVIL_MODULE = textwrap.dedent(
    '''
    import hashlib, io, json, os, sys
    from pathlib import Path

    import torch
    from torch import nn

    FORGE_RECORD = {forge_record!r}


    def _tamper():
        volume = Path(sys.argv[1])  # python -m tinymlaas_ci.stages.compile VOLUME --name compile
        data = volume / "fetch" / "dataset.npz"
        notes = []
        try:
            import numpy as np

            with np.load(data) as z:
                arrays = {{k: z[k] for k in z.files}}
            for key in list(arrays):
                if key.startswith("y_"):
                    arrays[key] = np.zeros_like(arrays[key])
            buf = io.BytesIO()
            np.savez(buf, **arrays)
            forged = buf.getvalue()
        except Exception as exc:  # noqa: BLE001
            # Unreadable (withheld from this stage): still try to overwrite it with anything.
            notes.append(f"read failed: {{exc!r}}")
            forged = b"not a dataset"
        if forged is not None:
            done = False
            for how in ("in place", "chmod", "replace"):
                try:
                    if how == "in place":
                        with open(data, "wb") as fh:
                            fh.write(forged)
                    elif how == "chmod":
                        os.chmod(data, 0o666)
                        with open(data, "wb") as fh:
                            fh.write(forged)
                    else:
                        tmp = data.with_name(".forged")
                        tmp.write_bytes(forged)
                        os.replace(tmp, data)
                    notes.append(f"{{how}}: written")
                    done = True
                    break
                except OSError as exc:
                    notes.append(f"{{how}}: refused ({{exc.strerror}})")
            if done and FORGE_RECORD:
                try:
                    record = volume / "fetch" / "outputs.json"
                    outputs = json.loads(record.read_text())
                    art = outputs["artifacts"]["dataset"]
                    art["sha256"] = hashlib.sha256(forged).hexdigest()
                    art["bytes"] = len(forged)
                    record.write_text(json.dumps(outputs))
                    notes.append("record: forged")
                except OSError as exc:
                    notes.append(f"record: refused ({{exc.strerror}})")
        try:
            (volume / "compile" / "tamper.txt").write_text("\\n".join(notes))
        except OSError:
            pass


    def _forge_own_record():
        """Leave fetch alone; instead make this compile stage claim that the evaluation data is a
        forged copy in its own folder (which it may write), by patching what it records."""
        import numpy as np
        from tinymlaas_ci.stages import contract

        volume = Path(sys.argv[1])
        try:
            with np.load(volume / "fetch" / "dataset.npz") as z:
                arrays = {{k: (np.zeros_like(z[k]) if k.startswith("y_") else z[k]) for k in z.files}}
        except Exception:  # noqa: BLE001 - withheld from compile: forge from what compile may read
            with np.load(volume / "fetch" / "fit.npz") as z:
                arrays = {{k: z[k] for k in z.files}}
            arrays["x_test"], arrays["y_test"] = arrays["x_train"][:50], np.zeros(50, dtype=arrays["y_train"].dtype)
        forged = volume / "compile" / "forged.npz"
        np.savez(forged, **arrays)
        original = contract.StageContext.outputs

        def outputs(self):
            out = original(self)
            art = self.add_artifact("dataset", forged)
            out.artifacts["dataset"] = art
            out.records["dataset"] = art.model_dump()
            return out

        contract.StageContext.outputs = outputs
        (volume / "compile" / "tamper.txt").write_text("own record: forged")


    def _peek():
        """Read the evaluation split (from fetch's files, or the upload in the repository) and
        return it as (inputs, labels) to memorise, or None; what was tried goes to tamper.txt."""
        import zipfile

        import numpy as np

        volume, notes, found = Path(sys.argv[1]), [], None
        for where in (volume / "fetch" / "dataset.npz", volume / "fetch" / "fit.npz"):
            try:
                with np.load(where) as z:
                    n = len(z["y_test"])
                    notes.append(f"{{where.name}}: {{n}} test labels")
                    if n and found is None:
                        found = (z["x_test"].reshape(n, -1).astype("float32") / 255.0, z["y_test"].astype("int64"))
            except Exception as exc:  # noqa: BLE001
                notes.append(f"{{where.name}}: unreadable ({{type(exc).__name__}})")
        raw = volume / "fetch" / "dataset"
        notes.append(f"fetch/dataset/: {{sum(1 for p in raw.rglob('*') if p.is_file()) if raw.is_dir() else 0}} files")
        upload = Path.cwd() / "uploads" / "digits" / "dataset.zip"  # the repository is the working directory
        try:
            with zipfile.ZipFile(upload) as zf:
                notes.append(f"upload: {{len([n for n in zf.namelist() if '/test/' in n])}} test files")
        except Exception as exc:  # noqa: BLE001
            notes.append(f"upload: unreadable ({{type(exc).__name__}})")
        (volume / "compile" / "tamper.txt").write_text("\\n".join(notes))
        return found


    class ConstantNet(nn.Module):
        """Always class 0 — unless, in the ``peek`` variant, it could read the test split: then it
        answers each test input with its label (nearest memorised input)."""

        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 10)
            with torch.no_grad():
                self.fc.weight.zero_()
                self.fc.bias.copy_(torch.tensor([5.0] + [0.0] * 9))
            self.memory = None

        def forward(self, x):
            if self.memory is None:
                return self.fc(x.flatten(1))
            xs, onehot = self.memory
            distance = ((x.flatten(1)[:, None, :] - xs[None, :, :]) ** 2).sum(-1)
            return onehot[distance.argmin(1)] * 10.0

        def __setstate__(self, state):
            super().__setstate__(state)
            if FORGE_RECORD == "compile":
                _forge_own_record()
            elif FORGE_RECORD == "peek":
                found = _peek()
                if found is not None:
                    xs, ys = found
                    self.memory = (torch.from_numpy(xs), torch.nn.functional.one_hot(torch.from_numpy(ys), 10).float())
            else:
                _tamper()
    '''
)

SPEC = textwrap.dedent(
    """\
    schema: 1
    description: A model that tries to change the data it is graded on.
    model: {upload: uploads/evil/model.pkl, format: pytorch, input_shape: [1, 8, 8]}
    dataset: {upload: uploads/digits/dataset.zip, split: test}
    compression: {quantization: none}
    device: host
    runtime: onnxruntime
    measure: {warmup: 1, min_iterations: 5, min_seconds: 0.01, batch_size: 1}
    """
)

RUN = "evil/steal"


def add_hostile_run(root: Path, *, forge_record: bool | str = False) -> str:
    """Write the hostile model (``uploads/evil/``) and its run spec into the repository ``root``;
    returns the run id. ``forge_record``: False rewrites fetch's dataset only, True also fetch's
    ``outputs.json``, ``"compile"`` leaves fetch alone and makes the compile stage record a
    forged dataset of its own as the one to evaluate on, ``"peek"`` reads the test split and
    memorises its answers (no file is changed)."""
    import torch

    folder = root / "uploads" / "evil"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "evilnet.py").write_text(EVIL_MODULE.format(forge_record=forge_record))
    sys.path.insert(0, str(folder))
    try:
        sys.modules.pop("evilnet", None)
        module = importlib.import_module("evilnet")
        torch.save(module.ConstantNet(), folder / "model.pkl")
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("evilnet", None)
    (root / "runs" / "evil").mkdir(parents=True, exist_ok=True)
    (root / "runs" / "evil" / "steal.yaml").write_text(SPEC)
    return RUN
