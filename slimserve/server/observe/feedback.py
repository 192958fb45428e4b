"""Online accuracy from feedback: remember recent answers so that apps can report true labels.

Only classifier answers to requests that carry an `id` are remembered: the model, the
variant that answered and its top-1 class per row, in a bounded least-recently-answered
store. `Feedback(model, request_id, labels)` scores them once and forgets them. An answer
belongs to its caller (transport.auth.caller_of: the digest of its bearer token, '' without
one): only the same caller can score it, and callers' ids never collide or overwrite.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from slimserve.server.errors import InvalidInputError, NotFoundError


@dataclass(frozen=True)
class Answer:
    """What the server answered to one request."""

    model: str
    variant: str
    predicted: tuple[int, ...]  # top-1 class per row
    caller: str = ""  # who was answered (transport.auth.caller_of)


class RecentAnswers:
    """The last `capacity` classifier answers with a request id."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._answers: OrderedDict[tuple[str, str, str], Answer] = OrderedDict()  # (caller, model, id)

    def remember(self, request_id: str, answer: Answer) -> None:
        if not request_id or self.capacity == 0:
            return
        key = (answer.caller, answer.model, request_id)
        self._answers[key] = answer
        self._answers.move_to_end(key)
        while len(self._answers) > self.capacity:
            self._answers.popitem(last=False)

    def score(self, model: str, request_id: str, labels: list[int], caller: str = "") -> tuple[Answer, int]:
        """(the answer, how many rows it got right); the answer is forgotten afterwards.
        Another caller's answer is as unknown as one never given."""
        if not request_id:
            raise InvalidInputError("request_id is empty; send the id the inference request carried")
        answer = self._answers.get((caller, model, request_id))
        if answer is None:
            raise NotFoundError(
                f"no answer of model '{model}' with request id '{request_id}' is remembered: the id is unknown, "
                f"already scored, older than the last {self.capacity} answers, or given to another token"
            )
        if len(labels) != len(answer.predicted):
            raise InvalidInputError(
                f"{len(labels)} label(s) for a request of {len(answer.predicted)} row(s); send one label per row"
            )
        del self._answers[(caller, model, request_id)]
        return answer, sum(int(p == t) for p, t in zip(answer.predicted, labels, strict=True))
