"""Triton's schedule-policy parameters through a real server and `tritonclient.grpc`:
`priority` (a request of level 1 overtakes queued ones of the default level) and `timeout`
(a request still queued when it ends is answered UNAVAILABLE "Request timeout expired").

The server serves a copy of digits whose batcher waits up to QUEUE_DELAY_MS for a batch of
MAX_BATCH_ROWS rows: requests that do not fill a batch stay queued for as long as a test
needs, and a request that fills it sends the batch at once. What a test checks is which
requests shared a batch (the `batch_size` each answer carries), never how long anything took.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import yaml
from pydantic import ValidationError
from tritonclient.utils import InferenceServerException

from loadtest.messages import DIGITS_SHAPE, triton_inputs
from loadtest.serving import RunningServer, copy_model, wait_until
from slimserve.repository.format import MODEL_FILE, ModelConfig, ModelEntry
from slimserve.server.core.batcher import RequestTimeoutError
from slimserve.server.transport.status import status_for
from tests.server.scrape import scrape, value

MAX_BATCH_ROWS = 4
QUEUE_DELAY_MS = 10_000  # far longer than any test waits: only a full batch leaves the queue
CLIENT_TIMEOUT_S = 60.0  # the gRPC deadline: never the one that ends a call here
QUEUED_TIMEOUT_S = 30.0  # for requests to be seen queued (the metrics are published every 0.25 s)


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """digits with two priority levels (2 the default) and a batching wait no test sits out."""
    target = tmp_path_factory.mktemp("priority-repo")
    folder = copy_model(repository, "digits", target)
    config = yaml.safe_load((folder / MODEL_FILE).read_text())
    config.update(max_batch_size=MAX_BATCH_ROWS, max_queue_delay_ms=QUEUE_DELAY_MS,
                  priority_levels=2, default_priority_level=2)  # fmt: skip
    (folder / MODEL_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
    running = RunningServer(target, tmp_path_factory.mktemp("priority-server"))
    yield running
    assert running.stop() == 0


@pytest.fixture
def client(server: RunningServer) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(server.address) as connected:
        yield connected


def send(client: triton.InferenceServerClient, rows: int, **schedule: int) -> Future[triton.InferResult]:
    """`rows` blank images to digits' fp32, answered into the future; `schedule`: priority, timeout."""
    answer: Future[triton.InferResult] = Future()

    def done(result: triton.InferResult | None, error: InferenceServerException | None) -> None:
        if error is not None:
            answer.set_exception(error)
        else:
            answer.set_result(result)

    images = np.zeros((rows, *DIGITS_SHAPE), np.float32)
    client.async_infer("digits", triton_inputs({"images": images}), done, model_version="fp32",
                       client_timeout=CLIENT_TIMEOUT_S, **schedule)  # fmt: skip
    return answer


def batch_size(answer: Future[triton.InferResult]) -> int:
    """Rows in the session call the request was part of (its response's `batch_size`)."""
    return int(answer.result(timeout=CLIENT_TIMEOUT_S).get_response().parameters["batch_size"].int64_param)


def wait_queued(server: RunningServer, requests: int) -> None:
    """Until digits/fp32's queue holds `requests` requests (its gauge in /metrics)."""
    url = server.metrics_url
    assert url is not None

    def queued() -> bool:
        return value(scrape(url), "slimserve_queue_depth", model="digits", variant="fp32") == requests

    wait_until(queued, QUEUED_TIMEOUT_S, f"{requests} requests queued for digits/fp32")


def test_a_priority_one_request_joins_the_batch_ahead_of_queued_ones(
    server: RunningServer, client: triton.InferenceServerClient
) -> None:
    plain = []
    for queued in range(1, 4):  # 3 of 4 rows: they wait for more
        plain.append(send(client, 1))
        wait_queued(server, queued)  # one at a time: async sends may arrive in any order
    urgent = send(client, 2, priority=1)  # 5 rows queued: a batch leaves now, urgent first
    # In arrival order the three would go (3 rows) and urgent after them; by priority, urgent
    # and the first two fill the batch, and the third waits for the next one.
    assert [batch_size(a) for a in (urgent, *plain[:2])] == [MAX_BATCH_ROWS] * 3
    assert not plain[2].done()
    filler = send(client, 3)
    assert batch_size(plain[2]) == batch_size(filler) == MAX_BATCH_ROWS


def test_a_request_whose_timeout_ends_in_the_queue_is_answered_unavailable(
    server: RunningServer, client: triton.InferenceServerClient
) -> None:
    waiting = send(client, 1)
    late = send(client, 1, timeout=200_000)  # µs: 0.2 s, far inside its 60-s gRPC deadline
    with pytest.raises(InferenceServerException) as refused:
        late.result(timeout=CLIENT_TIMEOUT_S)
    assert refused.value.status() == str(grpc.StatusCode.UNAVAILABLE)
    assert refused.value.message().startswith("Request timeout expired")  # Triton's words
    wait_queued(server, 1)  # it left the queue; the other still waits
    filler = send(client, 3)
    assert batch_size(waiting) == batch_size(filler) == MAX_BATCH_ROWS


@pytest.mark.parametrize(
    ("schedule", "named"),
    [({"priority": 3}, "'priority'"), ({"timeout": -5}, "'timeout'"), ({"timeout": 10**15}, "'timeout'")],
)
def test_bad_priority_or_timeout_is_invalid_argument_naming_it(
    client: triton.InferenceServerClient, schedule: dict[str, int], named: str
) -> None:
    with pytest.raises(InferenceServerException) as refused:
        send(client, 1, **schedule).result(timeout=CLIENT_TIMEOUT_S)
    assert refused.value.status() == str(grpc.StatusCode.INVALID_ARGUMENT)
    assert named in refused.value.message()


def test_a_timeout_is_unavailable_as_triton_answers_it_not_deadline_exceeded() -> None:
    assert status_for(RequestTimeoutError("Request timeout expired"))[0] == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    ("levels", "default", "message"),
    [
        (0, 1, "default_priority_level is 1 but priority_levels is 0"),
        (3, 0, r"default_priority_level must be in \[1, 3\]"),
        (3, 4, r"default_priority_level must be in \[1, 3\]"),
        (17, 1, "priority_levels\n  Input should be less than or equal to 16"),
    ],
)
def test_model_yaml_priority_levels_are_checked_as_triton_checks_them(
    digits: ModelEntry, levels: int, default: int, message: str
) -> None:
    fields = {**digits.config.model_dump(), "priority_levels": levels, "default_priority_level": default}
    with pytest.raises(ValidationError, match=message):
        ModelConfig.model_validate(fields)
