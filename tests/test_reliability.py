"""What a kill -9 leaves behind and how a rerun recovers, and bad input caught before side effects (issue 15).

Real processes (`python -m autointerp ...`) on real DuckDB files, killed with SIGKILL at a chosen pass.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pytest

from autointerp.collect.spill import CodeSpill
from autointerp.collect.spill_owner import remove_orphaned_spills
from autointerp.errors import UserError
from autointerp.store import Store
from tests.collect_helpers import make_sae_dir, make_tiny_model_dir

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("reliability")
    return make_tiny_model_dir(base / "model"), make_sae_dir(base / "sae", d_sae=32)


def collect_args(inputs: tuple[Path, Path], db: Path, tokens: int, *extra: str) -> list[str]:
    model, sae = inputs
    return [
        sys.executable,
        "-m",
        "autointerp",
        "collect",
        "--model",
        str(model),
        "--hook",
        "layers.1",
        "--sae",
        str(sae),
        "--db",
        str(db),
        "--sae-name",
        "k",
        "--tokens",
        str(tokens),
        "--ctx-len",
        "32",
        "--batch-size",
        "4",
        *extra,
    ]


def spills(directory: Path) -> list[Path]:
    return sorted(directory.glob(".autointerp-spill-*"))


def kill_when(proc: subprocess.Popen, ready, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "collect ended before it could be killed"
    assert ready(), "collect did not reach the point to kill it at"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)


@pytest.mark.slow  # real collect processes, ~30-60 s each on 2 busy cores
def test_kill_9_mid_pass1_leaves_a_spill_that_the_next_collect_removes(tmp_path: Path, inputs) -> None:
    db = tmp_path / "w.duckdb"
    proc = subprocess.Popen(
        collect_args(inputs, db, 50_000, "--no-progress"),
        env=ENV,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    kill_when(
        proc,
        lambda: any(
            (s / "codes.0.bin").exists() and (s / "codes.0.bin").stat().st_size > 0 for s in spills(tmp_path)
        ),
    )
    left = spills(tmp_path)
    assert len(left) == 1 and (left[0] / "owner.lock").read_text().strip() == str(proc.pid)
    rerun = subprocess.run(
        collect_args(inputs, db, 600, "--no-progress"),
        env=ENV,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert spills(tmp_path) == [] and "left by a collect that was killed" in rerun.stderr
    with Store(db, read_only=True) as store:
        assert [r.sae_name for r in store.runs()] == ["k"] and store.stale_runs() == []


def test_a_live_collects_spill_is_never_removed(tmp_path: Path) -> None:
    live = CodeSpill(tmp_path, 2**20)
    try:
        assert remove_orphaned_spills(tmp_path) == [] and live.directory.is_dir()
    finally:
        live.cleanup()
    assert spills(tmp_path) == []


@pytest.mark.slow  # real collect processes, ~30-60 s each on 2 busy cores
def test_kill_9_mid_pass2_then_readers_name_the_incomplete_run_and_a_rerun_finishes(
    tmp_path: Path, inputs
) -> None:
    db = tmp_path / "w.duckdb"
    args = collect_args(inputs, db, 2500, "--spill-gb", "0", "--top-k", "50", "--random-k", "50")
    proc = subprocess.Popen(args, env=ENV, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen = bytearray()

    def read() -> None:
        while chunk := os.read(proc.stderr.fileno(), 4096):
            seen.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    kill_when(proc, lambda: b"examples:" in seen)  # pass 2's bar: the 'running' row is committed
    with Store(db, read_only=True) as store:
        assert store.runs() == [] and [r.sae_name for r in store.stale_runs()] == ["k"]
    for command in (
        ["report", "--out", str(tmp_path / "r.html")],
        ["explain", "--llm", "http://127.0.0.1:9/v1"],
    ):
        result = subprocess.run(
            [sys.executable, "-m", "autointerp", command[0], "--db", str(db), *command[1:]],
            env=ENV,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert (
            "incomplete run 'k'" in result.stderr and "rerun the same `autointerp collect`" in result.stderr
        )
    rerun = subprocess.run(
        args + ["--no-progress"], env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    with Store(db, read_only=True) as store:
        (run,) = store.runs()
        assert store.stale_runs() == []
        n = store.query_df(
            "SELECT count(*) AS n, count(DISTINCT (feature_id, split, kind, rank)) AS d "
            "FROM examples WHERE run_id = ?",
            [run.run_id],
        )
        assert int(n["n"][0]) == int(n["d"][0]) > 0  # no duplicates


def test_not_a_database_and_locked_by_another_process_get_different_fixes(tmp_path: Path) -> None:
    bad = tmp_path / "notes.duckdb"
    bad.write_text("not a database\n")
    with pytest.raises(UserError) as not_db:
        Store(bad)
    assert "not a DuckDB database" in not_db.value.problem and bad.read_text() == "not a database\n"
    held = tmp_path / "held.duckdb"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
            "c.execute('CREATE TABLE t (a INT)'); print('ready', flush=True); time.sleep(60)",
            str(held),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(UserError) as locked:
            Store(held)
    finally:
        holder.kill()
        holder.wait(10)
    assert f"process {holder.pid}" in locked.value.problem
    assert locked.value.hint != not_db.value.hint and "wait for" in locked.value.hint
    duckdb.connect(str(held)).close()  # the holder is gone: the file opens again


@pytest.mark.slow  # real collect processes, ~30-60 s each on 2 busy cores
def test_bad_input_fails_before_the_model_loads_and_creates_no_workspace(tmp_path: Path, inputs) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    no_model = str(tmp_path / "no-model")  # were the model loaded first, its error would come instead
    cases = {
        "corpus": (
            {"--corpus": str(tmp_path / "missing.jsonl"), "--model": no_model},
            "neither a built-in corpus",
        ),
        "empty-corpus": ({"--corpus": str(empty), "--model": no_model}, "no documents"),
        "sae": ({"--sae": str(tmp_path / "no-sae"), "--model": no_model}, str(tmp_path / "no-sae")),
        "hook-name": ({"--hook": "layer15", "--model": no_model}, "unknown hook name"),
        "layer-range": ({"--hook": "layers.9"}, "layers 0..1"),  # needs the model: checked after it loads
    }
    for name, (overrides, expected) in cases.items():
        db = tmp_path / f"{name}.duckdb"
        args = collect_args(inputs, db, 600, "--no-progress")
        for flag, value in overrides.items():
            if flag in args:
                args[args.index(flag) + 1] = value
            else:
                args += [flag, value]
        result = subprocess.run(args, env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert result.returncode == 2 and "Traceback" not in result.stderr, (name, result.stderr[-2000:])
        assert expected in result.stderr and "fix:" in result.stderr, (name, result.stderr[-2000:])
        assert not list(tmp_path.glob(f"{name}.duckdb*")), name  # no workspace file, no WAL
