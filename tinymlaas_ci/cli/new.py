"""``tinymlaas new RUN_FILE --model M --dataset D``: write a run spec from a look at the model
and the dataset (see :mod:`tinymlaas_ci.init.newrun`)."""

from __future__ import annotations

from tinymlaas_ci.cli.common import repo_root

__all__ = ["register"]


def register(sub) -> None:
    p = sub.add_parser(
        "new",
        help="write a run spec for a model and a dataset, from what they contain",
        description="Inspect the model (format, input shape, parameters) and the dataset (layout, splits, "
        "labels, sample shape) and write RUN_FILE (runs/<project>/<run>.yaml): a spec that validates and runs, "
        "with comments saying what was found. A --model or --dataset that is not a file in the repository is a "
        "Hugging Face Hub id (HF_TOKEN and HF_ENDPOINT apply). A pickled PyTorch model is loaded to read its "
        "input shape: only inspect models you trust.",
    )
    p.add_argument("run_file", metavar="RUN_FILE", help="the spec to write: runs/<project>/<run>.yaml")
    p.add_argument("--model", required=True, metavar="PATH_OR_HUB_ID", help="a model file here, or a Hub model id")
    p.add_argument(
        "--dataset",
        required=True,
        metavar="PATH_OR_HUB_ID",
        help="a dataset archive (.zip, .tar.gz) or .parquet file here, or a Hub dataset id",
    )
    p.add_argument("--device", default=None, metavar="D", help="device to run on (default: host, else the first)")
    p.add_argument("--sweep", choices=["quantization"], default=None, help="a matrix over every quantization mode")
    p.add_argument("--model-file", default=None, metavar="FILE", help="for a Hub model: the file to use")
    p.add_argument("--revision", default="main", help="for a Hub model: branch, tag or commit (default: main)")
    p.add_argument(
        "--dataset-revision", default="main", help="for a Hub dataset: branch, tag or commit (default: main)"
    )
    p.add_argument("--force", action="store_true", help="replace RUN_FILE when it exists")
    p.set_defaults(func=cmd_new)


def cmd_new(args) -> int:
    from tinymlaas_ci.init.newrun import new_run

    root = repo_root(args)
    made = new_run(
        root,
        args.run_file,
        args.model,
        args.dataset,
        device=args.device,
        sweep=args.sweep,
        model_file=args.model_file,
        revision=args.revision,
        dataset_revision=args.dataset_revision,
        force=args.force,
    )
    rel = made.path.relative_to(root).as_posix()
    m, d = made.model, made.dataset
    shape = m.input_shape or d.sample_shape
    print(f"wrote {rel}: {made.runs} run{'s' * (made.runs != 1)}")
    print(f"  model   {m.format}, input shape {shape}" + (f", {m.parameters:,} parameters" if m.parameters else ""))
    splits = ", ".join(f"{s} {n}" for s, n in d.splits.items())
    print(f"  dataset {d.format}: {splits}; {len(d.labels)} labels; accuracy on {d.eval_split}")
    print(f"next: tinymlaas validate {rel} && tinymlaas run {rel}")
    return 0
