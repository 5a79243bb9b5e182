"""Delivery against real HTTP servers on 127.0.0.1 that record what they get and can be told to fail (500),
stall past the client timeout, or answer 429 with Retry-After. Each test says which real service its
server stands for. Time is an injected clock (no real waiting) except in one small real-time test."""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import json
import logging
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from recording_server import Recorder, Reply

from fleetwatch.actions.alertdb import AlertManager
from fleetwatch.actions.config import AlertsConfig
from fleetwatch.actions.receivers import Body
from fleetwatch.actions.webhooks import Outbox, OutboxWorker, backoff_delay, classify, parse_retry_after
from fleetwatch.cli import main
from fleetwatch.findings import Finding
from fleetwatch.state import StateDB

T0 = 1_795_000_000.0
SLACK_PATH = "/services/T0001/B0001/SLACKSECRETTOKEN"


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def server() -> Iterator[Recorder]:
    recorder = Recorder()
    yield recorder
    recorder.close()


def config(*receivers: dict[str, Any], **delivery: Any) -> AlertsConfig:
    return AlertsConfig.model_validate(
        {
            "receivers": list(receivers),
            "routes": [{"receivers": [r["name"] for r in receivers]}],
            "group_by": ["site"],
            "group_window_s": 0,
            "delivery": {"connect_timeout_s": 1.0, "read_timeout_s": 1.0, "backoff_base_s": 2.0, "backoff_max_s": 60.0}
            | delivery,
        }
    )


def finding(key: str, severity: str = "critical") -> Finding:
    return Finding(
        scope="device", key=key, signal="input_mean_0", statistic=4.0, p=1e-6, q=1e-4, effect=1.5, effect_name="z",
        severity=severity, baseline_version="m7-v1", window_start=int(T0 - 3600), window_end=int(T0), model_id=7,
    )  # fmt: skip


def worker(cfg: AlertsConfig, db: StateDB, clock: Clock, seed: int = 1) -> OutboxWorker:
    return OutboxWorker(cfg, db, clock=clock, rng=random.Random(seed))


def queue_one(db: StateDB, receiver: str, clock: Clock, key: str = "n1.r", deadline_s: float = 3600.0) -> None:
    outbox = Outbox(db)
    with db.transaction() as tx:
        outbox.enqueue(
            tx, key=key, receiver=receiver, title="t", body=Body(b'{"x":1}', "application/json"), now=clock(),
            deadline_s=deadline_s,
        )  # fmt: skip


def test_slack_incoming_webhook_gets_block_kit_once_per_decision(
    server: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    """The server stands for a Slack incoming webhook (https://hooks.slack.com/services/...)."""
    cfg = config({"name": "slack", "kind": "slack", "url": server.url(SLACK_PATH)})
    db, clock = StateDB(":memory:"), Clock()
    manager = AlertManager(cfg, db)
    inventory = {f"dev-{i}": {"site": "north"} for i in range(12)}
    manager.process([finding(d) for d in inventory], clock(), inventory)
    caplog.set_level(logging.DEBUG, logger="fleetwatch")
    assert worker(cfg, db, clock).run_once() == 1
    (request,) = server.received
    assert (request.method, request.path) == ("POST", SLACK_PATH)
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Idempotency-Key"].endswith(".slack")
    message = request.json()
    assert message["text"] == "[CRITICAL] 12 devices at site=north drifted on input_mean_0"
    assert [b["type"] for b in message["blocks"]] == ["header", "section", "section", "context"]
    manager.process([finding(d) for d in inventory], clock() + 3600, inventory)
    assert worker(cfg, db, clock).run_once() == 0
    assert len(server.received) == 1
    assert "SLACKSECRETTOKEN" not in caplog.text and "alert #1 sent to slack (http://127.0.0.1:" in caplog.text


def test_teams_workflow_accepts_the_adaptive_card(server: Recorder) -> None:
    """The server stands for a Teams workflow webhook (Power Automate answers 202 Accepted)."""
    server.default = Reply(202, body=b"")
    cfg = config(
        {"name": "teams", "kind": "teams", "url": server.url("/workflows/abc/triggers/manual/paths/invoke?sig=S")}
    )
    db, clock = StateDB(":memory:"), Clock()
    AlertManager(cfg, db).process([finding("dev-1", "warning")], clock(), {})
    worker(cfg, db, clock).run_once()
    (request,) = server.received
    assert request.path == "/workflows/abc/triggers/manual/paths/invoke?sig=S"
    attachment = request.json()["attachments"][0]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert attachment["content"]["type"] == "AdaptiveCard"
    assert Outbox(db).counts() == {"pending": 0, "sent": 1, "dead": 0}


def test_retraining_pipeline_webhook_is_signed_and_idempotent(server: Recorder) -> None:
    """The server stands for a retraining pipeline's webhook endpoint (generic signed JSON)."""
    cfg = config(
        {
            "name": "pipeline",
            "kind": "webhook",
            "url": server.url("/hooks/retrain"),
            "secret": "whsec_123",
            "payload": "retrain",
        }
    )
    db, clock = StateDB(":memory:"), Clock()
    AlertManager(cfg, db).process([finding("dev-1"), finding("dev-2")], clock(), {})
    server.script(Reply(500, body=b"busy"))
    w = worker(cfg, db, clock)
    w.run_once()
    clock.advance(60)
    w.run_once()
    first, second = server.received
    for request in (first, second):
        t, v1 = (part.split("=", 1)[1] for part in request.headers["X-Fleetwatch-Signature"].split(","))
        expected = hmac.new(b"whsec_123", f"{t}.".encode() + request.body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(v1, expected)
    assert first.headers["X-Fleetwatch-Signature"].startswith(f"t={int(T0)},")
    assert second.headers["X-Fleetwatch-Signature"].startswith(f"t={int(T0) + 60},")
    assert first.body == second.body
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"]
    document = second.json()
    assert (document["version"], document["type"]) == (1, "retrain")
    assert document["retrain"]["devices"] == {"count": 2, "ids": ["dev-1", "dev-2"]}


def test_github_repository_dispatch(server: Recorder) -> None:
    """The server stands for the GitHub REST API (POST /repos/{owner}/{repo}/dispatches -> 204)."""
    server.default = Reply(204, body=b"")
    cfg = config(
        {
            "name": "gh",
            "kind": "github_dispatch",
            "repository": "acme/tinyml-models",
            "token": "ghp_SECRET",
            "api_url": server.url(""),
        }
    )
    db, clock = StateDB(":memory:"), Clock()
    AlertManager(cfg, db).process([finding("dev-1")], clock(), {"dev-1": {"site": "north"}})
    worker(cfg, db, clock).run_once()
    (request,) = server.received
    assert (request.method, request.path) == ("POST", "/repos/acme/tinyml-models/dispatches")
    assert request.headers["Authorization"] == "Bearer ghp_SECRET"
    assert request.headers["Accept"] == "application/vnd.github+json"
    assert request.headers["X-GitHub-Api-Version"] == "2022-11-28"
    dispatch = request.json()
    assert dispatch["event_type"] == "fleetwatch-retrain"
    assert len(dispatch["client_payload"]) <= 10
    assert dispatch["client_payload"]["cohort"] == "site=north" and dispatch["client_payload"]["model_id"] == 7


def test_templated_http_endpoint(server: Recorder) -> None:
    """The server stands for an incident tool's events API taking a custom JSON body over PUT."""
    template = '{"summary": {{ notification.title | tojson }}, "dedup": {{ notification.id | tojson }}}'
    cfg = config(
        {
            "name": "inc",
            "kind": "http",
            "url": server.url("/v2/events"),
            "method": "PUT",
            "token": "tok",
            "body_template": template,
        }
    )
    db, clock = StateDB(":memory:"), Clock()
    (notification,) = AlertManager(cfg, db).process([finding("dev-1")], clock(), {}).notifications
    worker(cfg, db, clock).run_once()
    (request,) = server.received
    assert (request.method, request.path, request.headers["Authorization"]) == ("PUT", "/v2/events", "Bearer tok")
    assert request.json() == {"summary": "device dev-1 in the fleet drifted on input_mean_0", "dedup": notification.id}


def test_backoff_with_full_jitter_on_an_injected_clock(server: Recorder) -> None:
    """The server stands for a retraining pipeline that fails (500) three times, then accepts."""
    cfg = config({"name": "p", "kind": "webhook", "url": server.url("/p")})
    db, clock = StateDB(":memory:"), Clock()
    queue_one(db, "p", clock)
    server.script(Reply(500), Reply(502), Reply(503))
    w, expected = worker(cfg, db, clock, seed=7), random.Random(7)
    outbox = Outbox(db)
    for attempt in (1, 2, 3):
        assert w.run_once() == 1
        delay = expected.uniform(0, min(60.0, 2.0 * 2 ** (attempt - 1)))
        (message,) = outbox.list("pending")
        assert message.next_attempt_at == pytest.approx(clock() + delay)
        assert message.attempts == attempt and message.last_status in (500, 502, 503)
        clock.advance(delay - 0.01)
        assert w.run_once() == 0
        clock.now = message.next_attempt_at
    assert w.run_once() == 1
    assert len(server.received) == 4
    assert len({r.headers["Idempotency-Key"] for r in server.received}) == 1
    assert outbox.counts()["sent"] == 1


def test_backoff_delay_is_full_jitter_capped() -> None:
    rng = random.Random(3)
    delays = [backoff_delay(10, 2.0, 60.0, rng) for _ in range(500)]
    assert 0 <= min(delays) < 5 and 55 < max(delays) <= 60


def test_429_retry_after_seconds_holds_back_the_whole_receiver(server: Recorder) -> None:
    """The server stands for a Slack incoming webhook that rate-limits (429 with Retry-After: 30)."""
    cfg = config({"name": "slack", "kind": "slack", "url": server.url(SLACK_PATH)})
    db, clock = StateDB(":memory:"), Clock()
    queue_one(db, "slack", clock, key="a")
    queue_one(db, "slack", clock, key="b")
    server.script(Reply(429, (("Retry-After", "30"),), b"rate_limited"))
    w = worker(cfg, db, clock)
    assert w.run_once() == 1
    assert [m.next_attempt_at for m in Outbox(db).list("pending")] == [T0 + 30, T0 + 30]
    clock.advance(29)
    assert w.run_once() == 0
    clock.advance(1)
    assert w.run_once() == 2
    assert [r.headers["Idempotency-Key"] for r in server.received] == ["a", "a", "b"]


def test_retry_after_as_an_http_date(server: Recorder) -> None:
    """The server stands for the GitHub API asking to come back at a given time (503 + HTTP date)."""
    server.script(Reply(503, (("Retry-After", email.utils.formatdate(T0 + 120, usegmt=True)),)))
    cfg = config(
        {"name": "gh", "kind": "github_dispatch", "repository": "a/b", "token": "t", "api_url": server.url("")}
    )
    db, clock = StateDB(":memory:"), Clock()
    queue_one(db, "gh", clock)
    worker(cfg, db, clock).run_once()
    assert Outbox(db).list("pending")[0].next_attempt_at == pytest.approx(T0 + 120)


def test_classify_and_parse_retry_after() -> None:
    statuses = (200, 202, 204, 408, 429, 500, 503, 400, 401, 403, 404, 410, 301)
    assert [classify(s, None, T0).action for s in statuses] == [
        "sent", "sent", "sent", "retry", "retry", "retry", "retry", "dead", "dead", "dead", "dead", "dead", "dead",
    ]  # fmt: skip
    assert classify(429, "7", T0).retry_after == 7.0
    assert classify(500, "7", T0).retry_after is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470.0) == 10.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412490.0) == 0.0
    assert parse_retry_after("soon", T0) is None and parse_retry_after(None, T0) is None


def test_a_4xx_is_permanent_and_goes_straight_to_dead_letters(server: Recorder) -> None:
    """The server stands for a Slack incoming webhook that was deleted (404 no_service)."""
    server.default = Reply(404, body=b"no_service")
    cfg = config({"name": "slack", "kind": "slack", "url": server.url(SLACK_PATH)})
    db, clock = StateDB(":memory:"), Clock()
    queue_one(db, "slack", clock)
    w = worker(cfg, db, clock)
    w.run_once()
    (dead,) = Outbox(db).list("dead")
    assert (dead.attempts, dead.last_status, dead.last_error) == (1, 404, "HTTP 404: permanent: no_service")
    clock.advance(3600)
    assert w.run_once() == 0 and len(server.received) == 1
    deliveries = next(m for m in w.metrics() if m.name == "fleetwatch_alert_deliveries_total")
    assert deliveries.samples == (({"receiver": "slack", "outcome": "dead"}, 1.0),)


def test_a_stalled_receiver_times_out(server: Recorder) -> None:
    """The server stands for a Slack incoming webhook that hangs past the client's read timeout."""
    server.script(Reply(stall_s=1.0))
    cfg = config({"name": "slack", "kind": "slack", "url": server.url(SLACK_PATH)}, read_timeout_s=0.2)
    db, clock = StateDB(":memory:"), Clock()
    queue_one(db, "slack", clock)
    started = time.monotonic()
    worker(cfg, db, clock).run_once()
    assert time.monotonic() - started < 0.9
    (message,) = Outbox(db).list("pending")
    assert message.last_error is not None and message.last_error.startswith("ReadTimeout")
    assert message.next_attempt_at < clock() + 2.0


def test_the_deadline_dead_letters_and_the_cli_retries_with_the_same_key(server: Recorder, tmp_path: Path) -> None:
    """The server stands for a retraining pipeline that is down (500) for longer than the deadline."""
    server.default = Reply(500, body=b"down")
    cfg = config({"name": "p", "kind": "webhook", "url": server.url("/p")}, deadline_s=600.0)
    path = tmp_path / "state.db"
    db, clock = StateDB(path), Clock()
    queue_one(db, "p", clock, key="n9.p", deadline_s=cfg.delivery.deadline_s)
    w = worker(cfg, db, clock)
    outbox = Outbox(db)
    while outbox.counts()["pending"]:
        w.run_once()
        clock.advance(5)
    (dead,) = outbox.list("dead")
    assert dead.last_error is not None and dead.last_error.startswith(f"deadline passed after {dead.attempts} attempts")
    assert dead.attempts == len(server.received) > 3
    assert clock() - T0 <= 600 + 5
    gauges = next(m for m in w.metrics() if m.name == "fleetwatch_alert_outbox_messages")
    assert ({"state": "dead"}, 1.0) in gauges.samples
    runner = CliRunner()
    listed = runner.invoke(main, ["alerts", "deadletters", "--json", "--state", str(path)])
    assert [(d["id"], d["idempotency_key"]) for d in json.loads(listed.output)] == [(dead.id, "n9.p")]
    assert runner.invoke(main, ["alerts", "retry", str(dead.id), "--state", str(path)]).exit_code == 0
    server.default = Reply(200)
    clock.now = time.time() + 1
    w.run_once()
    assert outbox.counts() == {"pending": 0, "sent": 1, "dead": 0}
    assert {r.headers["Idempotency-Key"] for r in server.received} == {"n9.p"}


def test_exactly_once_across_a_crash_between_enqueue_and_send(server: Recorder, tmp_path: Path) -> None:
    """The server stands for a Slack incoming webhook; the daemon dies right after deciding."""
    cfg = config({"name": "slack", "kind": "slack", "url": server.url(SLACK_PATH)})
    path = tmp_path / "state.db"
    clock = Clock()
    db = StateDB(path)
    AlertManager(cfg, db).process([finding("dev-1")], clock(), {})
    (key,) = db.query("SELECT idempotency_key FROM alert_outbox")[0]
    db.close()
    db = StateDB(path)
    AlertManager(cfg, db).process([finding("dev-1")], clock() + 60, {})
    w = worker(cfg, db, clock)
    assert w.run_once() == 1
    assert w.run_once() == 0
    (request,) = server.received
    assert request.headers["Idempotency-Key"] == key


def test_a_crash_mid_request_retries_after_the_claim_lapses(server: Recorder, tmp_path: Path) -> None:
    """The server stands for a Slack incoming webhook; the daemon dies after claiming, before recording."""
    cfg = config({"name": "slack", "kind": "slack", "url": server.url(SLACK_PATH)})
    path = tmp_path / "state.db"
    clock = Clock()
    db = StateDB(path)
    queue_one(db, "slack", clock, key="n5.slack")
    outbox = Outbox(db)
    (message,) = outbox.due(clock())
    assert outbox.claim(message, clock(), until=clock() + 40)
    assert not outbox.claim(message, clock(), until=clock() + 40)
    db.close()
    db = StateDB(path)
    w = worker(cfg, db, clock)
    assert w.run_once() == 0
    clock.advance(40)
    assert w.run_once() == 1
    assert [r.headers["Idempotency-Key"] for r in server.received] == ["n5.slack"]


def test_connection_refused_is_retried_and_the_error_hides_the_url(server: Recorder) -> None:
    """No server at all stands for a Slack incoming webhook host that is unreachable."""
    port = server.server.server_port
    server.close()
    cfg = config({"name": "slack", "kind": "slack", "url": f"http://127.0.0.1:{port}{SLACK_PATH}"})
    db, clock = StateDB(":memory:"), Clock()
    queue_one(db, "slack", clock, key="a")
    queue_one(db, "gone", clock, key="b")
    worker(cfg, db, clock).run_once()
    (pending,) = Outbox(db).list("pending")
    assert pending.idempotency_key == "a" and (pending.last_error or "").startswith("ConnectionError")
    assert "SLACKSECRETTOKEN" not in (pending.last_error or "") and "url: ***" in (pending.last_error or "")
    (dead,) = Outbox(db).list("dead")
    assert dead.idempotency_key == "b" and dead.last_error == "receiver 'gone' is not configured"


def test_real_time_worker_thread_honours_retry_after(server: Recorder) -> None:
    """Real clock, real thread. The server stands for a Slack incoming webhook that rate-limits once."""
    server.script(Reply(429, (("Retry-After", "1"),), b"rate_limited"))
    cfg = config({"name": "slack", "kind": "slack", "url": server.url(SLACK_PATH)}, poll_interval_s=0.1)
    db = StateDB(":memory:")
    w = OutboxWorker(cfg, db)
    w.start()
    try:
        AlertManager(cfg, db).process([finding("dev-1")], time.time(), {})
        w.wake()
        deadline = time.monotonic() + 5
        while len(server.received) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        w.stop()
    first, second = server.received
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"]
    assert Outbox(db).counts() == {"pending": 0, "sent": 1, "dead": 0}
    timestamps = db.query("SELECT created_at, finished_at FROM alert_outbox")[0]
    assert 1.0 <= timestamps[1] - timestamps[0] < 3.0
