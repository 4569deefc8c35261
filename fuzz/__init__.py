"""Coverage-guided fuzzing of slirpy's wire parsers and of the whole sans-IO stack.

Each target (`fuzz.targets.TARGETS`) is a plain function of one `bytes` argument that
raises on a finding and returns otherwise; it needs neither atheris nor libFuzzer, so
the corpus replays as an ordinary test (tests/test_fuzz_corpus.py). The contract under
test: the wire parsers raise nothing but `slirpy.wire.Malformed` on any input, and
`Stack.feed` raises nothing on any guest frame, whatever host events and timers come
between, and every frame it hands the guest passes the strict receiver of the unit
tests (tests/strict.py). Where a parser has a builder or a second opinion exists, a
target checks that too (a parsed header rebuilt is the bytes it came from; a checksum
agrees with one summed word by word).

`python -m fuzz.run` runs the targets under atheris (one process per target, one at a
time) or, where atheris is missing, under a small built-in mutator; see fuzz/run.py.
The interesting inputs live in fuzz/corpus/<target>/.
"""
