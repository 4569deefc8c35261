"""Reproducers of what fuzzing found: one module each, whose `reproduce()` raised while
the bug was there. Each is fixed; tests/test_fuzz_corpus.py runs them as regression
tests. The fuzz targets can still steer around them (fuzz.stack_target.AVOID_KNOWN).
"""
