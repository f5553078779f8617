"""Tests of the sources layer (Hub, uploads, archives) and dataset conversion."""
