"""The page's event handlers. Each turns bad input into a readable message on the page (`gr.Error`), never a
stack trace, and leaves the server serving; unexpected failures are logged with their trace on the server."""
from __future__ import annotations

import functools
import hashlib
import inspect
import logging
from pathlib import Path
from typing import Any, Callable, Iterator

from msolomon.demo import explorer, panel, render
from msolomon.demo.batching import BusyError
from msolomon.demo.corpus import CorpusError
from msolomon.demo.service import DemoInputError, SearchOutcome, SearchRequest, SearchService

logger = logging.getLogger(__name__)

USER_ERRORS = (DemoInputError, CorpusError, BusyError, ValueError, FileNotFoundError, TimeoutError)


def readable(err: BaseException) -> Exception:
    """The message a visitor sees for an exception."""
    import gradio as gr

    if isinstance(err, gr.Error):
        return err
    if isinstance(err, USER_ERRORS):
        logger.info("refused (%s): %s", type(err).__name__, str(err).splitlines()[0] if str(err) else "")
        return gr.Error(str(err) or type(err).__name__)
    logger.error("handler failed", exc_info=err)
    return gr.Error(f"Something went wrong on the server ({type(err).__name__}); it was logged and the demo keeps "
                    "serving. Try another input.")


def guarded(fn: Callable) -> Callable:
    """Wrap a handler (plain or generator) so every exception reaches the page as a readable message."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen(*args: Any, **kwargs: Any) -> Iterator[Any]:
            try:
                yield from fn(*args, **kwargs)
            except Exception as err:
                raise readable(err) from None
        return gen

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            raise readable(err) from None
    return call


def _progress(progress: Any) -> Callable[[float, str], None] | None:
    if progress is None:
        return None
    return lambda fraction, text: progress(fraction, desc=text)


def _strict_text(what: str, value: Any) -> str | None:
    """An API text field: a string or nothing; anything else is refused, not turned into its repr."""
    if value is None or isinstance(value, str):
        return value
    raise DemoInputError(f"{what} must be a string (or null), got {type(value).__name__}")


def _strict_number(what: str, value: Any, whole: bool = False) -> float | int:
    """An API number: a JSON number (not a string, not true/false), finite, and whole where asked."""
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DemoInputError(f"{what} must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise DemoInputError(f"{what} must be a finite number, got {value!r}")
    if whole:
        if float(value) != int(value):
            raise DemoInputError(f"{what} must be a whole number, got {value!r}")
        return int(value)
    return float(value)


class Handlers:
    """What the page's buttons call; tests call these directly. `visitor` is the browser's key (`gr.BrowserState`):
    it opens that visitor's own corpora and no one else's."""

    def __init__(self, service: SearchService):
        self.service = service
        self.records: dict[str, list[dict]] = {}  # loaded predictions files, by label
        self.quality: dict[str, list[list[Any]]] = {}  # their decision-quality tables, by label

    # ------------------------------------------------------------------ visitors
    def visitor_start(self, key: str | None) -> tuple[str, list[str], list[list[Any]], list[str]]:
        """On page load: the visitor's key (a new one for a new browser), and their lists: corpora (shared and
        their own), the corpora table and the explorer's files, as they are now (not as at server start)."""
        from msolomon.demo.visitors import KEY_PATTERN, new_key

        if not isinstance(key, str) or not KEY_PATTERN.match(key):
            key = new_key()
        return key, self.corpus_names(key), self.corpora_rows(key), self.explorer_choices()

    # ------------------------------------------------------------------ search
    def _request(self, text: str | None, image: str | None, instruction: str | None, mode: str, threshold: Any,
                 top_k: Any, corpus: str, example_id: str | None = None, visitor: str | None = None) -> SearchRequest:
        return SearchRequest(text=text, image=image or None, instruction=instruction, mode=mode,
                             threshold=threshold if threshold is not None else 0.5,
                             top_k=top_k if top_k is not None else 10, corpus=corpus, example_id=example_id or None,
                             visitor=visitor)

    @staticmethod
    def view(out: SearchOutcome, what_if: str = "") -> tuple:
        """The search tab's outputs for one (partial or final) outcome."""
        import gradio as gr

        images = render.gallery_items(out) if out.final else []
        return (render.decision_label(out), render.decision_html(out), out.augmentation or "",
                gr.update(value=images, visible=bool(images)), render.hits_html(out),
                render.latency_html(out.timings, "server time per step") if out.final else "", what_if)

    @staticmethod
    def cleared() -> tuple:
        """The search tab's outputs emptied: shown at once when a search starts, so that the results of the last
        query never sit under a new query's error."""
        import gradio as gr

        return None, "", "", gr.update(value=[], visible=False), "", "", ""

    @guarded
    def search(self, text: str | None, image: str | None, instruction: str | None, mode: str, threshold: float,
               top_k: int, corpus: str, example_id: str | None = None, visitor: str | None = None) -> Iterator[tuple]:
        """Stream the search, then (when the demo shows it) what the other path gives for the same query."""
        req = self._request(text, image, instruction, mode, threshold, top_k, corpus, example_id, visitor)
        final = None
        for out in self.service.stream(req):
            if out.final:
                final = out
                if self.service.settings.what_if:
                    yield self.view(out, render.what_if_html(None, pending=True))
                    continue
            yield self.view(out)
        if final is not None and self.service.settings.what_if:
            yield self.view(final, render.what_if_html(self.service.what_if(req, final)))

    @guarded
    def step_by_step(self, text: str | None, image: str | None, instruction: str | None, mode: str,
                     threshold: float, top_k: int, corpus: str, example_id: str | None = None,
                     visitor: str | None = None) -> str:
        req = self._request(text, image, instruction, mode, threshold, top_k, corpus, example_id, visitor)
        return render.step_html(self.service.step_by_step(req))

    @guarded
    def api_search(self, text: Any = None, image: str | None = None, instruction: Any = None, mode: Any = "auto",
                   threshold: Any = 0.5, top_k: Any = 10, corpus: Any = None, visitor: Any = None) -> dict:
        """The `/search` endpoint: batched with other concurrent searches; the outcome as JSON. Every field is
        taken as sent (JSON) and refused when it has the wrong type, never coerced."""
        from msolomon.demo.corpus import ALL_MINIMMEB

        text = _strict_text("text", text)
        instruction = _strict_text("instruction", instruction)
        mode = _strict_text("mode", mode) or "auto"
        corpus = _strict_text("corpus", corpus) or ALL_MINIMMEB
        visitor = _strict_text("visitor", visitor)
        from msolomon.demo.visitors import KEY_PATTERN

        if visitor is not None and not KEY_PATTERN.match(visitor):
            raise DemoInputError("visitor must be a visitor key: 16 to 64 letters, digits, '-' or '_' (or null for "
                                 "the shared corpora only)")
        threshold = _strict_number("threshold", 0.5 if threshold is None else threshold)
        top_k = _strict_number("top_k", 10 if top_k is None else top_k, whole=True)
        req = self._request(text, image, instruction, mode, threshold, top_k, corpus, None, visitor)
        return self.service.search(req).to_json()

    @guarded
    def compare(self, text: str | None, image: str | None, instruction: str | None, threshold: float, top_k: int,
                corpus: str, example_id: str | None = None, visitor: str | None = None, progress: Any = None) -> str:
        req = self._request(text, image, instruction, "auto", threshold, top_k, corpus, example_id, visitor)
        runs, note = self.service.compare(req, _progress(progress))
        return render.compare_html(runs, note)

    # ------------------------------------------------------------------ corpora
    def corpus_names(self, visitor: str | None = None) -> list[str]:
        return list(self.service.corpora_for(visitor))

    def corpora_rows(self, visitor: str | None = None) -> list[list[Any]]:
        shared = set(self.service.corpora)
        return [[c.name, len(c), sum(p["image"] is not None for p in c.payloads),
                 c.note + ("" if c.name in shared else " (yours: only this browser sees it)")]
                for c in self.service.corpora_for(visitor).values()]

    def index_corpus(self, name: str | None, images: list[str] | None, text_file: str | None,
                     visitor: str | None = None, progress: Any = None) -> tuple[str, list[str], str | None,
                                                                                list[list[Any]]]:
        """Returns (status, corpus names, the corpus to select, corpora table). A refused upload says why in the
        status and leaves the lists and the table as they were."""
        try:
            corpus = self.service.add_custom_corpus(visitor, name or "", images, text_file, _progress(progress))
        except USER_ERRORS as err:
            logger.info("corpus refused: %s", err)
            return (f"⚠ Not indexed: {err}", self.corpus_names(visitor), None, self.corpora_rows(visitor))
        except Exception as err:
            raise readable(err) from None
        status = (f"Indexed **{corpus.name}**: {corpus.note}. It is in the corpus list of the Search tab, for this "
                  "browser only.")
        return status, self.corpus_names(visitor), corpus.name, self.corpora_rows(visitor)

    def delete_corpus(self, name: str | None, visitor: str | None = None) -> tuple[str, list[str], list[list[Any]]]:
        """Delete one of the visitor's own corpora; returns (status, corpus names, corpora table)."""
        try:
            if not name or name in self.service.corpora:
                raise DemoInputError("choose one of your own corpora (the shared ones cannot be deleted)")
            done = self.service.delete_custom_corpus(visitor, name)
            status = f"Deleted **{name}**." if done else f"⚠ {name!r} is not one of your corpora."
        except USER_ERRORS as err:
            status = f"⚠ {err}"
        return status, self.corpus_names(visitor), self.corpora_rows(visitor)

    # ------------------------------------------------------------------ error explorer
    def explorer_folders(self) -> list[Path | None]:
        s = self.service.settings
        return [s.reports_dir, s.cache_dir / "evals"]

    def explorer_choices(self) -> list[str]:
        return list(explorer.find_files(self.explorer_folders()))

    @guarded
    def explorer_open(self, label: str | None) -> tuple[list[list[Any]], Any, list[str], list[list[Any]],
                                                        list[list[Any]]]:
        """Returns (per-dataset table, plot image, dataset names, query rows, decision-quality table)."""
        files = explorer.find_files(self.explorer_folders())
        if not label or label not in files:
            raise DemoInputError("choose a predictions file from the list (files come from the folder given with "
                                 "--reports, or from an evaluation run on this page)")
        path = files[label]
        records = explorer.load(path)
        self.records[label] = records
        name = hashlib.sha1(str(path).encode()).hexdigest()[:12]
        plot = explorer.plot(path, records, self.service.settings.cache_dir / "plots" / f"{name}.png")
        datasets = sorted({r["dataset"] for r in records})
        from msolomon.processing import load_image

        quality = explorer.decision_quality(records)  # also marks each record with its query's category
        self.quality[label] = quality
        return (explorer.dataset_table(records), load_image(plot), datasets, explorer.query_rows(records), quality)

    @guarded
    def explorer_quality_cell(self, label: str | None, row: int, col: int) -> tuple[str, str]:
        """(dataset, category) for a click on a count of the decision-quality table: the query browser lists
        those queries (in auto mode)."""
        cell = explorer.quality_cell(self.quality.get(label or "", []), int(row), int(col))
        if cell is None:
            raise DemoInputError("click a count (helped, hurt, same, missed, saved) to list those queries")
        return cell

    def _selected(self, label: str | None, dataset: str, mode: str, decision: str, outcome: str,
                  quality: str = "all") -> list[dict]:
        if not label or label not in self.records:
            raise DemoInputError("open a predictions file first")
        return explorer.select(self.records[label], dataset or "all", mode or "all", decision or "all",
                               outcome or "all", quality or "all")

    @guarded
    def explorer_filter(self, label: str | None, dataset: str, mode: str, decision: str,
                        outcome: str, quality: str = "all") -> list[list[Any]]:
        return explorer.query_rows(self._selected(label, dataset, mode, decision, outcome, quality))

    @guarded
    def explorer_detail(self, label: str | None, dataset: str, mode: str, decision: str, outcome: str,
                        row: int, quality: str = "all") -> tuple[str, Any]:
        """(detail html, query image) of the row-th query that passes the filters."""
        chosen = self._selected(label, dataset, mode, decision, outcome, quality)
        if not 0 <= int(row) < len(chosen):
            raise DemoInputError(f"no query #{row} under these filters ({len(chosen)} match)")
        r = chosen[int(row)]
        return explorer.detail_html(r), explorer.detail_image(r)

    @guarded
    def explorer_run(self, datasets: list[str] | None, limit: int, modes: list[str] | None,
                     progress: Any = None) -> tuple[list[str], str]:
        """Evaluate the loaded model on a small MiniMMEB subset; returns (file choices, the new file's label)."""
        from msolomon.demo.service import LockedModel

        s = self.service
        limit = int(limit)
        if not 1 <= limit <= s.settings.limits.max_eval_queries:
            raise DemoInputError(f"queries per dataset must be between 1 and {s.settings.limits.max_eval_queries}")
        unknown = [d for d in datasets or [] if d not in s.bench.names]
        if unknown:
            raise DemoInputError(f"unknown dataset(s): {', '.join(unknown)}")
        if progress is not None:
            progress(0.0, desc="evaluating")
        path = explorer.evaluate_from_page(LockedModel(s.model, s.lock), s.data_dir, datasets or [], limit,
                                           modes or [], s.settings.cache_dir / "evals")
        s.prune()
        files = explorer.find_files(self.explorer_folders())
        label = next(k for k, v in files.items() if v == path)
        return list(files), label

    # ------------------------------------------------------------------ model panel
    def panel(self) -> tuple[str, list[list[Any]], str]:
        s = self.service
        path = str(s.settings.model or "assets/model (the shipped default)")
        card_dir = s.settings.model or str(Path(__file__).resolve().parents[2] / "assets" / "model")
        facts = panel.model_facts(s.model, path, s.settings.threads, s.model_key, card_dir)
        return panel.facts_markdown(facts), panel.card_figures(card_dir), panel.live_markdown(s.live_figures())
