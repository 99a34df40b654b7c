"""Teacher backends for query augmentation synthesis (`python -m training.synthesize`).

Every backend takes `TeacherItem`s and yields one `TeacherReply` per item, in any order, as soon as it is ready,
so the synthesis stage can write each result the moment it arrives. A backend never builds prompt text
itself: the teacher prompt comes from `msolomon.prompts` (through `TeacherItem.prompt`).

- `OracleBackend`       MiniMMEB's oracle teacher (ground truth in the teacher's reply format, with noise).
- `TransformersBackend` any local Qwen2-VL / Qwen2.5-VL instruct checkpoint, left-padded batched greedy generate.
- `OpenAIBackend`       an OpenAI-compatible chat-completions server (vLLM serving Qwen2.5-VL-72B-Instruct):
                        images as PNG data URLs, a thread pool, per-request timeouts, retries with exponential
                        backoff and jitter on timeouts, connection errors, HTTP 429 and 5xx.

The OpenAI client is the standard library (`urllib`), not the `openai` package: it adds no dependency, and the
retry policy is exactly the one above (the `openai` client also retries 408/409 and has a 0.5 s backoff floor,
which would make the loopback tests slow), with every knob in `OpenAISettings`.
"""
from __future__ import annotations

import base64
import http.client
import io
import json
import logging
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from msolomon import prompts

logger = logging.getLogger(__name__)

BACKENDS = ("oracle", "transformers", "openai")


@dataclass(frozen=True)
class TeacherItem:
    """One query to augment: its id, dataset, the teacher's `{question}` and the query image (a path) if any."""

    id: str
    dataset: str
    question: str
    image: str | None = None

    @property
    def prompt(self) -> str:
        """The whole teacher prompt (R1 style: think, then answer in tags), from the format module."""
        return prompts.teacher_prompt(self.question)


@dataclass
class TeacherReply:
    """A teacher's raw reply to one item, or the error that stopped it (after any retries)."""

    item: TeacherItem
    reply: str | None = None
    error: str | None = None


class TeacherError(RuntimeError):
    """A teacher could not be set up (bad checkpoint, unreachable server, no oracle for the data)."""


class Teacher:
    """Base class: `replies(items)` yields one `TeacherReply` per item, in completion order."""

    name = "teacher"

    def describe(self) -> dict[str, Any]:
        """What produced the replies (recorded in the run summary)."""
        return {"backend": self.name}

    def replies(self, items: Iterable[TeacherItem]) -> Iterator[TeacherReply]:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        """Release resources (thread pools, models)."""


# --------------------------------------------------------------------------------------------------------- oracle

class OracleBackend(Teacher):
    """MiniMMEB's oracle teacher: replies built from the generator's ground truth (see `msolomon.data.oracle`)."""

    name = "oracle"

    def __init__(self, data_dir: str | Path, error_rate: float = 0.1, no_answer_rate: float = 0.0, seed: int = 0,
                 delay: float = 0.0) -> None:
        try:
            from msolomon.data.oracle import OracleTeacher
        except ImportError as err:  # pragma: no cover - the module ships with the project
            raise TeacherError(f"the oracle backend needs msolomon.data.oracle ({err})") from None
        try:
            self.oracle = OracleTeacher(data_dir, error_rate=error_rate, seed=seed, no_answer_rate=no_answer_rate)
        except (OSError, ValueError) as err:
            raise TeacherError(f"no oracle teacher for {data_dir}: {err}") from None
        self.settings = {"error_rate": error_rate, "no_answer_rate": no_answer_rate, "seed": seed}
        self.delay = delay  # seconds per item: only for tests that kill a run part-way

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, **self.settings}

    def replies(self, items: Iterable[TeacherItem]) -> Iterator[TeacherReply]:
        for item in items:
            if self.delay:
                time.sleep(self.delay)
            try:
                yield TeacherReply(item, reply=self.oracle.reply(item.id, item.prompt))
            except (KeyError, ValueError) as err:
                yield TeacherReply(item, error=f"oracle has no reply for {item.id!r}: {err}")


# --------------------------------------------------------------------------------------------------- transformers

def _find_chat_template(tokenizer, path: Path) -> str | None:
    """The checkpoint's chat template: on the tokenizer, else in chat_template.jinja / chat_template.json."""
    template = getattr(tokenizer, "chat_template", None)
    if template:
        return template
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    js = path / "chat_template.json"
    if js.is_file():
        try:
            return json.loads(js.read_text(encoding="utf-8")).get("chat_template") or None
        except (json.JSONDecodeError, AttributeError):
            logger.warning("%s is not valid JSON; ignoring it", js)
    return None


class TransformersBackend(Teacher):
    """A local Qwen2-VL / Qwen2.5-VL instruct checkpoint: left-padded batched greedy `generate`, new tokens only.

    The prompt uses the checkpoint's own chat template when it has one (one user turn: the image, then the whole
    teacher prompt as text); otherwise the format module's Qwen chat layout (`prompts.render_prompt`).
    """

    name = "transformers"

    def __init__(self, model_path: str | Path, batch_size: int = 4, max_new_tokens: int = 512,
                 device: str | None = None) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoTokenizer

        from msolomon.backbone import load_processor

        self.path = Path(model_path)
        if not self.path.is_dir():
            raise TeacherError(f"--model {model_path}: not a local checkpoint folder")
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.path))
            self.processor = load_processor(self.path, self.tokenizer)
            if device is None and torch.cuda.is_available():
                self.model = AutoModelForImageTextToText.from_pretrained(
                    str(self.path), dtype=torch.bfloat16, device_map="auto")
            else:
                device = device or "cpu"
                dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
                self.model = AutoModelForImageTextToText.from_pretrained(str(self.path), dtype=dtype).to(device)
        except (OSError, ValueError) as err:
            raise TeacherError(f"cannot load a teacher from {self.path}: {err}") from None
        self.model.eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or prompts.PAD
        self.chat_template = _find_chat_template(self.tokenizer, self.path)
        logger.info("teacher %s (%s) on %s; prompt layout: %s", self.path, type(self.model).__name__,
                    self.model.device, "checkpoint chat template" if self.chat_template else "prompts.render_prompt")

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": str(self.path), "batch_size": self.batch_size,
                "max_new_tokens": self.max_new_tokens, "chat_template": bool(self.chat_template)}

    def prompt_text(self, item: TeacherItem) -> str:
        """The text the model reads for one item (with one image placeholder block when it has an image)."""
        if self.chat_template:
            content: list[dict[str, str]] = [{"type": "image"}] if item.image else []
            content.append({"type": "text", "text": item.prompt})
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": content}], chat_template=self.chat_template, tokenize=False,
                add_generation_prompt=True)
        return prompts.render_prompt(item.prompt, has_image=item.image is not None)

    def replies(self, items: Iterable[TeacherItem]) -> Iterator[TeacherReply]:
        batch: list[TeacherItem] = []
        for item in items:
            batch.append(item)
            if len(batch) >= self.batch_size:
                yield from self._run_batch(batch)
                batch = []
        if batch:
            yield from self._run_batch(batch)

    def _run_batch(self, batch: list[TeacherItem]) -> Iterator[TeacherReply]:
        import torch

        from msolomon.processing import load_image

        ready: list[tuple[TeacherItem, str, Any]] = []
        for item in batch:
            try:
                image = load_image(item.image) if item.image else None
            except ValueError as err:  # ImageError: a bad file fails its own item, not the batch
                yield TeacherReply(item, error=str(err))
                continue
            ready.append((item, self.prompt_text(item), image))
        if not ready:
            return
        images = [image for _, _, image in ready if image is not None]
        inputs = self.processor(text=[text for _, text, _ in ready], images=images or None, padding=True,
                                return_tensors="pt")
        inputs = inputs.to(self.model.device)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      pad_token_id=self.tokenizer.pad_token_id)
        new_tokens = out[:, inputs["input_ids"].shape[1]:]
        texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        for (item, _, _), text in zip(ready, texts, strict=True):
            yield TeacherReply(item, reply=text.strip())

    def close(self) -> None:
        self.model = None


# --------------------------------------------------------------------------------------------------------- openai

@dataclass
class OpenAISettings:
    """How to talk to an OpenAI-compatible chat-completions server."""

    base_url: str = "http://127.0.0.1:8000/v1"
    model: str | None = None  # None: ask GET {base_url}/models and use the one model it serves
    api_key: str | None = None
    concurrency: int = 8
    timeout: float = 120.0  # seconds per request (socket connect/read timeout)
    retries: int = 4  # extra attempts after the first, on timeouts, connection errors, 429 and 5xx
    backoff: float = 1.0  # first backoff in seconds; doubles per attempt, with jitter in [0.5, 1.5)
    backoff_max: float = 60.0
    max_tokens: int = 512
    temperature: float = 0.0
    # images are sent only from inside this folder (after resolving `..` and symbolic links); None: none are sent
    image_root: str | None = None
    allow_images_outside_root: bool = False  # only for data you trust


class _Retryable(Exception):
    """A failure worth another attempt (timeout, connection error, 429, 5xx), with an optional Retry-After."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _Fatal(Exception):
    """A failure that another attempt will not fix (4xx other than 429, a malformed response)."""


def image_data_url(path: str) -> str:
    """The image as a `data:image/png;base64,...` URL (checked and converted to RGB by `load_image`)."""
    from msolomon.processing import load_image

    buf = io.BytesIO()
    load_image(path).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def chat_request(item: TeacherItem, model: str, max_tokens: int, temperature: float = 0.0) -> dict[str, Any]:
    """The chat-completions body for one item: one user turn, the image (if any) then the whole teacher prompt.

    No separate system message: the teacher prompt already carries the R1-style instructions (`TEACHER_SYSTEM`),
    and sending them twice would change what the teacher reads.
    """
    content: list[dict[str, Any]] = []
    if item.image:
        content.append({"type": "image_url", "image_url": {"url": image_data_url(item.image)}})
    content.append({"type": "text", "text": item.prompt})
    return {"model": model, "messages": [{"role": "user", "content": content}],
            "temperature": temperature, "max_tokens": max_tokens}


def _retry_after(headers) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class OpenAIBackend(Teacher):
    """An OpenAI-compatible chat-completions server, called from a thread pool; replies arrive as they finish."""

    name = "openai"

    def __init__(self, settings: OpenAISettings) -> None:
        if settings.concurrency < 1 or settings.timeout <= 0 or settings.retries < 0:
            raise TeacherError("concurrency must be >= 1, timeout > 0 and retries >= 0")
        self.settings = settings
        self.base_url = settings.base_url.rstrip("/")
        if not self.base_url.startswith(("http://", "https://")):
            raise TeacherError(f"--base-url must start with http:// or https://, got {settings.base_url!r}")
        self._rng = random.Random()
        self._rng_lock = threading.Lock()
        self._stop = threading.Event()  # set by close(): workers stop retrying and return at once
        self.model = settings.model or self._served_model()

    def describe(self) -> dict[str, Any]:
        s = self.settings
        return {"backend": self.name, "base_url": self.base_url, "model": self.model, "concurrency": s.concurrency,
                "timeout": s.timeout, "retries": s.retries, "max_tokens": s.max_tokens, "temperature": s.temperature}

    # -- HTTP
    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.settings.api_key:
            headers["Authorization"] = f"Bearer {self.settings.api_key}"
        return headers

    def _call(self, method: str, path: str, body: dict | None = None) -> Any:
        """One HTTP request; raises `_Retryable` or `_Fatal` with a message naming the problem."""
        data = json.dumps(body).encode("utf-8") if body is not None else None
        req = urllib.request.Request(self.base_url + path, data=data, method=method, headers=self._headers())
        try:
            with urllib.request.urlopen(req, timeout=self.settings.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as err:
            detail = err.read()[:300].decode("utf-8", "replace").strip()
            message = f"HTTP {err.code} from {path}: {detail or err.reason}"
            if err.code == 429 or err.code >= 500:
                raise _Retryable(message, _retry_after(err.headers)) from None
            raise _Fatal(message) from None
        except (TimeoutError, socket.timeout) as err:
            raise _Retryable(f"timed out after {self.settings.timeout:g}s ({err})") from None
        except urllib.error.URLError as err:
            if isinstance(err.reason, (TimeoutError, socket.timeout)):
                raise _Retryable(f"timed out after {self.settings.timeout:g}s ({err.reason})") from None
            raise _Retryable(f"cannot reach {self.base_url}: {err.reason}") from None
        except (ConnectionError, OSError, http.client.HTTPException) as err:  # reset, refused, incomplete read
            raise _Retryable(f"connection error: {type(err).__name__}: {err}") from None
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            raise _Fatal(f"{path} returned a body that is not JSON: {raw[:200]!r}") from None

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        s = self.settings
        with self._rng_lock:
            jitter = 0.5 + self._rng.random()
        delay = min(s.backoff_max, s.backoff * (2 ** attempt)) * jitter
        if retry_after is not None:
            delay = max(delay, min(retry_after, s.backoff_max))
        return delay

    def _with_retries(self, what: str, fn) -> Any:
        attempts = self.settings.retries + 1
        for attempt in range(attempts):
            if self._stop.is_set():
                raise _Fatal("stopped")
            try:
                return fn()
            except _Retryable as err:
                if attempt + 1 >= attempts:
                    raise _Fatal(f"{err} (gave up after {attempts} attempts)") from None
                delay = self._backoff(attempt, err.retry_after)
                logger.debug("%s: %s; retry %d/%d in %.2fs", what, err, attempt + 1, attempts - 1, delay)
                self._stop.wait(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _served_model(self) -> str:
        try:
            listing = self._with_retries("GET /models", lambda: self._call("GET", "/models"))
        except _Fatal as err:
            raise TeacherError(f"cannot list the models of {self.base_url} (pass --api-model): {err}") from None
        ids = [m.get("id") for m in (listing or {}).get("data", []) if isinstance(m, dict) and m.get("id")]
        if len(ids) != 1:
            raise TeacherError(f"{self.base_url} serves {len(ids)} models ({', '.join(ids) or 'none'}): "
                               "pass --api-model NAME")
        logger.info("teacher model from %s/models: %s", self.base_url, ids[0])
        return ids[0]

    # -- one item
    def _refuse_image(self, item: TeacherItem) -> str | None:
        """Why the item's image must not leave the machine (outside the image root), or None when it may."""
        from msolomon.data.mmeb import OUTSIDE_ROOT_FLAG, inside_root

        s = self.settings
        if not item.image or s.allow_images_outside_root:
            return None
        if s.image_root is None:
            return (f"image {item.image} not sent: the OpenAI teacher sends images only from inside an image root "
                    "(OpenAISettings.image_root), and none is set")
        if not inside_root(item.image, s.image_root):
            return (f"image {item.image} not sent: it resolves outside the image root {s.image_root}; pass "
                    f"{OUTSIDE_ROOT_FLAG} if you trust this dataset")
        return None

    def complete(self, item: TeacherItem) -> TeacherReply:
        """One item, with retries; never raises for a per-item failure (it becomes `TeacherReply.error`)."""
        s = self.settings
        refused = self._refuse_image(item)
        if refused:
            return TeacherReply(item, error=refused)
        try:
            body = chat_request(item, self.model, s.max_tokens, s.temperature)
        except ValueError as err:  # ImageError: unreadable or unsafe image
            return TeacherReply(item, error=str(err))
        try:
            data = self._with_retries(item.id, lambda: self._call("POST", "/chat/completions", body))
        except _Fatal as err:
            return TeacherReply(item, error=str(err))
        try:
            message = data["choices"][0]["message"]
            content = message.get("content")
        except (KeyError, IndexError, TypeError, AttributeError):
            return TeacherReply(item, error=f"malformed chat completion: {json.dumps(data)[:200]}")
        if isinstance(content, list):  # some servers return content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            return TeacherReply(item, error="chat completion has no text content")
        return TeacherReply(item, reply=content)

    def replies(self, items: Iterable[TeacherItem]) -> Iterator[TeacherReply]:
        """Up to `concurrency` requests in flight; a reply is yielded as soon as its request finishes."""
        limit = self.settings.concurrency
        pool = ThreadPoolExecutor(max_workers=limit, thread_name_prefix="teacher")
        pending: set[Future] = set()
        source = iter(items)
        try:
            exhausted = False
            while True:
                while not exhausted and len(pending) < 2 * limit:  # a small queue keeps the workers busy
                    item = next(source, None)
                    if item is None:
                        exhausted = True
                        break
                    pending.add(pool.submit(self.complete, item))
                if not pending:
                    break
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
        finally:
            for future in pending:
                future.cancel()
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        self._stop.set()
