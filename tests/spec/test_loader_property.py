"""Property tests: whatever text or bytes a spec file holds, loading and validating it returns
problems (or raises our :class:`SpecError` through the raising API) and finishes quickly.
Never an uncaught exception, a hang or a crash of the interpreter."""

from __future__ import annotations

import signal
import string
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinymlaas_ci.errors import Problem, SpecError
from tinymlaas_ci.spec.loader import MAX_DEPTH, load_yaml_text
from tinymlaas_ci.spec.models import PipelineSpec, RunSpec
from tinymlaas_ci.spec.repo import load_repo
from tinymlaas_ci.spec.validate import validate_loaded

from .conftest import make_repo

PER_EXAMPLE_SECONDS = 2.0
"""Hard bound: an example that takes longer is a hang. Hypothesis' own deadline only reports
slow examples once they finish; the alarm interrupts one that never would."""

SETTINGS = settings(
    max_examples=300,
    deadline=timedelta(milliseconds=500),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,
)


class Hang(Exception):
    pass


@contextmanager
def time_bound(seconds: float = PER_EXAMPLE_SECONDS):
    def expire(signum, frame):
        raise Hang(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check(raw: str | bytes) -> None:
    """Load and validate ``raw`` as a run and as a pipeline; every outcome must be data."""
    with time_bound():
        loaded = load_yaml_text(raw, "runs/p/x.yaml")
        for problem in loaded.problems:
            assert isinstance(problem, Problem)
            assert problem.line >= 0 and problem.column >= 0
            assert problem.message
            problem.format()
        if loaded.problems:
            assert loaded.data is None
        for model in (RunSpec, PipelineSpec):
            spec, problems = validate_loaded(loaded, model)
            assert (spec is None) == bool(problems)
            assert all(isinstance(p, Problem) for p in problems)


# -- YAML-ish text: block and flow collections, anchors, aliases, tags, odd scalars ------------

_SCALARS = st.one_of(
    st.sampled_from(
        [
            "1",
            "-1",
            "0x1f",
            "1e400",
            ".nan",
            "~",
            "null",
            "true",
            "no",
            "''",
            '""',
            "2024-01-01",
            "static-int8",
            "uploads/m/model.onnx",
            "schema",
            "'a: b'",
            "|\n  text",
            ">-\n  folded",
            '"\\u00e9"',
            '"\\q"',
            "'unclosed",
            "@at",
            "`tick",
            "%pct",
            "!!int x",
            "!!bool 2",
            "!!float x",
            "!!binary aGk=",
            "!!python/object/apply:os.system [x]",
            "!custom v",
            "!!timestamp 2024-13-45",
            "<<",
            "? k",
            "*undefined",
            "&anchor v",
            "*anchor",
            "---",
            "...",
        ]
    ),
    st.text(alphabet=string.ascii_letters + string.digits + " -_.:#&*!|>'\"%@`,[]{}\t", max_size=12),
)
_KEYS = st.sampled_from(
    [
        "schema",
        "name",
        "model",
        "dataset",
        "upload",
        "huggingface",
        "file",
        "compression",
        "quantization",
        "matrix",
        "device",
        "stages",
        "needs",
        "builtin",
        "command",
        "<<",
        "1",
        "true",
        "null",
        "? [a]",
        "&k key",
        "*k",
        "a b",
        "'q'",
        "",
    ]
)


def _block(children):
    def mapping(items):
        out = []
        for key, value in items:
            body = value.replace("\n", "\n  ")
            out.append(f"{key}:\n  {body}" if "\n" in value else f"{key}: {value}")
        return "\n".join(out)

    def sequence(values):
        return "\n".join("- " + v.replace("\n", "\n  ") for v in values)

    def flow_map(items):
        return "{" + ", ".join(f"{k}: {v}" for k, v in items) + "}"

    def flow_seq(values):
        return "[" + ", ".join(values) + "]"

    pairs = st.lists(st.tuples(_KEYS, children), max_size=5)
    items = st.lists(children, max_size=5)
    return st.one_of(
        pairs.map(mapping),
        items.map(sequence),
        pairs.map(flow_map),
        items.map(flow_seq),
        st.tuples(st.sampled_from(["&a ", "&b ", "!!map ", "!!seq ", "!x ", ""]), children).map("".join),
    )


YAMLISH = st.recursive(_SCALARS, _block, max_leaves=40)


def _mangle(text: str, data) -> str:
    """Small edits that break otherwise well-formed YAML: tabs, cut-offs, duplicate lines."""
    edit = data.draw(st.sampled_from(["none", "tab", "cut", "dup", "indent", "docs"]))
    lines = text.split("\n")
    if edit == "tab":
        return "\t" + text
    if edit == "cut" and text:
        return text[: data.draw(st.integers(0, len(text)))]
    if edit == "dup" and lines:
        i = data.draw(st.integers(0, len(lines) - 1))
        return "\n".join(lines[: i + 1] + [lines[i]] + lines[i + 1 :])
    if edit == "indent" and lines:
        i = data.draw(st.integers(0, len(lines) - 1))
        lines[i] = " " * data.draw(st.integers(1, 5)) + lines[i]
        return "\n".join(lines)
    if edit == "docs":
        return text + "\n---\n" + text
    return text


@SETTINGS
@given(st.text(max_size=400))
def test_arbitrary_text_only_yields_problems(text):
    check(text)


@SETTINGS
@given(st.binary(max_size=400))
def test_arbitrary_bytes_only_yield_problems(raw):
    check(raw)


@SETTINGS
@given(YAMLISH, st.data())
def test_yaml_like_text_only_yields_problems(text, data):
    check(_mangle(text, data))


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(YAMLISH)
def test_raising_api_raises_only_spec_error(tmp_path_factory, text):
    """Through a whole repository and ``raise_for_problems``: a SpecError or nothing."""
    root = make_repo(tmp_path_factory.mktemp("repo"))
    (root / "runs" / "p").mkdir(parents=True)
    (root / "runs" / "p" / "x.yaml").write_text(text, encoding="utf-8")
    with time_bound():
        repo = load_repo(root)
        try:
            repo.raise_for_problems()
        except SpecError as err:
            assert err.problems == sorted(err.problems)
            assert str(err).startswith(f"{len(err.problems)} problem")


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("[" * 300_000, (1, MAX_DEPTH + 1)),
        ("{a: " * 100_000, (1, 4 * MAX_DEPTH + 1)),
        ("- " * 200_000 + "x", (1, 2 * MAX_DEPTH + 1)),
        ("a: &a [*a]", (1, 4)),
        ("a:\n" + "".join(" " * i + "b:\n" for i in range(1, 1200)), (MAX_DEPTH + 1, MAX_DEPTH + 1)),
    ],
    ids=["flow-lists", "flow-maps", "block-lists", "self-alias", "indented-maps"],
)
def test_deep_nesting_is_refused_without_crashing(text, where):
    """libyaml's composer recurses on the C stack: a file of '[' used to kill the interpreter.

    The message and position are ours, whatever limit and wording the installed PyYAML has.
    """
    with time_bound():
        loaded = load_yaml_text(text, "x.yaml")
    assert [(p.line, p.column, p.message) for p in loaded.problems] == [
        (*where, f"values nest deeper than {MAX_DEPTH} levels")
    ]


def test_time_bound_interrupts_a_hang():
    """The guard the property tests rely on actually fires."""
    with pytest.raises(Hang, match="no answer within"), time_bound(0.05):
        while True:
            pass


def test_example_specs_load_as_mappings():
    """A sanity anchor for the properties: the committed examples load cleanly."""
    root = Path(__file__).resolve().parents[2]
    for path in sorted((root / "runs").glob("*/*.yaml")):
        loaded = load_yaml_text(path.read_bytes(), path.name)
        assert loaded.problems == [] and isinstance(loaded.data, dict)
