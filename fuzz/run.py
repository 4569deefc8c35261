"""Run the fuzz targets: `python -m fuzz.run [--target NAME] [--iterations N] [--corpus DIR]`.

Each target runs in a process of its own (atheris hands the process to libFuzzer,
which exits when done), one after the other. The seeds are fuzz/corpus/<target>/,
read, never written, unless --update-corpus merges what the run found into them
(libFuzzer's -set_cover_merge=1: a small set with all the coverage; see CORPUS_CAP).
New inputs go to --corpus DIR/<target>/ (a temporary directory by default), crashes
to --artifacts.

Engines: atheris (coverage-guided, libFuzzer) where it imports, else "random", a small
mutator of the seeds without coverage, so the runner works wherever the targets do.
Exit status: 0 if no target found anything, 1 otherwise (2 on a usage error).

Examples:
    python -m fuzz.run --seconds 1                     # CI: every target 1 s, the stack 5 s
    python -m fuzz.run --target stack --iterations 100000 --corpus /var/tmp/fuzz
    python -m fuzz.run --target dns_response --replay crash-1234abcd
    python -m fuzz.run --target proxy --seconds 600 --update-corpus
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import logging
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Final

from fuzz.targets import TARGETS

HERE: Final = Path(__file__).resolve().parent
TOP: Final = HERE.parent
CORPUS: Final = HERE / "corpus"
CORPUS_CAP: Final = 1200  # files per target kept in the repository after a merge
INSTRUMENTED: Final = ["slirpy", "fuzz"]
_EXECUTED: Final = re.compile(rb"stat::number_of_executed_units:\s*(\d+)")
_DONE: Final = re.compile(rb"Done (\d+) runs in")


def have_atheris() -> bool:
    try:
        importlib.import_module("atheris")
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", action="append", choices=tuple(TARGETS),
                        help="a target to run (repeatable; default: all)")
    parser.add_argument("--iterations", type=int, default=None,
                        help="inputs per target (default: unbounded if --seconds, else 10000)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="time per target (when all run: times the target's time_share)")
    parser.add_argument("--corpus", type=Path, default=None,
                        help="where new inputs go, DIR/<target>/ (default: a temporary dir)")
    parser.add_argument("--artifacts", type=Path,
                        default=Path(tempfile.gettempdir()) / "slirpy-fuzz-artifacts",
                        help="where crashing inputs go")
    parser.add_argument("--engine", choices=("auto", "atheris", "random"), default="auto")
    parser.add_argument("--update-corpus", action="store_true",
                        help="merge new coverage into fuzz/corpus/<target>/ (atheris only)")
    parser.add_argument("--replay", nargs="+", type=Path, metavar="FILE",
                        help="run these inputs once through --target and stop")
    parser.add_argument("--log", type=Path, default=None, help="append a summary line here")
    parser.add_argument("--seed", type=int, default=None, help="the random engine's seed")
    parser.add_argument("--worker", choices=tuple(TARGETS), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--argv0", help=argparse.SUPPRESS)
    parser.add_argument("--libfuzzer", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.disable(logging.CRITICAL)  # the core logs at debug what it drops: noise here

    if args.worker:
        return _atheris_worker(args)
    if args.replay:
        if not args.target or len(args.target) != 1:
            parser.error("--replay needs exactly one --target")
        return replay(args.target[0], args.replay)
    engine = args.engine
    if engine == "auto":
        engine = "atheris" if have_atheris() else "random"
    elif engine == "atheris" and not have_atheris():
        parser.error("atheris is not installed (pip install atheris; see pyproject's extras)")
    if args.update_corpus and engine != "atheris":
        parser.error("--update-corpus needs atheris (libFuzzer's -merge)")
    iterations = args.iterations
    if iterations is None and args.seconds is None:
        iterations = 10000
    names = args.target or list(TARGETS)
    args.artifacts.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="slirpy-fuzz-") as scratch:
        workroot = args.corpus or Path(scratch)
        failed: list[str] = []
        total = 0
        start = time.monotonic()
        seconds = args.seconds
        for name in names:
            workdir = workroot / name
            workdir.mkdir(parents=True, exist_ok=True)
            if seconds is not None and not args.target:
                args.seconds = seconds * TARGETS[name].time_share
            began = time.monotonic()
            before = set(args.artifacts.iterdir())
            if engine == "atheris":
                ok, runs = _run_atheris(name, workdir, args, iterations)
            else:
                ok, runs = _run_random(name, workdir, args, iterations)
            for path in sorted(set(args.artifacts.iterdir()) - before):
                data = path.read_bytes()
                shown = data.hex() if len(data) <= 2048 else f"{data[:2048].hex()}..."
                _report(f"{name}: input saved as {path} ({len(data)} bytes): {shown}",
                        args.log)
            elapsed = time.monotonic() - began
            total += runs
            status = "ok" if ok else "FOUND"
            line = (f"{time.strftime('%H:%M:%S')} {name:<13} {status:<5} runs={runs} "
                    f"seconds={elapsed:.1f} rate={runs / max(elapsed, 1e-9):.0f}/s "
                    f"corpus={_count(workdir)} seeds={_count(CORPUS / name)}")
            _report(line, args.log)
            if not ok:
                failed.append(name)
            if ok and args.update_corpus:
                _merge(name, workdir, args)
        _report(f"{time.strftime('%H:%M:%S')} total runs={total} seconds="
                f"{time.monotonic() - start:.1f} targets={len(names)} "
                f"findings={len(failed)}{' ' + ','.join(failed) if failed else ''} "
                f"engine={engine} artifacts={args.artifacts}", args.log)
    return 1 if failed else 0


def _report(line: str, log: Path | None) -> None:
    print(line, flush=True)
    if log is not None:
        with log.open("a") as file:
            file.write(line + "\n")


def _count(directory: Path) -> int:
    return sum(1 for p in directory.iterdir() if p.is_file()) if directory.is_dir() else 0


# --- atheris ----------------------------------------------------------------------------------

def _libfuzzer_flags(name: str, args: argparse.Namespace, iterations: int | None,
                     max_len: int) -> list[str]:
    flags = [f"-max_len={max_len}", f"-artifact_prefix={args.artifacts}/{name}-",
             "-print_final_stats=1", "-timeout=30", "-rss_limit_mb=2048",
             "-print_pcs=0", "-reload=0"]
    if iterations is not None:
        flags.append(f"-runs={iterations}")
    if args.seconds is not None:
        flags.append(f"-max_total_time={max(1, round(args.seconds))}")
    if args.seed is not None:
        flags.append(f"-seed={args.seed}")
    return flags


def _run_atheris(name: str, workdir: Path, args: argparse.Namespace,
                 iterations: int | None) -> tuple[bool, int]:
    command = [sys.executable, "-m", "fuzz.run", "--worker", name, "--workdir", str(workdir),
               "--artifacts", str(args.artifacts)]
    if iterations is not None:
        command += ["--iterations", str(iterations)]
    if args.seconds is not None:
        command += ["--seconds", str(args.seconds)]
    if args.seed is not None:
        command += ["--seed", str(args.seed)]
    log = args.log.open("ab") if args.log is not None else None
    try:
        proc = subprocess.Popen(command, cwd=TOP, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        tail: list[bytes] = []
        runs = 0
        for raw in proc.stdout:
            if log is not None:
                log.write(raw)
                log.flush()
            for pattern in (_EXECUTED, _DONE):
                found = pattern.search(raw)
                if found:
                    runs = max(runs, int(found.group(1)))
            tail = (tail + [raw])[-200:]
        code = proc.wait()
    finally:
        if log is not None:
            log.close()
    if code != 0:
        sys.stdout.buffer.write(b"".join(tail))
        sys.stdout.flush()
    return code == 0, runs


def _atheris_worker(args: argparse.Namespace) -> int:
    import atheris  # noqa: PLC0415  (only here: the runner itself works without it)

    target = TARGETS[args.worker]
    with atheris.instrument_imports(include=INSTRUMENTED):
        run = target.load()
    if args.libfuzzer is not None:  # libFuzzer's own arguments, as a merge passes them
        atheris.Setup([args.argv0, *args.libfuzzer], run)
        atheris.Fuzz()
        return 0  # not reached
    seeds = CORPUS / args.worker
    dirs = [str(args.workdir)] + ([str(seeds)] if seeds.is_dir() else [])
    flags = _libfuzzer_flags(args.worker, args, args.iterations, target.max_len)
    atheris.Setup([sys.argv[0], *flags, *dirs], run)
    atheris.Fuzz()
    return 0  # not reached: libFuzzer exits


def _merge(name: str, workdir: Path, args: argparse.Namespace) -> None:
    """Keep in fuzz/corpus/<name>/ its seeds (seed-*, from fuzz/seeds.py) and a
    coverage-minimal set of what else was found, this run's finds included."""
    import atheris  # noqa: F401, PLC0415  (fails early, with a clear message, if missing)

    seeds = CORPUS / name
    seeds.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"slirpy-merge-{name}-") as merged:
        into = Path(merged) / "corpus"
        into.mkdir()
        for seed in seeds.glob("seed-*"):  # kept whatever they cover: the programs we wrote
            shutil.copy(seed, into / seed.name)
        # A merge runs its argv[0] again for the work (so that a crash costs only a
        # retry): it must be an executable that starts this worker.
        wrapper = Path(merged) / "worker"
        wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m fuzz.run --worker {name} '
                           f'--argv0 "$0" --libfuzzer "$@"\n')
        wrapper.chmod(0o755)
        command = [str(wrapper), "-set_cover_merge=1", f"-max_len={TARGETS[name].max_len}",
                   "-timeout=30", f"-artifact_prefix={args.artifacts}/{name}-", str(into),
                   str(seeds), str(workdir)]
        proc = subprocess.run(command, cwd=TOP, capture_output=True, check=False)
        output = (proc.stdout + proc.stderr).decode(errors="replace")
        if proc.returncode != 0 or "MERGE-OUTER: successful" not in output:
            _report(f"merge of {name} failed:\n{output[-4000:]}", args.log)
            return
        found = sorted((p for p in into.iterdir() if not p.name.startswith("seed-")),
                       key=lambda p: (p.stat().st_size, p.name))
        if len(found) > CORPUS_CAP:
            _report(f"{name}: {len(found)} inputs after the merge, keeping the "
                    f"{CORPUS_CAP} smallest", args.log)
            found = found[:CORPUS_CAP]
        found += into.glob("seed-*")
        for old in seeds.iterdir():
            old.unlink()
        for path in found:
            shutil.copy(path, seeds / path.name)
        _report(f"{name}: corpus now {len(found)} files", args.log)


# --- without atheris: a small mutator, no coverage ---------------------------------------------

def _mutate(rng: random.Random, data: bytes, pool: list[bytes], max_len: int) -> bytes:
    out = bytearray(data)
    for _ in range(1 + rng.randrange(4)):
        choice = rng.randrange(7)
        at = rng.randrange(len(out) + 1)
        if choice == 0 and out:
            out[min(at, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif choice == 1 and out:
            out[min(at, len(out) - 1)] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
        elif choice == 2:
            out[at:at] = bytes(rng.randrange(256) for _ in range(1 + rng.randrange(8)))
        elif choice == 3 and out:
            del out[at:at + 1 + rng.randrange(8)]
        elif choice == 4 and pool:
            other = rng.choice(pool)
            cut = rng.randrange(len(other) + 1)
            out = out[:at] + other[cut:]
        elif choice == 5 and len(out) >= 2:
            start = rng.randrange(len(out) - 1)
            out[start:start + 2] = rng.randrange(65536).to_bytes(2, "big")
        else:
            out = out[:at]
    return bytes(out[:max_len])


def _run_random(name: str, workdir: Path, args: argparse.Namespace,
                iterations: int | None) -> tuple[bool, int]:
    target = TARGETS[name]
    run = target.load()
    rng = random.Random(args.seed if args.seed is not None else time.time_ns())
    pool = [p.read_bytes() for d in (CORPUS / name, workdir) if d.is_dir()
            for p in sorted(d.iterdir()) if p.is_file()] or [b""]
    deadline = None if args.seconds is None else time.monotonic() + args.seconds
    runs = 0
    while (iterations is None or runs < iterations) and (
            deadline is None or time.monotonic() < deadline):
        if runs < len(pool):
            data = pool[runs]
        elif rng.randrange(16) == 0:
            data = rng.randbytes(rng.randrange(target.max_len + 1))
        else:
            data = _mutate(rng, rng.choice(pool), pool, target.max_len)
        runs += 1
        try:
            run(data)
        except Exception:  # noqa: BLE001  (anything at all is the finding)
            path = args.artifacts / f"{name}-crash-{hashlib.sha1(data).hexdigest()}"
            path.write_bytes(data)
            traceback.print_exc()
            print(f"crashing input ({len(data)} bytes) saved to {path}", flush=True)
            return False, runs
    return True, runs


def replay(name: str, paths: list[Path]) -> int:
    """Run each file through target *name*; print what each raised."""
    run = TARGETS[name].load()
    failed = 0
    for path in paths:
        try:
            run(path.read_bytes())
        except Exception:  # noqa: BLE001
            failed += 1
            print(f"== {path}", flush=True)
            traceback.print_exc()
        else:
            print(f"{path}: ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
