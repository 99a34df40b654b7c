"""Searching for the demo: one query in, the decision, augmentation, ranked candidates and timings out.

`SearchService` owns the loaded model and a lock: every model call (batched searches, streamed searches,
comparisons, corpus indexing, evaluation runs) holds it, so calls never interleave on the model. Searches in
`never` mode and API searches go through one `Batcher`; the page's searches that write an augmentation are
streamed token by token (`stream`) by a `StreamScheduler`, which generates concurrent visitors' searches together
in its worker thread (so torch's per-thread state never crosses threads), one model call at a time.
"""
from __future__ import annotations

import hashlib
import logging
import math
import queue
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from msolomon import prompts
from msolomon.demo import corpus as C
from msolomon.demo.batching import Batcher, ModelLock, StreamScheduler
from msolomon.demo.examples import Example, by_id, pick_examples
from msolomon.demo.settings import DemoSettings
from msolomon.demo.visitors import CorpusStore as VisitorCorpora
from msolomon.demo.visitors import VisitorError, visitor_id
from msolomon.inputs import Query
from msolomon.model import AUGMENT_MODES

logger = logging.getLogger(__name__)

MODES = AUGMENT_MODES  # msolomon.model's
TIMING_ORDER = ("preprocess", "decide", "generate", "embed", "search")
RANK_DEPTH = 5000  # how deep what-if and step by step rank a corpus (all of the demo's own; a prebuilt index's top)
BASELINES = {"noaug": ("NoAug model", "never"), "alwaysaug": ("AlwaysAug model", "always")}


class DemoInputError(ValueError):
    """Input the demo refuses; the message is shown on the page as it is."""


@dataclass
class SearchRequest:
    """One search as the page or the API sends it."""

    text: str | None = None
    image: str | None = None
    instruction: str | None = None
    mode: str = "auto"
    threshold: float = 0.5
    top_k: int = 10
    corpus: str = C.ALL_MINIMMEB
    example_id: str | None = None
    visitor: str | None = None  # the browser's visitor key: opens that visitor's own corpora


@dataclass
class HitView:
    rank: int
    score: float
    text: str | None
    image: str | None
    correct: bool


@dataclass
class SearchOutcome:
    """What the page shows and `/search` returns; `final` is False while the augmentation is still streaming."""

    decision: str
    p_augment: float
    augmentation: str | None
    mode: str
    threshold: float
    corpus: str
    hits: list[HitView] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    final: bool = True
    example: str | None = None  # the benchmark example this query is, if any
    answer: str | None = None
    positive_rank: int | None = None  # 1-based rank of the known answer in the whole corpus
    batch_size: int = 1  # how many concurrent searches the model call that served this one encoded together

    def to_json(self) -> dict[str, Any]:
        """The outcome as `/search` returns it: images by their own file name, never a path on the server."""
        out = asdict(self)
        out["hits"] = [asdict(h) | {"image": Path(h.image).name if h.image else None} for h in self.hits]
        out["timings"] = {k: round(v, 3) for k, v in self.timings.items()}
        return out


@dataclass
class WhatIf:
    """The path a search did not take, for the same query: what it retrieves, and for a query with a known answer
    whether augmenting helped. Its model call is timed on its own (`ms`), never added to the search's latency."""

    mode: str  # the other path: "never" (no augmentation) or "always" (augment)
    augmentation: str | None
    hits: list[HitView]  # its top 3
    top_moved_to: int | None  # where the search's own top result ranks on the other path
    answer_ranks: dict[str, int | None] | None  # the known answer's rank under "never" and "always"
    verdict: str | None  # augmenting "helped", "hurt" or "changed nothing" (from the answer's two ranks)
    ms: float


@dataclass
class RankedCandidate:
    """One candidate of the step-by-step table: its score and rank with `/embed` and with the augmentation."""

    name: str
    image: str | None
    correct: bool
    embed_score: float | None  # None: ranked below RANK_DEPTH on that path
    embed_rank: int | None
    augment_score: float | None
    augment_rank: int | None


@dataclass
class StepByStep:
    """The teaching view of one query (`msolomon.explain`) ranked against the chosen corpus."""

    explanation: Any
    threshold: float
    mode: str
    decision: str  # what the search would decide under its mode and threshold
    candidates: list[RankedCandidate]
    trajectory: list[dict[str, Any]]  # per prefix of the augmentation: top-1 name, answer rank
    answer: str | None
    ms: float


def verdict(never_rank: int | None, always_rank: int | None) -> str | None:
    """Did augmenting help this query? Judged by the known answer's rank on the two paths (1 = first)."""
    if never_rank is None and always_rank is None:
        return None
    never_rank = never_rank or 10**9
    always_rank = always_rank or 10**9
    return "helped" if always_rank < never_rank else "hurt" if always_rank > never_rank else "changed nothing"


def _image_digest(path: str | None) -> str | None:
    if not path:
        return None
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


class LockedModel:
    """The model seen through the lock, one call at a time as background work (for long jobs such as an
    evaluation run, so that searches go first between its calls)."""

    def __init__(self, model: Any, lock: ModelLock):
        self._model, self._lock = model, lock

    def encode_queries(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock.background():
            return self._model.encode_queries(*args, **kwargs)

    def encode_candidates(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock.background():
            return self._model.encode_candidates(*args, **kwargs)


class SearchService:
    """The model, its corpora and examples, and the three ways to search: batched, streamed, compared."""

    def __init__(self, model: Any, settings: DemoSettings):
        self.model = model
        self.settings = settings
        self.lock = ModelLock()  # searches go first; indexing and evaluation runs wait for them
        self.model_key = C.model_key(model)
        self.cache = C.IndexCache(settings.cache_dir / "indexes")
        self.corpora: dict[str, C.Corpus] = {}  # shared: every visitor sees these
        self.store = VisitorCorpora(settings.cache_dir, settings.limits.max_custom_corpora, settings.keep_corpora,
                                    settings.cache_budget_mb)
        self._private: dict[str, dict[str, C.Corpus]] = {}  # visitor id -> that visitor's corpora, loaded lazily
        self._private_lock = threading.Lock()
        self.examples: list[Example] = []
        self._examples_by_id: dict[str, Example] = {}
        self.bench: Any = None
        self.data_dir: Path | None = None
        self.baselines: dict[str, Any] = {}
        self._baseline_indexes: dict[tuple, Any] = {}
        self._baseline_lock = threading.Lock()  # one build of a baseline's model or index at a time
        self._warming: threading.Thread | None = None
        self.served: deque[tuple[str, float]] = deque(maxlen=1000)  # (decision, model ms) of recent searches
        self.startup: dict[str, float] = {}
        self.batcher = Batcher(self._run_batch, settings.max_batch, settings.batch_wait_ms, settings.queue_size)
        self.streams = StreamScheduler(self._open_stream_batch, self.lock, settings.max_batch,
                                       settings.batch_wait_ms, settings.queue_size)

    # ------------------------------------------------------------------ start-up
    def start(self, progress: C.Progress | None = None) -> "SearchService":
        """Generate (first start) or find the default corpus, index it (or load the cached index), pick examples."""
        from msolomon.evaluation import open_benchmark

        t0 = time.perf_counter()
        prebuilt = [self._load_prebuilt(folder) for folder in self.settings.index]  # refused before any work
        self.data_dir = C.ensure_minimmeb(self.settings.cache_dir, self.settings.corpus_seed,
                                          self.settings.corpus_scale)
        self.bench = open_benchmark(self.data_dir)
        t1 = time.perf_counter()
        payloads = C.minimmeb_payloads(self.bench, self.data_dir.with_name(self.data_dir.name + ".candidates.json"))
        if self.settings.sample_photos:
            payloads += C.sample_photo_payloads(self.settings.cache_dir)
        index, cached = self.cache.get(payloads, self.encode_candidates, self.model_key, progress)
        t2 = time.perf_counter()
        note = f"{len(payloads)} candidates of {len(self.bench.names)} MiniMMEB test sets " \
               f"(seed {self.settings.corpus_seed}, scale {self.settings.corpus_scale}) and sample photos"
        self.corpora[C.ALL_MINIMMEB] = C.Corpus(C.ALL_MINIMMEB, payloads, index, note, list(self.bench.names))
        for name in self.bench.names:
            positions = [i for i, p in enumerate(payloads) if name in p["datasets"]]
            self.corpora[C.DATASET_PREFIX + name] = C.Corpus(
                C.DATASET_PREFIX + name, [payloads[i] for i in positions], C.subset(index, positions),
                f"the {len(positions)} test candidates of {name} (the MMEB setting)", [name])
        for name, corpus in prebuilt:
            if name in self.corpora:
                raise DemoInputError(f"--index: a corpus named {name!r} is already served; rename the folder")
            self.corpora[name] = corpus
        if self.settings.warm_baselines and self.baseline_dirs():  # so the first Compare does not wait on them
            self._warming = threading.Thread(target=self.warm_baselines, name="msolomon-baselines", daemon=True)
            self._warming.start()
        self.examples = pick_examples(self.bench, self.decide, self.settings.n_examples_per_dataset)
        self._examples_by_id = by_id(self.examples)
        self.startup = {"data_s": t1 - t0, "index_s": t2 - t1, "examples_s": time.perf_counter() - t2,
                        "index_cached": float(cached)}
        self.prune()
        logger.info("demo ready: %d corpora, %d examples, index %s (%.1fs)", len(self.corpora), len(self.examples),
                    "from cache" if cached else "built", time.perf_counter() - t0)
        return self

    def _load_prebuilt(self, folder: str | Path) -> tuple[str, C.Corpus]:
        """An index built by `python -m msolomon.index build` with this model, as a shared corpus named after its
        folder; one built by another model is refused (`IndexBuildError`, naming the model that built it)."""
        from msolomon.index.build import load_built

        name = Path(folder).resolve().name
        index, built = load_built(folder, getattr(self.model, "signature", None))
        payloads = [C.payload(p.get("text"), p.get("image"), [C.INDEX_DATASET]) for p in index.payloads]
        index.payloads = payloads
        note = f"{len(index)} items indexed with python -m msolomon.index ({built.get('factory')} index)"
        logger.info("serving the index %s as the corpus %r (%d items)", folder, name, len(index))
        return name, C.Corpus(name, payloads, index, note, [C.INDEX_DATASET])

    def close(self) -> None:
        self.batcher.close()
        self.streams.close()

    # ------------------------------------------------------------------ model calls (all under the lock)
    def encode_candidates(self, payloads: list[dict], model: Any = None) -> np.ndarray:
        """One chunk of a corpus being indexed (`msolomon.index.shards.encode_items`, the encoding of
        `python -m msolomon.index`): background work, so searches go first. Every item must encode: one that does
        not is named by its file name (never a server path)."""
        from msolomon.index.shards import encode_items

        with self.lock.background():
            vectors, _, skipped = encode_items(model or self.model, payloads)
        if skipped:
            bad = skipped[0]
            name = Path(str(bad["path"])).name
            raise C.CorpusError(f"{name}: {bad['reason'].replace(str(bad['path']), name)}")
        return vectors

    def decide(self, queries: list[Query]) -> list[tuple[str, float]]:
        """The model's decision at its default threshold, from the prefill alone (`never` mode costs no
        generation)."""
        threshold = self.model.settings.default_threshold
        with self.lock:
            results = self.model.encode_queries(queries, augment="never", batch_size=16, max_new_tokens=1)
        return [(prompts.AUGMENT if r.p_augment >= threshold else prompts.EMBED, r.p_augment) for r in results]

    def _run_batch(self, group: tuple, queries: list[Query]) -> list[Any]:
        mode, threshold, max_new_tokens = group
        with self.lock:
            results = self.model.encode_queries(queries, augment=mode, threshold=threshold, batch_size=len(queries),
                                                max_new_tokens=max_new_tokens, show_progress_bar=False)
        return [(r, len(queries)) for r in results]

    # ------------------------------------------------------------------ requests
    def check(self, req: SearchRequest) -> Query:
        """Validate a request and turn it into a Query; every refusal is a `DemoInputError` with a plain reason."""
        from msolomon.processing import load_image

        limits = self.settings.limits
        text = req.text if req.text and req.text.strip() else None
        instruction = req.instruction if req.instruction and req.instruction.strip() else None
        for what, value in (("query text", text), ("instruction", instruction)):
            if value is not None and len(value) > limits.max_query_chars:
                raise DemoInputError(f"the {what} has {len(value)} characters; the limit is {limits.max_query_chars}: "
                                     "shorten it")
            bad = next((i for i, ch in enumerate(value or "") if 0xD800 <= ord(ch) <= 0xDFFF), None)
            if bad is not None:
                raise DemoInputError(f"the {what} holds an invalid character (U+{ord(value[bad]):04X}, a lone "
                                     f"surrogate) at position {bad + 1}; remove it and search again")
        if text is None and req.image is None and instruction is None:
            raise DemoInputError("type a query, add an image, or both")
        if req.mode not in MODES:
            raise DemoInputError(f"mode must be one of {', '.join(MODES)}, got {req.mode!r}")
        try:
            threshold = float(req.threshold)
        except (TypeError, ValueError):
            raise DemoInputError(f"threshold must be a number in [0, 1], got {req.threshold!r}") from None
        if not 0.0 <= threshold <= 1.0 or math.isnan(threshold):
            raise DemoInputError(f"threshold must be in [0, 1], got {req.threshold!r}")
        try:
            top_k = int(req.top_k)
        except (TypeError, ValueError):
            raise DemoInputError(f"top-k must be a whole number, got {req.top_k!r}") from None
        if not 1 <= top_k <= limits.max_top_k:
            raise DemoInputError(f"top-k must be between 1 and {limits.max_top_k}, got {top_k}")
        if req.corpus not in self.corpora_for(req.visitor):
            raise DemoInputError(f"unknown corpus {req.corpus!r}; choose one of the list")
        image = None
        if req.image is not None:  # decoded once, here: the model gets the checked image, not the file again
            name = Path(str(req.image)).name
            try:
                image = load_image(req.image)
            except ValueError as err:
                raise DemoInputError(str(err).replace(str(req.image), name)) from None
        return Query(text=text, image=image, instruction=instruction)

    def _example_for(self, req: SearchRequest) -> Example | None:
        ex = self._examples_by_id.get(req.example_id or "")
        if ex is None:
            return None
        same_text = (ex.text or None) == (req.text.strip() if req.text and req.text.strip() else None) and \
            (ex.instruction or None) == (req.instruction.strip() if req.instruction and req.instruction.strip()
                                         else None)
        same_image = (ex.image is None) == (req.image is None) and \
            (ex.image is None or _image_digest(ex.image) == _image_digest(req.image))
        return ex if same_text and same_image else None

    def _outcome(self, req: SearchRequest, result: Any, index: Any, corpus: str,
                 extra_ms: dict[str, float] | None = None) -> SearchOutcome:
        """Search the embedding of a finished result and package everything the page shows."""
        t0 = time.perf_counter()
        k = min(int(req.top_k), len(index))
        example = self._example_for(req)
        depth = min(len(index), RANK_DEPTH) if example else k  # an example's answer is looked for to RANK_DEPTH
        hits = index.search(np.asarray(result.embedding, dtype=np.float32), k=depth)
        search_ms = (time.perf_counter() - t0) * 1e3
        positive_rank = None
        if example is not None:
            positive_rank = next((h.rank + 1 for h in hits
                                  if C.payload_key(h.payload.get("text"), h.payload.get("image"))
                                  == example.positive_key), None)
        views = [HitView(h.rank + 1, float(h.score), h.payload.get("label"), h.payload.get("image"),
                         bool(positive_rank == h.rank + 1)) for h in hits[:k]]
        timings = {key: float(result.timings.get(key, 0.0)) for key in TIMING_ORDER if key != "search"}
        timings["search"] = search_ms
        timings["total"] = float(result.timings.get("total", 0.0)) + search_ms
        timings.update(extra_ms or {})
        self.served.append((result.decision, float(result.timings.get("total", 0.0))))
        return SearchOutcome(result.decision, float(result.p_augment), result.augmentation, req.mode,
                             float(req.threshold), corpus, views, timings, True,
                             example.id if example else None, example.answer if example else None, positive_rank)

    def _ranking(self, req: SearchRequest, embedding: Any) -> tuple[list[Any], Example | None]:
        """The request's corpus ranked by one query embedding to RANK_DEPTH (every candidate of the demo's own
        corpora; a prebuilt index may hold millions), and the example the query is, if any."""
        index = self.corpus_of(req).index
        return (index.search(np.asarray(embedding, dtype=np.float32), k=min(len(index), RANK_DEPTH)),
                self._example_for(req))

    def what_if(self, req: SearchRequest, out: SearchOutcome, timeout: float = 120.0) -> WhatIf:
        """The other path for the query of a finished search (batched with other searches, not counted in its
        latency): its top 3, where the search's top result went, and the known answer's rank on both paths."""
        query = self.check(req)
        other = "never" if out.decision == prompts.AUGMENT else "always"
        t0 = time.perf_counter()
        result, _ = self.batcher.submit(query, (other, float(req.threshold), self.settings.max_new_tokens)
                                        ).result(timeout=timeout)
        ms = (time.perf_counter() - t0) * 1e3
        ranking, example = self._ranking(req, result.embedding)
        keys = [C.payload_key(h.payload.get("text"), h.payload.get("image")) for h in ranking]
        seen = [(h.payload.get("label"), h.payload.get("image")) for h in ranking]  # as a HitView names it
        hits = [HitView(h.rank + 1, float(h.score), h.payload.get("label"), h.payload.get("image"),
                        bool(example is not None and keys[j] == example.positive_key))
                for j, h in enumerate(ranking[:3])]
        moved = None
        if out.hits:
            top = (out.hits[0].text, out.hits[0].image)
            moved = next((j + 1 for j, k in enumerate(seen) if k == top), None)
        ranks = verdict_ = None
        if example is not None:
            mine = next((j + 1 for j, k in enumerate(keys) if k == example.positive_key), None)
            taken = "always" if other == "never" else "never"
            ranks = {taken: out.positive_rank, other: mine}
            verdict_ = verdict(ranks.get("never"), ranks.get("always"))
        return WhatIf(other, result.augmentation, hits, moved, ranks, verdict_, ms)

    def step_by_step(self, req: SearchRequest, candidates: int = 5) -> StepByStep:
        """The teaching view of the request's query against its corpus (`msolomon.explain`)."""
        from msolomon.explain import explain_query

        query = self.check(req)
        t0 = time.perf_counter()
        with self.lock:
            ex = explain_query(self.model, query, max_new_tokens=self.settings.max_new_tokens)
        index = self.corpus_of(req).index
        example = self._example_for(req)
        vectors = np.vstack([ex.embed_vector[None], ex.prefix_vectors])
        scores, positions = index.search_arrays(vectors, k=min(len(index), RANK_DEPTH))
        rank_of = [{int(pos): r + 1 for r, pos in enumerate(row) if pos >= 0} for row in positions]
        score_of = [{int(pos): float(sc) for sc, pos in zip(srow, row) if pos >= 0} for srow, row in zip(scores,
                                                                                                        positions)]
        answer_pos = None
        if example is not None:  # only an example has a known answer: looked up in its corpus, never a whole index
            answer_pos = next((i for i, p in enumerate(index.payloads)
                               if C.payload_key(p.get("text"), p.get("image")) == example.positive_key), None)
        shown = list(dict.fromkeys([int(p) for p in positions[0][:candidates]] + [int(p) for p in positions[-1][
            :candidates]] + ([answer_pos] if answer_pos is not None else [])))
        rows = []
        for pos in shown:
            p = index.payloads[pos]
            rows.append(RankedCandidate(p.get("label") or "", p.get("image"), pos == answer_pos,
                                        score_of[0].get(pos), rank_of[0].get(pos), score_of[-1].get(pos),
                                        rank_of[-1].get(pos)))  # None: below RANK_DEPTH on that path
        rows.sort(key=lambda r: r.augment_rank or RANK_DEPTH + 1)
        trajectory = []
        for i in range(len(ex.prefix_vectors)):
            top = int(positions[i + 1][0])
            p = index.payloads[top]
            trajectory.append({"written": i, "top": p.get("label") or "", "top_image": p.get("image"),
                               "top_correct": top == answer_pos,
                               "answer_rank": rank_of[i + 1].get(answer_pos) if answer_pos is not None else None})
        threshold = float(req.threshold)
        decision = (prompts.AUGMENT if req.mode == "always" or (req.mode == "auto" and ex.p_augment >= threshold)
                    else prompts.EMBED)
        return StepByStep(ex, threshold, req.mode, decision, rows, trajectory,
                          example.answer if example else None, (time.perf_counter() - t0) * 1e3)

    def search(self, req: SearchRequest, timeout: float = 120.0) -> SearchOutcome:
        """A batched search: waits for other concurrent searches briefly, then one model call serves them all."""
        query = self.check(req)
        t0 = time.perf_counter()
        future = self.batcher.submit(query, (req.mode, float(req.threshold), self.settings.max_new_tokens))
        result, batch_size = future.result(timeout=timeout)
        wall = (time.perf_counter() - t0) * 1e3
        out = self._outcome(req, result, self.corpus_of(req).index, req.corpus,
                            {"queue": max(wall - float(result.timings.get("total", 0.0)), 0.0)})
        out.batch_size = batch_size
        return out

    def stream(self, req: SearchRequest, timeout: float = 120.0) -> Iterator[SearchOutcome]:
        """The decision first, then the augmentation as it grows, then the final outcome with the hits. Concurrent
        streamed searches are generated together (`StreamScheduler`: one prefill and one decode loop per batch;
        searches that arrive mid-way start between two decode steps), each visitor receiving their own steps."""
        query = self.check(req)
        if req.mode == "never":  # nothing to stream: serve it batched
            yield self.search(req)
            return
        steps: queue.Queue = queue.Queue()
        t0 = time.perf_counter()
        self.streams.submit(query, steps, (req.mode, float(req.threshold), self.settings.max_new_tokens))
        waited = None
        while True:
            try:
                step = steps.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"the search got no answer within {timeout:.0f} s; try again") from None
            if isinstance(step, Exception):
                raise step
            if waited is None:  # time before this search's batch started: the wait for other visitors
                model_ms = float(step.timings.get("preprocess", 0.0)) + float(step.timings.get("decide", 0.0))
                waited = max((time.perf_counter() - t0) * 1e3 - model_ms, 0.0)
            if step.final:
                yield self._outcome(req, step, self.corpus_of(req).index, req.corpus, {"queue": waited})
                return
            yield SearchOutcome(step.decision, float(step.p_augment), step.augmentation, req.mode,
                                float(req.threshold), req.corpus, [], dict(step.timings), final=False)

    def _open_stream_batch(self, group: tuple, queries: list[Query]) -> Any:
        mode, threshold, max_new_tokens = group
        return self.model.stream_queries(queries, augment=mode, threshold=threshold, max_new_tokens=max_new_tokens)

    # ------------------------------------------------------------------ compare
    def baseline_dirs(self) -> dict[str, Path]:
        """The trained NoAug / AlwaysAug models present under the baselines folder."""
        base = self.settings.baselines_dir
        return {k: base / k for k in BASELINES if (base / k / "config.json").is_file()}

    def _baseline(self, key: str) -> Any:
        with self._baseline_lock:
            if key not in self.baselines:
                from msolomon.model import MSolomon

                self.baselines[key] = MSolomon.from_pretrained(self.baseline_dirs()[key], device="cpu")
            return self.baselines[key]

    def warm_baselines(self) -> None:
        """Load the trained baselines and index the default corpus with each (or find its index in the disk cache),
        in the background at start: their model calls take the model lock chunk by chunk, so searches still run."""
        for key in self.baseline_dirs():
            try:
                self._index_for(key, self._baseline(key), SearchRequest(corpus=C.ALL_MINIMMEB), None)
                logger.info("baseline %s ready for Compare", key)
            except Exception as err:  # noqa: BLE001 - a broken baseline must not stop the demo; Compare says why
                logger.warning("could not prepare the baseline %s for Compare: %s", key, err)

    def _index_for(self, key: str, model: Any, req: SearchRequest, progress: C.Progress | None) -> Any:
        """The corpus encoded by a baseline model (its own embedding space), cached like the main indexes."""
        corpus = self.corpus_of(req)
        owner = "" if req.corpus in self.corpora else visitor_id(req.visitor)
        slot = (key, owner, corpus.name, id(corpus))
        with self._baseline_lock:
            return self._index_for_locked(key, model, corpus, slot, progress)

    def _index_for_locked(self, key: str, model: Any, corpus: C.Corpus, slot: tuple,
                          progress: C.Progress | None) -> Any:
        if slot not in self._baseline_indexes:
            base = self.corpora[C.ALL_MINIMMEB] if corpus.name.startswith(C.DATASET_PREFIX) else corpus
            whole = (key, "", base.name, id(base)) if base is not corpus else slot
            if whole not in self._baseline_indexes:
                index, _ = self.cache.get(base.payloads, lambda c: self.encode_candidates(c, model),
                                          C.model_key(model), progress)
                self._baseline_indexes[whole] = index
            if whole != slot:
                wanted = set(corpus.datasets)
                positions = [i for i, p in enumerate(base.payloads) if wanted & set(p["datasets"])]
                self._baseline_indexes[slot] = C.subset(self._baseline_indexes[whole], positions)
        return self._baseline_indexes[slot]

    def compare(self, req: SearchRequest, progress: C.Progress | None = None
                ) -> tuple[list[tuple[str, SearchOutcome]], str]:
        """The query through M-Solomon's three modes and through the NoAug and AlwaysAug models when present."""
        query = self.check(req)
        runs: list[tuple[str, Any, str, str]] = [
            ("M-Solomon · auto", self.model, "auto", ""), ("M-Solomon · never (NoAug path)", self.model, "never", ""),
            ("M-Solomon · always (AlwaysAug path)", self.model, "always", "")]
        present = self.baseline_dirs()
        prebuilt = C.INDEX_DATASET in self.corpus_of(req).datasets
        for key, (label, mode) in BASELINES.items():
            if key in present and not prebuilt:  # a prebuilt index may hold millions: not re-encoded per baseline
                runs.append((label, self._baseline(key), mode, key))
        out = []
        for label, model, mode, key in runs:
            with self.lock:
                result = model.encode_queries(query, augment=mode, threshold=float(req.threshold),
                                              max_new_tokens=self.settings.max_new_tokens)
            index = self.corpus_of(req).index if not key else self._index_for(key, model, req, progress)
            sub = SearchRequest(**{**asdict(req), "mode": mode})
            out.append((label, self._outcome(sub, result, index, req.corpus)))
        if prebuilt:
            return out, ("A prebuilt index is searched with M-Solomon's own paths only: the baselines would have to "
                         "encode the whole collection again.")
        missing = [f"{self.settings.baselines_dir.name}/{k}" for k in BASELINES if k not in present]
        note = ("Trained baselines compared: " + ", ".join(BASELINES[k][0] for k in present) + "." if present else "")
        if missing:
            note += (" " if note else "") + "Absent: " + ", ".join(missing) + " (train them with `python -m " \
                "training.reproduce`); only M-Solomon's own paths are shown for those."
        return out, note

    # ------------------------------------------------------------------ corpora
    def _visitor(self, key: str | None) -> str:
        try:
            return visitor_id(key)
        except VisitorError as err:
            raise DemoInputError(str(err)) from None

    def private_corpora(self, key: str | None) -> dict[str, C.Corpus]:
        """The visitor's own corpora (read from disk on their first request after a start); none without a key."""
        try:
            vid = visitor_id(key)
        except VisitorError:
            return {}
        with self._private_lock:
            if vid not in self._private:
                self._private[vid] = {name: C.Corpus(name, list(st.index.payloads), st.index, st.note, ["custom"])
                                      for name, st in self.store.load_all(vid).items()}
            return dict(self._private[vid])

    def corpora_for(self, key: str | None) -> dict[str, C.Corpus]:
        """What one visitor may search: the shared corpora, then their own."""
        return {**self.corpora, **self.private_corpora(key)}

    def corpus_of(self, req: SearchRequest) -> C.Corpus:
        corpus = self.corpora_for(req.visitor).get(req.corpus)
        if corpus is None:
            raise DemoInputError(f"unknown corpus {req.corpus!r}; choose one of the list")
        if req.corpus not in self.corpora:
            self.store.touch(visitor_id(req.visitor), req.corpus)
        return corpus

    def add_custom_corpus(self, key: str | None, name: str, images: Sequence[str] | None, text_file: str | None,
                          progress: C.Progress | None = None) -> C.Corpus:
        """Index uploaded images and lines of text as one of the visitor's own corpora (on disk, private to their
        key); the cap per visitor is held while the work runs, so concurrent requests cannot exceed it."""
        vid = self._visitor(key)
        name = " ".join((name or "").split())
        if not name:
            name = "my corpus"
        if len(name) > 60:
            raise DemoInputError(f"the corpus name has {len(name)} characters; the limit is 60")
        full = C.CUSTOM_PREFIX + name
        try:
            with self.store.reserve(vid, full):
                payloads = C.custom_payloads(images, text_file, self.store.upload_dir(vid), self.settings.limits)
                index, _ = self.cache.get(payloads, self.encode_candidates, self.model_key, progress)
                n_img = sum(p["image"] is not None for p in payloads)
                note = f"{n_img} images and {len(payloads) - n_img} texts, uploaded"
                self.store.save(vid, full, note, index)
        except (C.CorpusError, VisitorError) as err:
            raise DemoInputError(str(err)) from None
        corpus = C.Corpus(full, payloads, index, note, ["custom"])
        with self._private_lock:
            self._private.setdefault(vid, {})[full] = corpus
        for slot in [k for k in self._baseline_indexes if k[1] == vid and k[2] == full]:
            del self._baseline_indexes[slot]
        try:
            self.prune()
        except OSError as err:  # the corpus is saved: housekeeping that trips on a concurrent save waits for later
            logger.warning("pruning the cache after an upload failed (%s); the next upload prunes again", err)
        return corpus

    def delete_custom_corpus(self, key: str | None, name: str) -> bool:
        vid = self._visitor(key)
        with self._private_lock:
            self._private.get(vid, {}).pop(name, None)
        return self.store.delete(vid, name)

    MAX_EVAL_RUNS = 50  # the error explorer's own evaluation runs kept (the newest)

    def prune(self) -> list[str]:
        """Apply the retention and the size budget to visitors' corpora, and the retention (and a count) to the
        error explorer's evaluation runs; forget removed corpora held in memory."""
        import shutil

        removed = self.store.prune()
        runs = self.settings.cache_dir / "evals"
        if runs.is_dir():
            folders = sorted((p for p in runs.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
            horizon = time.time() - self.settings.keep_corpora * 86400
            for i, folder in enumerate(folders):
                if i >= self.MAX_EVAL_RUNS or folder.stat().st_mtime < horizon:
                    shutil.rmtree(folder, ignore_errors=True)
                    removed.append(f"evals/{folder.name}")
        if removed:
            with self._private_lock:
                self._private.clear()  # read again from disk on each visitor's next request
        return removed

    # ------------------------------------------------------------------ live figures
    def live_figures(self) -> dict[str, dict[str, float]]:
        """Searches served since start, per decision: count and mean model time (ms)."""
        out: dict[str, dict[str, float]] = {}
        for decision in (prompts.EMBED, prompts.AUGMENT):
            times = [t for d, t in self.served if d == decision]
            out[decision] = {"count": float(len(times)), "mean_ms": float(np.mean(times)) if times else float("nan")}
        return out
