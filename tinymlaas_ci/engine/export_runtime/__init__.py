"""Files of an exported inference bundle: the standalone runner, its Dockerfile and README.

:mod:`tinymlaas_ci.engine.export` copies them into the export folder. ``infer.py`` depends on
the standard library, numpy and onnxruntime only: it runs on a board with no tinymlaas-ci.
"""
