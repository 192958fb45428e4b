"""Online accuracy from feedback: remember recent answers so that apps can report true labels.

Only classifier answers to requests that carry an `id` are remembered: the model, the
variant that answered and its top-1 class per row. `Feedback` scores one of them once and
forgets it. Who may score an answer:

- An answer belongs to its caller (transport.auth.caller_of: the digest of its bearer token,
  '' without one): only the same caller can score it, and callers' ids never collide.
- Each answer also gets a **ticket**, returned with it (the `feedback_ticket` response
  parameter): 128 random bits, so it cannot be guessed, prefixed with the worker that holds
  the answer (`process.peers` passes Feedback to that worker under `--workers`).
- With tokens, the caller's own request id names the answer (no one else can use it). Without
  tokens every caller is '', so anyone could score (and so delete) anyone's answer by guessing
  its id: then only the ticket names it.
- The store is bounded per caller (`capacity` answers each, least recently answered dropped
  first), so one caller's traffic never pushes another's answers out; callers are the tokens
  of the table (or '' without tokens), so the whole store is bounded too.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from dataclasses import dataclass

from slimserve.server.errors import InvalidInputError, NotFoundError

TICKET_RANDOM_BYTES = 16  # 128 bits: not guessable within any number of Feedback calls
TICKET_SEPARATOR = "."  # between the holder's prefix and the random part


@dataclass(frozen=True)
class Answer:
    """What the server answered to one request."""

    model: str
    variant: str
    predicted: tuple[int, ...]  # top-1 class per row
    caller: str = ""  # who was answered (transport.auth.caller_of)


def ticket_holder(ticket: str) -> str:
    """The prefix of the store that issued `ticket` ('' for a server without workers)."""
    prefix, _, _ = ticket.rpartition(TICKET_SEPARATOR)
    return prefix


class RecentAnswers:
    """The last `capacity` classifier answers with a request id, per caller (module docstring)."""

    def __init__(self, capacity: int, *, ids_are_private: bool = False, ticket_prefix: str = "") -> None:
        """`ids_are_private`: callers are told apart by tokens, so a request id names an answer
        only its own caller can score; `ticket_prefix` names this store in its tickets."""
        self.capacity = capacity
        self.ids_are_private = ids_are_private
        self.ticket_prefix = ticket_prefix
        # caller → (model, id) → (answer, ticket), least recently answered first
        self._answers: dict[str, OrderedDict[tuple[str, str], tuple[Answer, str]]] = {}
        self._tickets: dict[str, tuple[str, str, str]] = {}  # ticket → (caller, model, id)

    def __len__(self) -> int:
        return len(self._tickets)

    def remember(self, request_id: str, answer: Answer) -> str:
        """Keep `answer` to the request `request_id`; its ticket ('' when nothing is kept)."""
        if not request_id or self.capacity == 0:
            return ""
        answers = self._answers.setdefault(answer.caller, OrderedDict())
        key = (answer.model, request_id)
        if key in answers:  # the same id again: the newer answer is the one to score
            self._tickets.pop(answers.pop(key)[1], None)
        ticket = f"{self.ticket_prefix}{TICKET_SEPARATOR}{secrets.token_hex(TICKET_RANDOM_BYTES)}"
        answers[key] = (answer, ticket)
        self._tickets[ticket] = (answer.caller, *key)
        while len(answers) > self.capacity:
            _, (_, dropped) = answers.popitem(last=False)
            del self._tickets[dropped]
        return ticket

    def score(
        self, model: str, labels: list[int], caller: str = "", *, request_id: str = "", ticket: str = ""
    ) -> tuple[Answer, int]:
        """(the answer, how many rows it got right); the answer is forgotten afterwards. The
        answer is named by its ticket or, with tokens, by its request id; another caller's
        answer is as unknown as one never given."""
        key = self._key(model, caller, request_id, ticket)
        answers = self._answers.get(caller, OrderedDict())
        if key not in answers:
            named = f"ticket '{ticket}'" if ticket else f"request id '{request_id}'"
            raise NotFoundError(
                f"no answer of model '{model}' with {named} is remembered: it is unknown, already scored, "
                f"older than the last {self.capacity} answers to this caller, or given to another caller"
            )
        answer, _ = answers[key]
        if len(labels) != len(answer.predicted):
            raise InvalidInputError(
                f"{len(labels)} label(s) for a request of {len(answer.predicted)} row(s); send one label per row"
            )
        del self._tickets[answers.pop(key)[1]]
        return answer, sum(int(p == t) for p, t in zip(answer.predicted, labels, strict=True))

    def _key(self, model: str, caller: str, request_id: str, ticket: str) -> tuple[str, str]:
        if ticket:
            owner, owned_model, owned_id = self._tickets.get(ticket, ("", "", ""))
            if owner != caller or owned_model != model:  # unknown, or not this caller's: the same answer
                return (model, "")  # no answer has an empty id
            return (model, owned_id)
        if not request_id:
            raise InvalidInputError(
                "name the answer: send the `feedback_ticket` parameter its response carried as `ticket`"
            )
        if not self.ids_are_private:
            raise InvalidInputError(
                "this server has no tokens, so request ids are shared by every caller and guessable: "
                "send the `feedback_ticket` parameter the answer carried as `ticket` instead of its id"
            )
        return (model, request_id)
