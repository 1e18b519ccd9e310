"""The recorded shape of the stored window states (stream_ae.worker.state_shape), on the test
Redis: recorded once, compared with the one compatibility check, refused when unreadable."""

from __future__ import annotations

import pytest
import redis

from stream_ae.errors import IncompatibleModelError, StateFormatError
from stream_ae.model.artifacts import StateShape
from stream_ae.worker.state_shape import check_stored_states, state_shape_key

SHAPE = StateShape(16, ("cpu", "mem"))


def test_the_first_start_records_the_shape_and_later_ones_compare(
    redis_client: redis.Redis,
) -> None:
    assert check_stored_states(redis_client, "p", SHAPE, "model m/v1") == SHAPE
    assert redis_client.get(state_shape_key("p")) == b'{"window": 16, "features": ["cpu", "mem"]}'
    assert check_stored_states(redis_client, "p", SHAPE, "model m/v2") == SHAPE
    for other in (StateShape(24, ("cpu", "mem")), StateShape(16, ("mem", "cpu"))):
        with pytest.raises(IncompatibleModelError, match="model m/v3, for the window states"):
            check_stored_states(redis_client, "p", other, "model m/v3")
    # The record is not overwritten by a refused model, and other prefixes are independent.
    assert check_stored_states(redis_client, "p", SHAPE, "model m/v1") == SHAPE
    assert check_stored_states(redis_client, "q", StateShape(24, ("x",)), "n") == StateShape(
        24, ("x",)
    )


@pytest.mark.parametrize("record", [b"not json", b"[]", b'{"window": 16}'])
def test_an_unreadable_record_is_a_state_format_error(
    record: bytes, redis_client: redis.Redis
) -> None:
    redis_client.set(state_shape_key("p"), record)
    with pytest.raises(StateFormatError, match="p:state-shape"):
        check_stored_states(redis_client, "p", SHAPE, "model m/v1")
