"""The callback service: every completed order is confirmed with the customer before it counts.

Call-centre agents work the queue over nameko RPC (`serviceloop callback …`); installations
are confirmed automatically through an SMS/IVR provider, whose replies arrive over HTTP at
/callback/v1/replies. It follows dispatch's `order_completed`; its outcomes
(order_verified, order_disputed, order_unverified …) are what orders, dispatch and
settlement follow.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from datetime import timedelta

from nameko.extensions import DependencyProvider
from nameko.timer import timer
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from werkzeug.wrappers import Request, Response

from contracts import callback as contract
from contracts.errors import (
    Conflict,
    NotFound,
    ServiceError,
    ValidationFailed,
)
from contracts.registry import load
from serviceloop.answers import AnswersKept, answered_once
from serviceloop.catchup import CatchUp
from serviceloop.clock import isoformat
from serviceloop.consumer import ParkedMessagesRpc, consumes
from serviceloop.db import Prepared, fetch_rows, hold_writes
from serviceloop.entrypoints import http, rpc
from serviceloop.eventstore import Envelope, NewEvent
from serviceloop.nameko_deps import (
    ClockProvider,
    Database,
    EventLogRpc,
    retried_read,
    transactional,
)
from serviceloop.observability import Observable
from serviceloop.projections import RowReader
from services.callback import domain
from services.callback.channel import ChannelError, SmsChannel, confirmation_text
from services.callback.projections import metadata, projector, task_after, tasks

log = logging.getLogger(__name__)

TIMER_INTERVAL = float(os.environ.get("CALLBACK_TIMER_INTERVAL", "5"))
_RECORD = contract.RecordOutcome()
_SUPERVISE = contract.SupervisorDecision()
_REPLY = contract.ProviderReply()


class CallbackSettings(DependencyProvider):
    """Config: CALLBACK_DUE_HOURS (48), CALLBACK_LEASE_MINUTES (15), CALLBACK_ATTEMPTS (3),
    CALLBACK_RETRY_MINUTES ("120,360"), CALLBACK_REPLY_WITHIN_MINUTES (720),
    CALLBACK_SEND_RETRY_MINUTES (5), AUTO_VERIFY_INSTALLS (true), REVIEW_SHARE (0.1),
    PROVIDER_URL, PROVIDER_TOKEN, CALLBACK_PUBLIC_URL (where the provider posts replies)."""

    def setup(self) -> None:
        c = self.container.config
        retries = str(c.get("CALLBACK_RETRY_MINUTES", "120,360"))
        self.settings = domain.Settings(
            due_within=timedelta(hours=float(c.get("CALLBACK_DUE_HOURS", 48))),
            lease=timedelta(minutes=float(c.get("CALLBACK_LEASE_MINUTES", 15))),
            attempts=int(c.get("CALLBACK_ATTEMPTS", 3)),
            retry_after=tuple(timedelta(minutes=float(m)) for m in retries.split(",") if m),
            reply_within=timedelta(minutes=float(c.get("CALLBACK_REPLY_WITHIN_MINUTES", 720))),
            send_retry=timedelta(minutes=float(c.get("CALLBACK_SEND_RETRY_MINUTES", 5))),
            auto_verify_installs=str(c.get("AUTO_VERIFY_INSTALLS", "true")).lower()
            in ("1", "true", "yes"),
            review_share=float(c.get("REVIEW_SHARE", 0.1)))
        self.token = str(c.get("PROVIDER_TOKEN", "stand-in-token"))
        self.channel = SmsChannel(
            str(c.get("PROVIDER_URL", "http://127.0.0.1:8090")), self.token,
            str(c.get("CALLBACK_PUBLIC_URL", "http://127.0.0.1:8081")).rstrip("/")
            + "/callback/v1/replies")

    def get_dependency(self, worker_ctx):  # noqa: ANN001, ANN201
        return self


class CallbackService(EventLogRpc, ParkedMessagesRpc, CatchUp, AnswersKept, Observable):
    name = "callback"

    db = Database("callback", metadata)
    clock = ClockProvider()
    config = CallbackSettings()

    def service_metrics(self, metrics, conn) -> None:  # noqa: ANN001 - for /metrics
        by_status = dict(conn.execute(select(tasks.c.status, func.count())
                                      .group_by(tasks.c.status)).tuples().all())
        metrics.add("serviceloop_callback_queue_depth", "gauge",
                    "Verification tasks waiting for an agent", by_status.get("open", 0))
        for status, n in sorted(by_status.items()):
            metrics.add("serviceloop_callback_tasks", "gauge", "Verification tasks by status",
                        n, status=status)

    # -- following dispatch --------------------------------------------------------------------

    @consumes("dispatch", "order_completed")
    def on_order_completed(self, envelope: Envelope) -> None:
        task_id = envelope.event_id
        # whether this completion has its task already, and the order's visits: one read
        conn = self.db.conn
        made, visits = fetch_rows(conn, _MADE_AND_VISITS.text(conn),
                                  (task_id, envelope.payload["order_id"]))[0]
        if made:
            return
        event = domain.task_for(envelope.payload, task_id, visits + 1, self.clock.now(),
                                self.config.settings)
        self._append(task_id, 0, [event], envelope.payload["order_id"], "system",
                     envelope.event_id)

    # -- agents --------------------------------------------------------------------------------

    @rpc
    def next_task(self, agent_id: str) -> dict | None:
        """The task this agent should call now (the one it holds, else the first free one)."""
        if not isinstance(agent_id, str) or not 1 <= len(agent_id) <= 40:
            raise ValidationFailed("agent_id must be 1..40 characters", {"agent_id": ["invalid"]})
        stamp = isoformat(self.clock.now())
        postgres = self.db.engine.dialect.name == "postgresql"
        with self.db.reader() as conn:
            if postgres:  # one read: the task held, else whether any is free
                rows = fetch_rows(conn, _HELD_OR_FREE.text(conn),
                                  (agent_id, stamp, stamp, stamp))
                held = next((dict(zip(_HELD.columns, row[1:], strict=True))
                             for row in rows if row[0]), None)
                free = any(not row[0] for row in rows)
            else:
                held = _HELD.first(conn, (agent_id, stamp))
                candidates = [] if held else [
                    row[0] for row in fetch_rows(conn, _FREE_IDS.text(conn), (stamp, stamp))]
        if held:
            return _task_view(held)
        if postgres:
            if not free:  # an agent asking when there is nothing to call: one round trip
                return None
            try:
                return self._lease_first_free(agent_id)
            except Conflict:  # finished meanwhile by its holder: the agent asks again
                return None
        for task_id in candidates:  # SQLite: one writer at a time, each tried in turn
            try:
                return self._lease(task_id, agent_id)
            except Conflict:  # another agent took or finished it first: the next one
                self.db.rollback()
        return None

    @transactional
    def _lease_first_free(self, agent_id: str) -> dict | None:
        """PostgreSQL: the first free task no other agent is leasing at this moment, locked
        (SKIP LOCKED): agents asking at once each get their own task at once, instead of
        all waiting on the first one's row and then conflicting on its log, one by one."""
        stamp = isoformat(self.clock.now())
        row = _FIRST_FREE.first(self.db.conn, (stamp, stamp))
        if row is None:
            return None
        return self._lease_in_transaction(row["task_id"], agent_id, dict(row))

    @transactional
    def _lease(self, task_id: str, agent_id: str) -> dict:
        return self._lease_in_transaction(task_id, agent_id)

    def _lease_in_transaction(self, task_id: str, agent_id: str, row: dict | None = None) -> dict:
        """`row`: the task's, if the caller has just read (and locked) it."""
        row = row or self._row(task_id)
        task = domain.Task.from_row(row)
        event = domain.lease(task, agent_id, self.clock.now(), self.config.settings)
        envelopes = self._append(task_id, task.version, [event], task.order_id,
                                 f"agent:{agent_id}", commit=True)
        return _task_view(task_after(row, envelopes))

    @rpc
    @retried_read
    def get_task(self, task_id: str) -> dict:
        with self.db.reader() as conn:
            row = conn.execute(select(tasks).where(tasks.c.task_id == str(task_id))) \
                .mappings().first()
        if row is None:
            raise NotFound(f"no task {task_id}", {"task_id": ["unknown"]}, code="task_not_found")
        return _task_view(dict(row))

    @rpc
    @transactional
    @answered_once
    def record_outcome(self, payload: dict) -> dict:
        data = load(_RECORD, payload)
        row = self._row(data["task_id"])
        task = domain.Task.from_row(row)
        now = self.clock.now()
        events = domain.record(task, data, now, self.config.settings)
        envelopes = self._append(task.task_id, task.version, events, task.order_id,
                                 f"agent:{data['agent_id']}", commit=True)
        return _task_view(task_after(row, envelopes))

    @rpc
    @retried_read
    def tasks_for_order(self, order_id: str) -> list[dict]:
        with self.db.reader() as conn:
            rows = conn.execute(select(tasks).where(tasks.c.order_id == str(order_id))
                                .order_by(tasks.c.created_at)).mappings().all()
        return [_task_view(dict(r)) for r in rows]

    # -- supervisors ---------------------------------------------------------------------------

    @rpc
    @retried_read
    def supervisor_view(self) -> dict:
        """Overdue open tasks and unverified ones waiting for a decision."""
        stamp = isoformat(self.clock.now())
        c = tasks.c
        with self.db.reader() as conn:
            overdue = conn.execute(select(tasks).where(
                c.status.in_(("open", "leased", "sending", "awaiting_reply")), c.due_at < stamp)
                .order_by(c.due_at)).mappings().all()
            unverified = conn.execute(select(tasks).where(c.status == "unverified")
                                      .order_by(c.updated_at)).mappings().all()
        return {"overdue": [_task_view(dict(r)) for r in overdue],
                "unverified": [_task_view(dict(r)) for r in unverified]}

    @rpc
    @transactional
    @answered_once
    def supervise(self, payload: dict) -> dict:
        data = load(_SUPERVISE, payload)
        row = self._row(data["task_id"])
        task = domain.Task.from_row(row)
        event = domain.supervise(task, data, self.clock.now(), self.config.settings)
        envelopes = self._append(task.task_id, task.version, [event], task.order_id,
                                 f"supervisor:{data['supervisor_id']}", commit=True)
        return _task_view(task_after(row, envelopes))

    # -- the automatic channel -----------------------------------------------------------------

    @timer(interval=TIMER_INTERVAL)
    def tick(self) -> None:
        try:
            self.run_timers()
        except Exception as error:  # noqa: BLE001 - the next tick tries again
            log.warning("callback timers failed: %s", error)

    @rpc
    def run_timers(self) -> dict:
        """Send due automatic confirmations; count unanswered ones whose reply time passed.

        Every replica's timer runs this: each action is its own transaction and
        version-checked append, so of two passes over the same task one acts and the other
        finds it taken (a conflict) and skips it.
        """
        stamp = isoformat(self.clock.now())
        c = tasks.c
        with self.db.reader() as conn:
            to_send = conn.execute(select(c.task_id).where(
                c.channel == "auto", c.status.in_(("open", "sending")),
                c.next_attempt_at <= stamp).limit(200)).scalars().all()
            expired = conn.execute(select(c.task_id).where(
                c.status == "awaiting_reply", c.reply_by < stamp).limit(200)).scalars().all()
        counts = {"sent": 0, "unanswered": 0, "failed": 0, "skipped": 0}
        for task_id in to_send:
            try:
                counts["sent"] += self._send_confirmation(task_id)
            except ChannelError as error:  # the claim runs out and the send is tried again
                counts["failed"] += 1
                log.warning("confirmation for task %s not sent: %s", task_id, error)
            except (Conflict, IntegrityError):  # another replica or pass has it
                self.db.rollback()
                counts["skipped"] += 1
        for task_id in expired:
            try:
                counts["unanswered"] += self._reply_overdue(task_id)
            except (Conflict, IntegrityError):
                self.db.rollback()
                counts["skipped"] += 1
        return counts

    def _send_confirmation(self, task_id: str) -> int:
        """Claim, send, record: the claim is committed before the provider's HTTP call and
        the record after, so no transaction (nor SQLite's write lock) is held over it, and
        only the replica whose claim was appended sends."""
        claimed = self._start_send(task_id)
        message_id = self.config.channel.send(
            phone=claimed["phone"], text=confirmation_text(
                claimed["order_type"], json.loads(claimed["report"])["work_done"]),
            reference=task_id, idempotency_key=claimed["send_key"])
        self._record_sent(task_id, claimed["send_key"], message_id)
        return 1

    @transactional
    def _start_send(self, task_id: str) -> dict:
        task = self._task(task_id)
        event = domain.start_send(task, self.clock.now(), self.config.settings)
        self._append(task_id, task.version, [event], task.order_id, "system", commit=True)
        return self._row(task_id)

    @transactional
    def _record_sent(self, task_id: str, key: str, message_id: str) -> None:
        task = self._task(task_id)
        event = domain.sent(task, key, message_id, self.clock.now(), self.config.settings)
        self._append(task_id, task.version, [event], task.order_id, "system", commit=True)

    @transactional
    def _reply_overdue(self, task_id: str) -> int:
        task = self._task(task_id)
        events = domain.reply_overdue(task, self.clock.now(), self.config.settings)
        self._append(task_id, task.version, events, task.order_id, "system", commit=True)
        return 1

    @http("POST", "/callback/v1/replies")
    def provider_reply(self, request: Request) -> Response:
        """The provider posts the customer's reply here (token in X-Provider-Token)."""
        correlation_id = str(uuid.uuid4())
        try:
            if request.headers.get("X-Provider-Token") != self.config.token:
                return _json(401, {"error": {"code": "bad_token", "message": "unknown sender",
                                             "fields": {}}})
            try:
                body = json.loads(request.get_data() or b"{}")
            except ValueError:
                return _json(400, {"error": {"code": "malformed_json",
                                             "message": "not JSON", "fields": {}}})
            data = load(_REPLY, body)
            return _json(200, self._take_reply(data["message_id"], data["reply"]))
        except ServiceError as error:
            self.db.rollback()
            return _json(error.http_status, {"error": {**error.as_dict(),
                                                       "correlation_id": correlation_id}})
        except Exception:  # noqa: BLE001 - logged; the provider sees only the id
            self.db.rollback()
            log.exception("provider reply failed [%s]", correlation_id)
            return _json(500, {"error": {"code": "internal_error", "message": "failed",
                                         "fields": {}, "correlation_id": correlation_id}})

    @transactional
    def _take_reply(self, message_id: str, reply: str) -> dict:
        task_id = self.db.conn.execute(select(tasks.c.task_id).where(
            tasks.c.provider_message_id == message_id)).scalar()
        if task_id is None:
            raise NotFound(f"no task sent message {message_id}", {"message_id": ["unknown"]},
                           code="message_not_found")
        row = self._row(task_id)
        task = domain.Task.from_row(row)
        now = self.clock.now()
        events = domain.auto_reply(task, reply, now, self.config.settings)
        review = None
        if (events[0].event_type == "order_verified" and task.review_of is None
                and domain.sampled(task.order_id, self.config.settings.review_share)):
            review = domain.review_task(row, now, self.config.settings)  # unchanged fields
            hold_writes(self.db.conn)  # the reply's events go with the review and COMMIT
        envelopes = self._append(task_id, task.version, events, task.order_id, "customer",
                                 commit=review is None)
        if review is not None:
            self._append(review.payload["task_id"], 0, [review], task.order_id, "system",
                         envelopes[0].event_id, commit=True)
        return _task_view(task_after(row, envelopes))

    # -- reading and writing -------------------------------------------------------------------

    def _row(self, task_id: str) -> dict:
        row = _TASK.first(self.db.conn, (task_id,))
        if row is None:
            raise NotFound(f"no task {task_id}", {"task_id": ["unknown"]}, code="task_not_found")
        return row

    def _task(self, task_id: str) -> domain.Task:
        return domain.Task.from_row(self._row(task_id))

    def _append(self, task_id: str, expected_version: int, events: list[NewEvent],
                order_id: str, actor: str, causation_id: str | None = None,
                commit: bool = False) -> list[Envelope]:
        """`commit`: the command ends with this append (it answers with the task as its
        events leave it, `task_after`, without reading it again); on PostgreSQL its COMMIT
        goes in the append's round trip, so the log's lock is not held while the worker
        answers."""
        return self.db.append(
            f"task-{task_id}", expected_version, events,
            occurred_at=self.clock.now(), correlation_id=order_id,
            causation_id=causation_id or f"cmd-{uuid.uuid4()}", actor=actor,
            project=projector.apply, commit=commit)


# read on every completion, and on every agent's command: prepared on PostgreSQL
# a task by its id, and the task an agent holds
_TASK = RowReader(tasks, "task_id = ?")
_HELD_BY = "status = 'leased' AND leased_by = ? AND lease_until >= ?"
_HELD = RowReader(tasks, f"{_HELD_BY} LIMIT 1")
# whether a completion has its task already, and how many visits its order has had
_MADE_AND_VISITS = Prepared(
    "SELECT EXISTS (SELECT 1 FROM tasks WHERE task_id = ?),"
    " (SELECT count(*) FROM tasks WHERE order_id = ? AND review_of IS NULL)")
# agents' tasks free to call at a moment (open and due, or their lease run out), in the
# order agents take them
_FREE = ("channel = 'agent' AND (status = 'open' AND next_attempt_at <= ?"
         " OR status = 'leased' AND lease_until < ?) ORDER BY priority, due_at, task_id")
# PostgreSQL: the first of them no other agent is leasing at this moment, locked
_FIRST_FREE = RowReader(tasks, f"{_FREE} LIMIT 1 FOR UPDATE SKIP LOCKED")
# SQLite: the first of them, to try in turn
_FREE_IDS = Prepared(f"SELECT task_id FROM tasks WHERE {_FREE} LIMIT 20")
# PostgreSQL: the task an agent holds (first column true), and the first free one (false),
# in one read: an agent asking when it holds none and none is free costs one round trip
_HELD_OR_FREE = Prepared(
    f"SELECT * FROM (SELECT true, {', '.join(_HELD.columns)} FROM tasks WHERE {_HELD_BY}"
    f" LIMIT 1) AS held UNION ALL SELECT * FROM (SELECT false, {', '.join(_HELD.columns)}"
    f" FROM tasks WHERE {_FREE} LIMIT 1) AS free")


def _task_view(row: dict) -> dict:
    view = dict(row)
    view["report"] = json.loads(view["report"])
    view["outcome_detail"] = json.loads(view["outcome_detail"]) if view["outcome_detail"] \
        else None
    return view


def _json(status: int, body: dict) -> Response:
    return Response(json.dumps(body, ensure_ascii=False), status=status,
                    mimetype="application/json")
