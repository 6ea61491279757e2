"""Unit: the Operation aggregate's state machine (AIP-151), no I/O."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from domains.operations.model import (
    RPC_CODES,
    TERMINAL_STATES,
    DispatchSpec,
    IllegalTransition,
    Operation,
    OperationError,
    Progress,
    State,
)
from domains.shared.errors import FailedPrecondition

T0 = dt.datetime(2026, 1, 31, 12, 0, 0, tzinfo=dt.UTC)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def make_op(state: State = State.PENDING, **fields) -> Operation:
    op = Operation(
        id=uuid.UUID("01900000-0000-7000-8000-000000000001"),
        domain="platform",
        type="ping",
        target="pings/x",
        create_time=T0,
        update_time=T0,
        dispatch=DispatchSpec(task_name="platform.ping", queue="platform", args=["x"]),
        lease_seconds=30.0,
        **fields,
    )
    # Drive it to the requested state through legal transitions only.
    if state == State.PENDING:
        return op
    op.start(at(1))
    if state == State.RUNNING:
        return op
    if state == State.SUCCEEDED:
        op.succeed(at(2), {"ok": True})
    elif state == State.FAILED:
        op.fail(at(2), OperationError(status="INTERNAL", message="boom"))
    elif state == State.CANCELLING:
        op.request_cancel(at(2))
    elif state == State.CANCELLED:
        op.request_cancel(at(2))
        op.mark_cancelled(at(3))
    assert op.state == state
    return op


# --------------------------------------------------------------------------- naming


def test_name_is_operations_slash_domain_dot_id():
    op = make_op()
    assert op.name == "operations/platform.01900000-0000-7000-8000-000000000001"


def test_new_operation_is_pending_not_done_with_no_attempts():
    op = make_op()
    assert op.state == State.PENDING
    assert op.done is False
    assert op.attempt == 0
    assert op.dispatch_count == 0


@pytest.mark.parametrize("state", list(State))
def test_done_is_true_exactly_for_terminal_states(state):
    assert make_op(state).done is (state in TERMINAL_STATES)


# ----------------------------------------------------------------------- legal moves


def test_start_from_pending_runs_first_attempt_and_sets_times():
    op = make_op()
    token = op.start(at(5))
    assert token == 1
    assert op.attempt == 1
    assert op.state == State.RUNNING
    assert op.start_time == at(5)
    assert op.heartbeat_time == at(5)
    assert op.update_time == at(5)
    assert op.end_time is None


def test_start_after_lease_expiry_takes_over_and_increments_attempt():
    op = make_op(State.RUNNING)  # started at t=1, lease 30 s
    assert op.is_lease_expired(at(31.5))
    token = op.start(at(31.5))
    assert token == 2
    assert op.attempt == 2
    assert op.state == State.RUNNING
    assert op.start_time == at(1)  # the first start is kept
    assert op.heartbeat_time == at(31.5)


def test_heartbeat_extends_the_lease():
    op = make_op(State.RUNNING)
    op.heartbeat(at(25), Progress(done=3, total=10, message="step"))
    assert not op.is_lease_expired(at(50))
    assert op.progress == Progress(done=3, total=10, message="step")
    assert op.update_time == at(25)
    with pytest.raises(IllegalTransition):
        op.start(at(50))


def test_heartbeat_without_progress_keeps_progress():
    op = make_op(State.RUNNING)
    op.progress = Progress(done=1, total=2)
    op.heartbeat(at(2))
    assert op.progress == Progress(done=1, total=2)


def test_heartbeat_is_allowed_while_cancelling():
    op = make_op(State.CANCELLING)
    op.heartbeat(at(4))
    assert op.heartbeat_time == at(4)


def test_succeed_from_running_records_response_and_end_time():
    op = make_op(State.RUNNING)
    op.succeed(at(9), {"reply": "pong"})
    assert op.state == State.SUCCEEDED
    assert op.done
    assert op.response == {"reply": "pong"}
    assert op.error is None
    assert op.end_time == at(9)


def test_succeed_while_cancelling_still_succeeds():
    op = make_op(State.CANCELLING)
    op.succeed(at(9), {"reply": "late"})
    assert op.state == State.SUCCEEDED
    assert op.error is None


@pytest.mark.parametrize("state", [State.PENDING, State.RUNNING, State.CANCELLING])
def test_fail_from_unfinished_state_records_error(state):
    op = make_op(state)
    op.fail(at(9), OperationError(status="DEADLINE_EXCEEDED", message="lost"))
    assert op.state == State.FAILED
    assert op.done
    assert op.end_time == at(9)
    assert op.error is not None
    assert op.error.code == 4


def test_release_gives_running_operation_back_to_pending_with_note():
    op = make_op(State.RUNNING)
    op.progress = Progress(done=2, total=5)
    op.release(at(3), "transient " * 100)
    assert op.state == State.PENDING
    assert not op.done
    assert op.attempt == 1  # the fencing token is kept; the next start increments it
    assert op.progress.done == 2
    assert len(op.progress.message) == 500
    assert op.start(at(4)) == 2


def test_cancel_pending_ends_cancelled_at_once():
    op = make_op()
    op.request_cancel(at(2))
    assert op.state == State.CANCELLED
    assert op.done
    assert op.end_time == at(2)
    assert op.error is not None
    assert op.error.status == "CANCELLED"
    assert op.error.code == 1


def test_cancel_running_becomes_cancelling_then_cancelled_by_worker():
    op = make_op(State.RUNNING)
    op.request_cancel(at(2))
    assert op.state == State.CANCELLING
    assert not op.done
    op.mark_cancelled(at(3))
    assert op.state == State.CANCELLED
    assert op.end_time == at(3)
    assert op.error is not None
    assert op.error.to_dict()["code"] == 1


def test_cancel_cancelling_is_a_no_op():
    op = make_op(State.CANCELLING)
    before = op.update_time
    op.request_cancel(at(10))
    assert op.state == State.CANCELLING
    assert op.update_time == before


def test_retry_failed_returns_to_pending_and_resets_dispatches():
    op = make_op(State.RUNNING)
    op.mark_dispatched(at(1))
    op.progress = Progress(done=4, total=7, message="x")
    op.fail(at(2), OperationError(status="UNAVAILABLE", message="gave up"))
    op.retry(at(3))
    assert op.state == State.PENDING
    assert not op.done
    assert op.end_time is None
    assert op.error is None
    assert op.dispatch_count == 0
    assert op.progress == Progress(done=0, total=7, message="retry requested")
    assert op.attempt == 1  # attempts keep counting across retries
    assert op.start(at(4)) == 2


def test_mark_dispatched_counts_dispatches():
    op = make_op()
    op.mark_dispatched(at(1))
    op.mark_dispatched(at(2))
    assert op.dispatch_count == 2
    assert op.dispatch_time == at(2)
    assert op.update_time == at(2)


def test_lease_expiry_uses_heartbeat_then_start_then_update_time():
    op = make_op()
    assert not op.is_lease_expired(at(30))
    assert op.is_lease_expired(at(30.01))
    op.start(at(10))
    op.heartbeat(at(20))
    assert not op.is_lease_expired(at(50))
    assert op.is_lease_expired(at(50.01))


# --------------------------------------------------------------------- illegal moves


@pytest.mark.parametrize("state", [State.PENDING, *TERMINAL_STATES])
def test_succeed_is_illegal_unless_running_or_cancelling(state):
    op = make_op(state)
    with pytest.raises(IllegalTransition) as info:
        op.succeed(at(9), {})
    assert op.state == state
    assert info.value.metadata == {"state": str(state), "requested": "SUCCEEDED"}


@pytest.mark.parametrize("state", sorted(TERMINAL_STATES))
def test_cancel_of_a_done_operation_is_illegal(state):
    op = make_op(state)
    with pytest.raises(IllegalTransition):
        op.request_cancel(at(9))
    assert op.state == state


@pytest.mark.parametrize("state", [s for s in State if s != State.FAILED])
def test_retry_of_a_non_failed_operation_is_illegal(state):
    op = make_op(state)
    with pytest.raises(IllegalTransition):
        op.retry(at(9))
    assert op.state == state


def test_start_while_running_with_live_lease_is_illegal():
    op = make_op(State.RUNNING)
    with pytest.raises(IllegalTransition) as info:
        op.start(at(5))
    assert info.value.reason == "ALREADY_RUNNING"
    assert op.attempt == 1
    assert op.state == State.RUNNING


@pytest.mark.parametrize("state", [State.CANCELLING, *TERMINAL_STATES])
def test_start_is_illegal_from_cancelling_or_done(state):
    op = make_op(state)
    attempt = op.attempt
    with pytest.raises(IllegalTransition):
        op.start(at(1000))  # even long after any lease
    assert op.state == state
    assert op.attempt == attempt


@pytest.mark.parametrize("state", sorted(TERMINAL_STATES))
def test_fail_of_a_done_operation_is_illegal(state):
    op = make_op(state)
    with pytest.raises(IllegalTransition):
        op.fail(at(9), OperationError(status="INTERNAL", message="x"))


@pytest.mark.parametrize("state", [State.PENDING, State.CANCELLING, *TERMINAL_STATES])
def test_release_is_illegal_unless_running(state):
    op = make_op(state)
    with pytest.raises(IllegalTransition):
        op.release(at(9), "x")
    assert op.state == state


@pytest.mark.parametrize("state", [State.PENDING, *TERMINAL_STATES])
def test_heartbeat_is_illegal_when_not_running(state):
    op = make_op(state)
    with pytest.raises(IllegalTransition) as info:
        op.heartbeat(at(9))
    assert info.value.reason == "NOT_RUNNING"


@pytest.mark.parametrize("state", [State.PENDING, State.RUNNING, *TERMINAL_STATES])
def test_mark_cancelled_is_illegal_unless_cancelling(state):
    op = make_op(state)
    with pytest.raises(IllegalTransition):
        op.mark_cancelled(at(9))
    assert op.state == state


def test_illegal_transition_is_a_failed_precondition_with_reason():
    op = make_op(State.SUCCEEDED)
    with pytest.raises(FailedPrecondition) as info:
        op.request_cancel(at(9))
    assert isinstance(info.value, IllegalTransition)
    assert info.value.code == "FAILED_PRECONDITION"
    assert info.value.reason == "ILLEGAL_STATE_TRANSITION"
    assert op.name in info.value.message


# ------------------------------------------------------------------------ error codes


@pytest.mark.parametrize(
    ("status", "code"),
    [
        ("OK", 0),
        ("CANCELLED", 1),
        ("UNKNOWN", 2),
        ("INVALID_ARGUMENT", 3),
        ("DEADLINE_EXCEEDED", 4),
        ("NOT_FOUND", 5),
        ("ALREADY_EXISTS", 6),
        ("PERMISSION_DENIED", 7),
        ("RESOURCE_EXHAUSTED", 8),
        ("FAILED_PRECONDITION", 9),
        ("ABORTED", 10),
        ("OUT_OF_RANGE", 11),
        ("UNIMPLEMENTED", 12),
        ("INTERNAL", 13),
        ("UNAVAILABLE", 14),
        ("DATA_LOSS", 15),
        ("UNAUTHENTICATED", 16),
    ],
)
def test_error_code_is_the_google_rpc_code_number(status, code):
    assert RPC_CODES[status] == code
    assert OperationError(status=status, message="m").code == code


def test_unknown_status_name_maps_to_unknown_code():
    assert OperationError(status="NO_SUCH_CODE", message="m").code == 2


def test_operation_error_round_trips_through_json_form():
    error = OperationError(status="UNAVAILABLE", message="gave up", details=[{"reason": "R"}])
    data = error.to_dict()
    assert data == {
        "code": 14,
        "status": "UNAVAILABLE",
        "message": "gave up",
        "details": [{"reason": "R"}],
    }
    assert OperationError.from_dict(data) == error
    assert OperationError.from_dict(None) is None


def test_progress_round_trips_and_defaults():
    assert Progress.from_dict(None) == Progress()
    progress = Progress(done=3, total=None, message="m")
    assert Progress.from_dict(progress.to_dict()) == progress
