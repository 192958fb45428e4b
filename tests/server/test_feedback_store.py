"""The Feedback store on its own: who can name an answer, and what bounds it."""

from __future__ import annotations

import pytest

from slimserve.server.errors import InvalidInputError, NotFoundError
from slimserve.server.observe.feedback import Answer, RecentAnswers, ticket_holder


def answer(caller: str, predicted: tuple[int, ...] = (1, 2)) -> Answer:
    return Answer("digits", "int8", predicted, caller)


def test_a_ticket_names_one_answer_of_one_caller_once() -> None:
    store = RecentAnswers(4, ticket_prefix="w1")
    ticket = store.remember("r-1", answer("alice"))
    assert ticket_holder(ticket) == "w1" and len(ticket) > 32
    with pytest.raises(NotFoundError):  # another caller holding the ticket scores nothing
        store.score("digits", [1, 2], "mallory", ticket=ticket)
    with pytest.raises(NotFoundError):  # nor does the ticket name an answer of another model
        store.score("iris", [1, 2], "alice", ticket=ticket)
    scored, correct = store.score("digits", [1, 0], "alice", ticket=ticket)
    assert (scored.variant, correct) == ("int8", 1)
    with pytest.raises(NotFoundError, match="already scored"):
        store.score("digits", [1, 0], "alice", ticket=ticket)
    assert len(store) == 0


def test_ids_name_answers_only_where_tokens_tell_callers_apart() -> None:
    open_store = RecentAnswers(4)
    ticket = open_store.remember("r-1", answer(""))
    with pytest.raises(InvalidInputError, match="guessable"):  # no tokens: anyone could guess "r-1"
        open_store.score("digits", [1, 2], "", request_id="r-1")
    assert open_store.score("digits", [1, 2], "", ticket=ticket)[1] == 2
    private = RecentAnswers(4, ids_are_private=True)
    private.remember("r-1", answer("alice"))
    private.remember("r-1", answer("bob", (3, 4)))  # the same id, another token: no collision
    assert private.score("digits", [3, 4], "bob", request_id="r-1")[1] == 2
    assert private.score("digits", [1, 2], "alice", request_id="r-1")[1] == 2
    with pytest.raises(InvalidInputError, match="feedback_ticket"):
        private.score("digits", [1], "alice")


def test_each_caller_keeps_its_own_last_answers() -> None:
    """One caller's traffic never pushes another's answers out; the store stays bounded."""
    store = RecentAnswers(2, ids_are_private=True)
    store.remember("kept", answer("alice"))
    tickets = [store.remember(f"flood-{n}", answer("mallory")) for n in range(1000)]
    assert len(store) == 3  # alice's one, mallory's last two
    assert store.score("digits", [1, 2], "alice", request_id="kept")[1] == 2
    with pytest.raises(NotFoundError, match="older than the last 2"):
        store.score("digits", [1, 2], "mallory", ticket=tickets[0])
    assert store.score("digits", [1, 2], "mallory", ticket=tickets[-1])[1] == 2
    renewed = store.remember("flood-999", answer("mallory", (5, 5)))  # the same id again: the newer answer
    assert store.score("digits", [5, 5], "mallory", ticket=renewed)[1] == 2
    assert RecentAnswers(0).remember("r", answer("")) == ""  # capacity 0: nothing kept, no ticket


def test_a_wrong_label_count_keeps_the_answer() -> None:
    store = RecentAnswers(2)
    ticket = store.remember("r", answer(""))
    with pytest.raises(InvalidInputError, match="one label per row"):
        store.score("digits", [1], "", ticket=ticket)
    assert store.score("digits", [1, 2], "", ticket=ticket)[1] == 2
