"""An oracle teacher for MiniMMEB: replies in the real teacher's `<think>…</think><answer>…</answer>` format, built from
the ground truth the generator wrote (`oracle.jsonl`), so teacher synthesis runs end to end with no 72B model.

A real teacher is sometimes wrong and sometimes ignores the format; `error_rate` and `no_answer_rate` reproduce both,
deterministically per (seed, query id), so the synthesis pipeline's filtering and counting can be tested.
"""
from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable
from pathlib import Path

from msolomon.data import DataFormatError


class OracleTeacher:
    """Teacher stand-in backed by MiniMMEB's ground truth.

    `reply(query_id)` answers a train query (id `NAME:train:i`) or a test query (id `NAME:i`, as
    `read_eval_dataset` names them). With probability `error_rate` the answer is a plausible wrong one, with
    probability `no_answer_rate` the reply has no answer tags at all; both draws depend only on (seed, id), so the
    same teacher always gives the same reply, and raising a rate only adds errors (the error set is nested).
    """

    def __init__(self, data_dir: str | Path, error_rate: float = 0.1, seed: int = 0,
                 no_answer_rate: float = 0.0) -> None:
        for name, rate in (("error_rate", error_rate), ("no_answer_rate", no_answer_rate)):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {rate}")
        self.data_dir = Path(data_dir)
        self.error_rate, self.no_answer_rate, self.seed = float(error_rate), float(no_answer_rate), int(seed)
        self._records: dict[str, dict] | None = None
        self._files = sorted(self.data_dir.glob("*/*/oracle.jsonl"))
        if not self._files:  # fail at construction, not at the first reply
            raise FileNotFoundError(f"no oracle.jsonl under {self.data_dir}: is it a MiniMMEB folder? "
                                    f"(python -m msolomon.data.minimmeb --out {self.data_dir})")

    # --- ground truth ---------------------------------------------------------------------------------------
    @property
    def records(self) -> dict[str, dict]:
        """id -> ground-truth record, loaded from every `*/NAME/oracle.jsonl` on first use."""
        if self._records is None:
            records: dict[str, dict] = {}
            for path in self._files:
                with open(path, encoding="utf-8") as fh:
                    for row, line in enumerate(fh):
                        try:
                            rec = json.loads(line)
                            qid, answer = rec["id"], rec["answer"]
                        except (ValueError, KeyError, TypeError) as e:
                            raise DataFormatError(f"{path}: row {row}: bad oracle record ({e})") from e
                        if not isinstance(answer, str) or not answer.strip():
                            raise DataFormatError(f"{path}: row {row}: empty answer")
                        records[qid] = rec
            self._records = records
        return self._records

    def ids(self, dataset: str | None = None, split: str | None = None) -> list[str]:
        """Known query ids, optionally of one dataset and/or split."""
        return [k for k, r in self.records.items()
                if (dataset is None or r.get("dataset") == dataset) and (split is None or r.get("split") == split)]

    def __contains__(self, query_id: object) -> bool:
        return query_id in self.records

    def record(self, query_id: str) -> dict:
        """The ground truth of one query: answer, wrong_answers, facts, question."""
        try:
            return self.records[query_id]
        except KeyError:
            raise KeyError(f"the oracle has no ground truth for query id {query_id!r} (ids look like "
                           f"'NAME:train:0' for train rows and 'NAME:0' for test rows)") from None

    # --- replies ----------------------------------------------------------------------------------------------
    def _draws(self, query_id: str) -> random.Random:
        digest = hashlib.sha256(f"oracle:{self.seed}:{query_id}".encode()).digest()
        return random.Random(int.from_bytes(digest[:8], "big"))

    def outcome(self, query_id: str) -> str:
        """What `reply` gives for this id: "correct", "wrong" or "no_answer"."""
        rng = self._draws(query_id)
        u_format, u_error = rng.random(), rng.random()
        if u_format < self.no_answer_rate:
            return "no_answer"
        return "wrong" if u_error < self.error_rate else "correct"

    def reply(self, query_id: str, prompt: str | None = None) -> str:
        """The teacher's reply for one query. `prompt` is accepted for parity with a real teacher and ignored:
        the oracle knows the answer from the id."""
        rec = self.record(query_id)
        rng = self._draws(query_id)
        rng.random(), rng.random()  # the two draws of `outcome`
        kind = self.outcome(query_id)
        think = " ".join(rec.get("facts") or [])
        if kind == "no_answer":
            return f"<think>{think}</think> I am not able to give a definite answer to this question."
        answer = rec["answer"]
        if kind == "wrong":
            wrong = [w for w in rec.get("wrong_answers") or [] if w != answer]
            if wrong:
                answer = wrong[rng.randrange(len(wrong))]
                think = "Looking at it quickly, the details are hard to make out."
        return f"<think>{think}</think><answer>{answer}</answer>"

    def replies(self, query_ids: Iterable[str], prompts: Iterable[str | None] | None = None) -> list[str]:
        """`reply` for many ids (the batch shape a served teacher has)."""
        ids = list(query_ids)
        ps = list(prompts) if prompts is not None else [None] * len(ids)
        return [self.reply(q, p) for q, p in zip(ids, ps)]

    def is_correct(self, query_id: str, answer: str | None) -> bool:
        """Whether an extracted answer is the ground-truth answer (whitespace-insensitive)."""
        return answer is not None and " ".join(answer.split()) == " ".join(self.record(query_id)["answer"].split())
