"""Only the compiled part of the build; everything else is in pyproject.toml."""

from setuptools import Extension, setup

# The record parser's fast path. Optional: without a C compiler the install still succeeds
# and stapmagic.records parses with pyarrow (stapmagic.records.SCANNER says which).
setup(ext_modules=[Extension("stapmagic._recscan", ["stapmagic/_recscan.c"], optional=True)])
