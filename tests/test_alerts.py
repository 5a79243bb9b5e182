"""Alert decisions over sequences of evaluation rounds: dedupe, escalation, grouping, cooldown, resolve,
silences, rules and routes; the decision and its outbox messages in one transaction; config; the CLI."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from fleetwatch.actions.alertdb import AlertDB, AlertManager
from fleetwatch.actions.alerts import Decision
from fleetwatch.actions.config import AlertsConfig
from fleetwatch.actions.webhooks import Outbox
from fleetwatch.cli import main
from fleetwatch.findings import Finding
from fleetwatch.state import StateDB

HOUR = 3600.0
T0 = 1_795_000_000.0
NORTH = {f"n{i:02d}": {"site": "north"} for i in range(12)}
SOUTH = {f"s{i}": {"site": "south"} for i in range(3)}
INVENTORY = NORTH | SOUTH


def config(**extra: Any) -> AlertsConfig:
    base = {
        "receivers": [
            {"name": "chat", "kind": "webhook", "url": "http://127.0.0.1:9/chat"},
            {"name": "pager", "kind": "webhook", "url": "http://127.0.0.1:9/pager"},
        ],
        "routes": [{"receivers": ["chat"]}],
        "group_by": ["site"],
        "group_window_s": 0,
        "cooldown_minutes": 240,
    }
    return AlertsConfig.model_validate(base | extra)


def finding(
    key: str, severity: str = "critical", signal: str = "input_mean_0", scope: str = "device", at: float = T0
) -> Finding:
    return Finding(
        scope=scope,  # type: ignore[arg-type]
        key=key,
        signal=signal,
        statistic=4.0,
        p=1e-6,
        q=1e-4,
        effect=1.5,
        effect_name="z",
        severity=severity,  # type: ignore[arg-type]
        baseline_version="m1-v1",
        window_start=int(at - HOUR),
        window_end=int(at),
        model_id=1 if scope == "device" else None,
    )


class Rounds:
    """An AlertManager on an in-memory state DB, fed one round at a time."""

    def __init__(self, cfg: AlertsConfig) -> None:
        self.db = StateDB(":memory:")
        self.manager = AlertManager(cfg, self.db)

    def run(self, at: float, *findings: Finding) -> Decision:
        return self.manager.process(findings, at, INVENTORY)

    def summary(self, decision: Decision) -> list[tuple[str, str, list[tuple[str, str]]]]:
        """(status, title, [(key, reason)]) per notification."""
        return [(n.status, n.title, [(i.alert.key, i.reason) for i in n.items]) for n in decision.notifications]

    def outbox(self) -> list[tuple[str, str, str]]:
        return self.db.query("SELECT receiver, title, idempotency_key FROM alert_outbox ORDER BY id")


def test_a_repeat_updates_the_open_alert_instead_of_sending_again() -> None:
    rounds = Rounds(config())
    first = rounds.run(T0, finding("n01"))
    assert rounds.summary(first) == [("firing", "device n01 at site=north drifted on input_mean_0", [("n01", "new")])]
    for hour in range(1, 4):
        assert rounds.run(T0 + hour * HOUR, finding("n01", at=T0 + hour * HOUR)).notifications == ()
    (alert,) = AlertDB(rounds.db).active()
    assert alert.finding.window_end == T0 + 3 * HOUR
    assert alert.opened_at == T0 and alert.first_window_start == T0 - HOUR
    assert len(rounds.outbox()) == 1


def test_escalation_notifies_at_once_and_deescalation_does_not() -> None:
    rounds = Rounds(config())
    rounds.run(T0, finding("n01", "warning"))
    escalated = rounds.run(T0 + 60, finding("n01", "critical"))
    assert rounds.summary(escalated) == [
        ("firing", "device n01 at site=north drifted on input_mean_0", [("n01", "escalated")])
    ]
    assert escalated.notifications[0].severity == "critical"
    assert rounds.run(T0 + 120, finding("n01", "warning")).notifications == ()
    assert rounds.run(T0 + 180, finding("n01", "critical")).notifications == ()


def test_cooldown_allows_one_reminder_per_period_unless_disabled() -> None:
    rounds = Rounds(config(cooldown_minutes=90))
    rounds.run(T0, finding("n01"))
    assert rounds.run(T0 + HOUR, finding("n01")).notifications == ()
    reminder = rounds.run(T0 + 1.5 * HOUR, finding("n01"))
    assert rounds.summary(reminder)[0][2] == [("n01", "reminder")]
    assert rounds.run(T0 + 2 * HOUR, finding("n01")).notifications == ()
    assert rounds.summary(rounds.manager.tick(T0 + 3 * HOUR))[0][2] == [("n01", "reminder")]
    quiet = Rounds(config(cooldown_minutes=90, reminders=False))
    quiet.run(T0, finding("n01"))
    assert all(quiet.run(T0 + h * HOUR, finding("n01")).notifications == () for h in range(1, 6))


def test_devices_of_a_cohort_are_grouped_into_one_message() -> None:
    rounds = Rounds(config())
    decision = rounds.run(T0, *[finding(d) for d in NORTH], *[finding(d) for d in SOUTH])
    assert [(n.title, len(n.items)) for n in decision.notifications] == [
        ("12 devices at site=north drifted on input_mean_0", 12),
        ("3 devices at site=south drifted on input_mean_0", 3),
    ]
    assert [title for _, title, _ in rounds.outbox()] == [
        "[firing] 12 devices at site=north drifted on input_mean_0",
        "[firing] 3 devices at site=south drifted on input_mean_0",
    ]


def test_the_group_window_gathers_alerts_that_come_in_later() -> None:
    rounds = Rounds(config(group_window_s=300))
    assert rounds.run(T0, finding("n01"), finding("n02")).notifications == ()
    assert rounds.run(T0 + 120, finding("n03", signal="latency_p95")).notifications == ()
    assert rounds.manager.tick(T0 + 299).notifications == ()
    flushed = rounds.manager.tick(T0 + 300)
    assert rounds.summary(flushed) == [
        (
            "firing",
            "3 devices at site=north drifted on input_mean_0 and latency_p95",
            [("n01", "new"), ("n02", "new"), ("n03", "new")],
        )
    ]
    late = rounds.run(T0 + 400, finding("n04"))
    assert late.notifications == ()
    assert rounds.summary(rounds.manager.tick(T0 + 700))[0][1] == "device n04 at site=north drifted on input_mean_0"


def test_resolve_after_k_consecutive_clear_rounds() -> None:
    rounds = Rounds(config(resolve_after=3, reminders=False))
    rounds.run(T0, finding("n01"))
    assert rounds.run(T0 + HOUR, finding("n01", "ok")).notifications == ()
    assert rounds.run(T0 + 2 * HOUR, finding("n01", "ok")).notifications == ()
    assert rounds.run(T0 + 3 * HOUR, finding("n01", "warning")).notifications == ()
    assert rounds.run(T0 + 4 * HOUR, finding("n01", "ok")).notifications == ()
    assert rounds.run(T0 + 5 * HOUR, finding("n01", "ok")).notifications == ()
    resolved = rounds.run(T0 + 6 * HOUR, finding("n01", "ok"))
    assert rounds.summary(resolved) == [
        ("resolved", "device n01 at site=north recovered on input_mean_0", [("n01", "resolved")])
    ]
    assert resolved.notifications[0].severity == "critical"
    assert AlertDB(rounds.db).active() == []
    reopened = rounds.run(T0 + 7 * HOUR, finding("n01"))
    assert rounds.summary(reopened)[0][2] == [("n01", "new")]
    assert reopened.notifications[0].items[0].alert.opened_at == T0 + 7 * HOUR


def test_a_finding_below_its_rule_counts_as_clear() -> None:
    cfg = config(
        rules=[{"signal": "latency_*", "min_severity": "critical"}, {"signal": "debug_*", "min_severity": "never"}]
    )
    rounds = Rounds(cfg)
    assert rounds.run(T0, finding("n01", "warning", signal="latency_p95")).notifications == ()
    assert rounds.run(T0, finding("n01", "critical", signal="debug_x")).notifications == ()
    rounds.run(T0 + HOUR, finding("n01", "critical", signal="latency_p95"))
    resolved = rounds.run(T0 + 2 * HOUR, finding("n01", "warning", signal="latency_p95"))
    assert rounds.summary(resolved)[0][0] == "resolved"


def test_a_flap_inside_the_group_window_sends_nothing() -> None:
    rounds = Rounds(config(group_window_s=300))
    rounds.run(T0, finding("n01"))
    assert rounds.run(T0 + 60, finding("n01", "ok")).notifications == ()
    assert rounds.manager.tick(T0 + 600).notifications == ()
    assert rounds.outbox() == []


def test_silences_mute_matching_alerts_until_they_expire() -> None:
    rounds = Rounds(config())
    alerts = AlertDB(rounds.db)
    alerts.add_silence(now=T0, duration_s=2 * HOUR, reason="site visit", cohort="site=north")
    decision = rounds.run(T0 + 60, finding("n01"), finding("s1"))
    assert rounds.summary(decision) == [("firing", "device s1 at site=south drifted on input_mean_0", [("s1", "new")])]
    assert {a.key for a in alerts.active()} == {"n01", "s1"}
    assert rounds.run(T0 + HOUR, finding("n01")).notifications == ()
    after = rounds.manager.tick(T0 + 2 * HOUR)
    assert rounds.summary(after)[0][2] == [("n01", "new")]


def test_ending_a_silence_early_and_resolving_while_silenced() -> None:
    rounds = Rounds(config())
    alerts = AlertDB(rounds.db)
    rounds.run(T0, finding("n01"), finding("n02"))
    silence = alerts.add_silence(now=T0 + 10, duration_s=HOUR, reason="known", key="n0[12]", signal="input_*")
    assert rounds.run(T0 + 20, finding("n01", "ok")).notifications == ()
    assert [a.key for a in alerts.active()] == ["n02"]
    assert alerts.end_silence(silence.id, T0 + 30) is True
    assert alerts.end_silence(silence.id, T0 + 31) is False
    resolved = rounds.run(T0 + 40, finding("n02", "ok"))
    assert rounds.summary(resolved)[0][2] == [("n02", "resolved")]


def test_routes_first_match_wins_unless_continue_and_unrouted_is_counted() -> None:
    cfg = config(
        routes=[
            {
                "name": "page",
                "scope": "cohort",
                "min_severity": "critical",
                "receivers": ["pager"],
                "continue_matching": True,
            },
            {"name": "north", "cohort": "site=north", "receivers": ["chat"]},
            {"name": "fleet", "scope": "fleet", "receivers": ["chat", "pager"]},
        ]
    )
    rounds = Rounds(cfg)
    decision = rounds.run(
        T0,
        finding("site=north", scope="cohort"),
        finding("n01", "warning"),
        finding("s1"),
        finding("fleet", "warning", scope="fleet"),
    )
    routed = sorted((n.route, n.title, n.receivers) for n in decision.notifications)
    assert routed == [
        ("fleet", "the fleet drifted on input_mean_0", ("chat", "pager")),
        ("north", "cohort site=north drifted on input_mean_0", ("chat",)),
        ("north", "device n01 at site=north drifted on input_mean_0", ("chat",)),
        ("page", "cohort site=north drifted on input_mean_0", ("pager",)),
    ]
    assert decision.unrouted == 1
    assert sorted(r for r, _, _ in rounds.outbox()) == ["chat", "chat", "chat", "pager", "pager"]
    assert len({key for _, _, key in rounds.outbox()}) == 5
    unrouted = next(m for m in rounds.manager.metrics(T0) if m.name == "fleetwatch_alert_unrouted_total")
    assert unrouted.samples == (({}, 1.0),)


def test_a_crash_while_queueing_leaves_neither_the_decision_nor_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    rounds = Rounds(config())
    original = rounds.manager.outbox.enqueue

    def crash(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(rounds.manager.outbox, "enqueue", crash)
    with pytest.raises(OSError):
        rounds.run(T0, finding("n01"))
    assert AlertDB(rounds.db).active() == [] and rounds.outbox() == []
    monkeypatch.setattr(rounds.manager.outbox, "enqueue", original)
    decision = rounds.run(T0 + 60, finding("n01"))
    assert rounds.summary(decision)[0][2] == [("n01", "new")]
    assert len(rounds.outbox()) == 1


def test_a_broken_template_becomes_a_dead_letter_and_the_decision_stands() -> None:
    cfg = config(
        receivers=[
            {"name": "chat", "kind": "webhook", "url": "http://127.0.0.1:9/chat"},
            {"name": "tpl", "kind": "http", "url": "http://127.0.0.1:9/t", "body_template": "{{ 1 / 0 }}"},
        ],
        routes=[{"receivers": ["chat", "tpl"]}],
    )
    rounds = Rounds(cfg)
    rounds.run(T0, finding("n01"))
    outbox = Outbox(rounds.db)
    assert outbox.counts() == {"pending": 1, "sent": 0, "dead": 1}
    (dead,) = outbox.list("dead")
    assert dead.receiver == "tpl" and "ZeroDivisionError" in (dead.last_error or "")
    assert [a.notified_severity for a in AlertDB(rounds.db).active()] == ["critical"]


def test_metrics_count_open_alerts_and_silences() -> None:
    rounds = Rounds(config())
    rounds.run(T0, finding("n01"), finding("n02", "warning"), finding("s1"))
    AlertDB(rounds.db).add_silence(now=T0, duration_s=60, reason="x", key="s1")
    metrics = {m.name: m for m in rounds.manager.metrics(T0 + 1)}
    assert metrics["fleetwatch_alerts_open"].samples == (
        ({"severity": "warning"}, 1.0),
        ({"severity": "critical"}, 2.0),
    )
    assert metrics["fleetwatch_alert_silences_active"].samples == (({}, 1.0),)
    assert metrics["fleetwatch_alert_notifications_total"].samples[0] == ({"status": "firing"}, 2.0)


def test_config_reads_secret_files_and_rejects_mistakes(tmp_path: Path) -> None:
    secret = tmp_path / "slack_url"
    secret.write_text("https://hooks.slack.com/services/T/B/SECRET\n")
    cfg = AlertsConfig.model_validate(
        {"receivers": [{"name": "s", "kind": "slack", "url_file": str(secret)}], "routes": [{"receivers": ["s"]}]}
    )
    assert cfg.receiver("s").url.get_secret_value() == "https://hooks.slack.com/services/T/B/SECRET"
    assert "SECRET" not in repr(cfg) and cfg.routes[0].name == "route-0"
    mistakes = [
        ({"routes": [{"receivers": ["nope"]}]}, "unknown receivers"),
        ({"receivers": [{"name": "a", "kind": "slack", "url": "x"}] * 2}, "duplicate names"),
        (
            {"receivers": [{"name": "a", "kind": "http", "url": "x", "body_template": "{{ oops"}]},
            "not a valid Jinja2 template",
        ),
        (
            {"receivers": [{"name": "a", "kind": "webhook", "url": "x", "headers_file": "/x"}]},
            "headers is not a secret",
        ),
        ({"receivers": [{"name": "a", "kind": "slack", "url_file": str(tmp_path / "missing")}]}, "cannot read"),
        ({"receivers": [{"name": "a", "kind": "github_dispatch", "repository": "nope", "token": "t"}]}, "pattern"),
        ({"cooldwon_minutes": 5}, "Extra inputs are not permitted"),
        ({"receivers": [{"name": "a", "kind": "pagerduty"}]}, "does not match any of the expected tags"),
    ]
    for data, message in mistakes:
        with pytest.raises(ValidationError, match=message):
            AlertsConfig.model_validate(data)


def test_every_config_field_is_documented() -> None:
    from fleetwatch.actions import config as module

    models = [getattr(module, n) for n in dir(module) if isinstance(getattr(module, n), type)]
    for model in models:
        if issubclass(model, module.AlertsModel):
            for name, field in model.model_fields.items():
                assert field.description, f"{model.__name__}.{name} has no description"


def test_cli_state_and_deadline_come_from_the_configuration(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in [k for k in os.environ if k.startswith("FLEETWATCH_")]:
        monkeypatch.delenv(key)
    cfg = config(
        receivers=[{"name": "tpl", "kind": "http", "url": "http://127.0.0.1:9/t", "body_template": "{{ nope }}"}],
        routes=[{"receivers": ["tpl"]}],
    )
    AlertManager(cfg, StateDB(tmp_path / "data" / "state.db")).process([finding("n01")], T0, INVENTORY)
    runner = CliRunner()
    toml = tmp_path / "fleetwatch.toml"
    toml.write_text(f'data_dir = "{tmp_path / "data"}"\n[alerts.delivery]\ndeadline_s = 600\n')
    listing = json.loads(runner.invoke(main, ["alerts", "list", "--json", "-c", str(toml)]).output)
    assert [a["key"] for a in listing["alerts"]] == ["n01"]
    (dead,) = listing["deadletters"]
    before = time.time()
    assert runner.invoke(main, ["alerts", "retry", str(dead["id"]), "-c", str(toml)]).exit_code == 0
    (queued,) = Outbox(StateDB(tmp_path / "data" / "state.db")).list("pending")
    assert before + 600 <= queued.deadline_at <= time.time() + 600
    monkeypatch.setenv("FLEETWATCH_STATE__PATH", str(tmp_path / "data" / "state.db"))
    assert "Open alerts: 1" in runner.invoke(main, ["alerts", "list"]).output


def test_cli_silence_list_unsilence_deadletters_retry(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    cfg = config(
        receivers=[{"name": "tpl", "kind": "http", "url": "http://127.0.0.1:9/t", "body_template": "{{ nope }}"}],
        routes=[{"receivers": ["tpl"]}],
    )
    AlertManager(cfg, StateDB(path)).process([finding("n01")], T0, INVENTORY)
    runner = CliRunner()

    def cli(*args: str) -> str:
        result = runner.invoke(main, ["alerts", *args, "--state", str(path)])
        assert result.exit_code == 0, result.output
        return result.output

    created = cli(
        "silence",
        "--cohort",
        "site=north",
        "--signal",
        "input_*",
        "--for",
        "2h",
        "--reason",
        "site visit",
        "--by",
        "ana",
    )
    assert created.startswith("#1 until ") and "cohort=site=north" in created and "'site visit' by ana" in created
    listing = json.loads(cli("list", "--json"))
    assert [(a["key"], a["severity"]) for a in listing["alerts"]] == [("n01", "critical")]
    assert [(s["id"], s["cohort"], s["signal"]) for s in listing["silences"]] == [(1, "site=north", "input_*")]
    (dead,) = listing["deadletters"]
    assert dead["receiver"] == "tpl" and "UndefinedError" in dead["last_error"]
    text = cli("list")
    assert "Open alerts: 1" in text and "Silences: 1" in text and "Dead letters: 1" in text
    assert "UndefinedError" in cli("deadletters")
    assert cli("unsilence", "1") == "silence #1 ended\n"
    assert runner.invoke(main, ["alerts", "unsilence", "1", "--state", str(path)]).exit_code == 1
    assert cli("retry", str(dead["id"])) == f"#{dead['id']} queued again\n"
    assert Outbox(StateDB(path)).counts()["pending"] == 1
    refused = runner.invoke(main, ["alerts", "silence", "--for", "1h", "--reason", "x", "--state", str(path)])
    assert refused.exit_code == 2 and "say what to silence" in refused.output
    missing = runner.invoke(main, ["alerts", "list", "--state", str(tmp_path / "none.db")])
    assert missing.exit_code == 1 and "no state database" in missing.output
