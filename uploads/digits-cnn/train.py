"""Train the example digits CNN and write the example's committed model and dataset.

    python uploads/digits-cnn/train.py

Writes ``uploads/digits-cnn/model.pkl`` (a pickled ``tinymlaas_ci.ml.zoo.DigitsCNN``) and
``uploads/digits/dataset.zip`` (ImageFolder ``{train,val,test}/<label>/<index>.png``, 8-bit
grayscale 8x8 PNGs). scikit-learn's ``load_digits`` needs no download. The split is 60/20/20,
stratified, seeded; training is on CPU and deterministic, and re-running writes identical files.

The model is trained on exactly what the dataset loader gives back: each PNG decoded to
float32 and divided by 255, shape (1, 8, 8), labels in sorted folder-name order.
"""

from __future__ import annotations

import argparse
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SEED = 0
# A fixed timestamp for every zip entry, so the archive's bytes depend on its content only.
ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def make_splits(seed: int = SEED) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Stratified 60/20/20 split of ``load_digits``: split -> (uint8 images, labels, original indices)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # The PNG pixel: the 0..16 intensity scaled to 0..255.
    images = np.rint(digits.images * 255.0 / 16.0).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    index = np.arange(len(labels))
    i_train, i_rest = train_test_split(index, test_size=0.4, stratify=labels, random_state=seed)
    i_val, i_test = train_test_split(i_rest, test_size=0.5, stratify=labels[i_rest], random_state=seed)
    return {
        name: (images[np.sort(i)], labels[np.sort(i)], np.sort(i))
        for name, i in (("train", i_train), ("val", i_val), ("test", i_test))
    }


def write_dataset_zip(splits, path: Path) -> None:
    """ImageFolder zip with deterministic bytes: sorted entries, fixed times, stored PNGs."""
    from PIL import Image

    entries = []
    for split, (images, labels, idx) in splits.items():
        for img, label, i in zip(images, labels, idx, strict=True):
            buf = io.BytesIO()
            Image.fromarray(img, mode="L").save(buf, format="PNG", optimize=False)
            entries.append((f"{split}/{label}/{i:04d}.png", buf.getvalue()))
    entries.sort()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
            info.external_attr = 0o644 << 16
            info.create_system = 3
            zf.writestr(info, data)
    tmp.replace(path)


def to_inputs(images: np.ndarray) -> np.ndarray:
    """What the dataset loader yields for these PNGs: float32 / 255, shape (N, 1, 8, 8)."""
    return (images.astype(np.float32) / 255.0)[:, None, :, :]


def train(splits, *, epochs: int = 40, seed: int = SEED):
    """Train a DigitsCNN with Adam; returns the model (eval mode) and its val/test accuracy."""
    import torch

    sys.path.insert(0, str(ROOT))
    from tinymlaas_ci.ml.zoo import DigitsCNN

    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    model = DigitsCNN()
    x = torch.from_numpy(to_inputs(splits["train"][0]))
    y = torch.from_numpy(splits["train"][1])
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), 32):
            idx = order[start : start + 32]
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    scores = {}
    with torch.no_grad():
        for split in ("val", "test"):
            xs = torch.from_numpy(to_inputs(splits[split][0]))
            scores[split] = float((model(xs).argmax(1).numpy() == splits[split][1]).mean())
    return model, scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=HERE / "model.pkl")
    parser.add_argument("--dataset", type=Path, default=ROOT / "uploads" / "digits" / "dataset.zip")
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args(argv)

    import torch

    splits = make_splits()
    write_dataset_zip(splits, args.dataset)
    model, scores = train(splits, epochs=args.epochs)
    args.model.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model, args.model)
    sizes = {k: len(v[1]) for k, v in splits.items()}
    print(f"splits {sizes}; val accuracy {scores['val']:.4f}, test accuracy {scores['test']:.4f}")
    print(f"wrote {args.model} and {args.dataset}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
