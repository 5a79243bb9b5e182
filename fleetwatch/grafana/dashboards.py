"""The four fleetwatch dashboards, as code: fleet overview, device detail, drift, rollouts.

Every query reads the data model of docs/data-model.md (`telemetry`, `findings`, `baseline_band`,
`rollout`, `ingest`) in InfluxQL that InfluxDB 1.6+ runs (subqueries, bitwise `&` on integer fields,
arithmetic on fields in WHERE). Template variables filter with `"tag" =~ /^${var:regex}$/`, which is an
exact match for one value, an alternation for several, and `.*` for "All".

Panels over `telemetry` and `findings` have a min interval of one window (`WINDOW`, 1 h): a shorter
`$__interval` would leave every other bucket empty.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fleetwatch.grafana.builder import (
    Dashboard,
    Link,
    Override,
    Panel,
    Query,
    Row,
    Step,
    Variable,
    heatmap,
    stat,
    state_timeline,
    table,
    timeseries,
    value_colors,
)

#: The telemetry window the dashboards assume (the min interval of panels over telemetry and findings).
WINDOW = "1h"
#: The ingest counters' period (the daemon writes `ingest` every 60 s).
INGEST_PERIOD = "1m"

TELEMETRY = '"telemetry"'
FINDINGS = '"findings"'
BAND = '"baseline_band"'
ROLLOUT = '"rollout"'
INGEST = '"ingest"'
TIME_FILTER = "$timeFilter"
BY_TIME = "time($__interval)"
#: The 24 hours before the end of the dashboard's range, and that end in Unix seconds.
LAST_24H = "time >= ${__to}ms - 24h AND time <= ${__to}ms"
END_S = "${__to:date:seconds}"
#: Seen within two windows of the range end (each device's own window length).
FRESH = f'"last_received" + 2 * "window_s" >= {END_S}'
STALE = f'"last_received" + 2 * "window_s" < {END_S}'
NON_OK = "\"severity\" != 'ok'"

UID_OVERVIEW = "fleetwatch-overview"
UID_DEVICE = "fleetwatch-device"
UID_DRIFT = "fleetwatch-drift"
UID_ROLLOUTS = "fleetwatch-rollouts"
#: A data link from a device id (the clicked cell) to the device dashboard, keeping the time range.
DEVICE_LINK = Link("Device detail", f"/d/{UID_DEVICE}/device-detail?var-device=${{__value.raw}}&${{__url_time_range}}")

SEVERITY_COLORS = value_colors({"ok": "green", "warning": "orange", "critical": "red"})
VERDICT_COLORS = value_colors({"promote": "green", "continue": "blue", "rollback": "red"})
#: Midpoints of the ten top-1 confidence bins [0, 0.1) ... [0.9, 1.0].
CONFIDENCE_MIDPOINTS = tuple((b + 0.5) / 10 for b in range(10))
ANOMALY_RATE = 'sum("anomaly_count") / sum("inference_count")'
#: Label-free: each inference counts as correct with the probability its confidence states (calibrated model).
ESTIMATED_ACCURACY = (
    "("
    + " + ".join(f'{m:.2f} * sum("conf_hist_{b}")' for b, m in enumerate(CONFIDENCE_MIDPOINTS))
    + ') / sum("inference_count")'
)
ACCURACY_NOTE = (
    "Estimated accuracy = sum over confidence bins of (inferences in the bin x bin midpoint) / inferences: "
    "what a calibrated model expects to get right, computed without labels."
)


def match(tag: str, variable: str | None = None) -> str:
    """`"tag" =~ /^${variable:regex}$/`: one value, several, or All (`.*`)."""
    return f'"{tag}" =~ /^${{{variable or tag}:regex}}$/'


def select(
    columns: str,
    source: str,
    *conditions: str,
    group: Sequence[str] = (),
    fill: str | None = None,
    tail: str = "",
) -> str:
    """One InfluxQL SELECT; `source` is a measurement or a parenthesised subquery."""
    text = f"SELECT {columns} FROM {source}"
    if conditions:
        text += " WHERE " + " AND ".join(conditions)
    if group:
        text += " GROUP BY " + ", ".join(group)
    if fill:
        text += f" fill({fill})"
    return f"{text} {tail}" if tail else text


def fixed(color: str) -> dict[str, str]:
    return {"mode": "fixed", "fixedColor": color}


# ----------------------------------------------------------------------------------------------- overview

COHORT = (match("fw_version"), match("model_id"))
FW_VERSION = Variable(
    "fw_version", "Firmware", 'SHOW TAG VALUES FROM "telemetry" WITH KEY = "fw_version"', multi=True, include_all=True
)
MODEL_ID = Variable(
    "model_id", "Model", 'SHOW TAG VALUES FROM "telemetry" WITH KEY = "model_id"', multi=True, include_all=True
)


def last_seen() -> str:
    """Per device of the selected cohorts: when its last frame arrived, and its window length (24 h back)."""
    columns = 'last("received") AS "last_received", last("window_s") AS "window_s"'
    return "(" + select(columns, TELEMETRY, LAST_24H, *COHORT, group=('"device"',)) + ")"


def devices_reporting(by: str | None, title: str, **settings: object) -> Panel:
    """Devices with at least one frame per interval, overall or per value of the tag `by`."""
    inner_group = (BY_TIME, '"device"', *([f'"{by}"'] if by else []))
    inner = select('count("seq") AS "frames"', TELEMETRY, TIME_FILTER, *COHORT, group=inner_group, fill="none")
    outer = select(
        'count("frames") AS "devices"',
        f"({inner})",
        TIME_FILTER,
        group=(BY_TIME, *([f'"{by}"'] if by else [])),
        fill="0",
    )
    alias = f"$tag_{by}" if by else "reporting devices"
    return timeseries(title, [Query(outer, alias=alias)], interval=WINDOW, unit="short", decimals=0, **settings)


def cohort_rate(title: str, expression: str, description: str) -> Panel:
    """A per-window rate of the selected cohorts, one series per (fw_version, model_id)."""
    query = select(
        f'{expression} AS "rate"',
        TELEMETRY,
        TIME_FILTER,
        *COHORT,
        group=(BY_TIME, '"fw_version"', '"model_id"'),
        fill="none",
    )
    return timeseries(
        title,
        [Query(query, alias="fw $tag_fw_version · model $tag_model_id")],
        interval=WINDOW,
        unit="percentunit",
        min=0,
        description=description,
        width=8,
    )


def confidence_heatmap(title: str, *conditions: str, **settings: object) -> Panel:
    """Share of inferences per top-1 confidence bin over time; rows named by the bin's upper bound."""
    columns = ", ".join(
        f'sum("conf_hist_{b}") / sum("inference_count") AS "{(b + 1) / 10:.1f}"'
        for b in range(len(CONFIDENCE_MIDPOINTS))
    )
    query = select(columns, TELEMETRY, TIME_FILTER, *conditions, group=(BY_TIME,), fill="none")
    return heatmap(
        title,
        [Query(query, alias="$col")],
        y_unit="percentunit",
        unit="percentunit",
        interval=WINDOW,
        description="Share of the window's inferences whose top-1 confidence fell in each bin (row = upper bound).",
        **settings,
    )


def ingest_rate(title: str, condition: str | None, by: str, description: str) -> Panel:
    query = select(
        'sum("count") * 1000 / $__interval_ms AS "rate"',
        INGEST,
        TIME_FILTER,
        *([condition] if condition else []),
        group=(BY_TIME, f'"{by}"'),
        fill="0",
    )
    return timeseries(
        title, [Query(query, alias=f"$tag_{by}")], interval=INGEST_PERIOD, unit="cps", description=description, width=8
    )


def fleet_overview() -> Dashboard:
    reporting = select('count("last_received") AS "reporting"', last_seen(), FRESH)
    expected = select('count("last_received") AS "expected"', last_seen())
    stale_count = select('count("last_received") AS "stale"', last_seen(), STALE)
    stale_rows = select(
        f'"last_received" * 1000 AS "last_received", {END_S} - "last_received" AS "silent_for", "window_s"',
        last_seen(),
        STALE,
        group=('"device"',),
    )
    quarantined = select('sum("count") AS "quarantined"', INGEST, TIME_FILTER, "\"outcome\" = 'quarantined'")
    critical = select('count("q") AS "critical"', FINDINGS, TIME_FILTER, "\"severity\" = 'critical'")
    queue = select(
        'max("queue_depth") AS "queue depth", max("spool_bytes") AS "spool"',
        INGEST,
        TIME_FILTER,
        group=(BY_TIME, '"instance"'),
    )
    status = Row(
        "Fleet status",
        (
            stat(
                "Devices reporting / expected",
                [Query(reporting, alias="reporting"), Query(expected, alias="expected")],
                width=8,
                color={"mode": "fixed", "fixedColor": "text"},
                description="Reporting: a frame received within two windows of the range end. Expected: devices "
                "seen in the 24 h before the range end.",
            ),
            stat(
                "Stale",
                [Query(stale_count, alias="stale")],
                thresholds=(Step(None, "green"), Step(1, "orange")),
                no_value="0",
                description="Seen in the last 24 h, but no frame received for two windows.",
            ),
            stat(
                "Quarantined frames",
                [Query(quarantined, alias="quarantined")],
                thresholds=(Step(None, "green"), Step(1, "orange")),
                no_value="0",
                description="Frames the pipeline quarantined in the time range (see the rate by reason below).",
            ),
            stat(
                "Critical findings",
                [Query(critical, alias="critical")],
                thresholds=(Step(None, "green"), Step(1, "red")),
                no_value="0",
                links=(Link("Drift", f"/d/{UID_DRIFT}/drift?${{__url_time_range}}"),),
                width=8,
            ),
            devices_reporting(None, "Devices reporting per window", width=12),
            table(
                "Stale devices",
                [Query(stale_rows)],
                sort_by="silent for",
                width=12,
                overrides=(
                    Override("device", {"links": [DEVICE_LINK.to_json()]}),
                    Override("last_received", {"unit": "dateTimeAsIso", "displayName": "last frame received"}),
                    Override("silent_for", {"unit": "s", "displayName": "silent for"}),
                    Override("window_s", {"unit": "s", "displayName": "window"}),
                ),
            ),
        ),
    )
    ingest = Row(
        "Ingest",
        (
            ingest_rate(
                "Frames by outcome", None, "outcome", "Frames per second received, stored, spooled, quarantined."
            ),
            ingest_rate(
                "Quarantine by reason",
                "\"outcome\" = 'quarantined'",
                "reason",
                "Frames per second quarantined, by the reason the decoder or the store gave.",
            ),
            timeseries(
                "Queue depth and spool",
                [Query(queue, alias="$tag_instance $col")],
                interval=INGEST_PERIOD,
                unit="short",
                width=8,
                overrides=(Override(".* spool$", {"unit": "bytes", "custom.axisPlacement": "right"}, regex=True),),
            ),
        ),
    )
    model = Row(
        "Model behaviour",
        (
            confidence_heatmap("Fleet confidence distribution", *COHORT, width=8),
            cohort_rate("Anomaly rate by cohort", ANOMALY_RATE, "Anomalies / inferences per window."),
            cohort_rate("Estimated accuracy by cohort", ESTIMATED_ACCURACY, ACCURACY_NOTE),
        ),
    )
    adoption = Row(
        "Adoption",
        (
            devices_reporting("fw_version", "Firmware adoption", stacking="percent"),
            devices_reporting("model_id", "Model adoption", stacking="percent"),
        ),
    )
    return Dashboard(
        UID_OVERVIEW,
        "fleetwatch / Fleet overview",
        "Is the fleet reporting, is ingest healthy, how do the models behave, what runs where.",
        rows=(status, ingest, model, adoption),
        variables=(FW_VERSION, MODEL_ID),
    )


# ------------------------------------------------------------------------------------------ device detail

DEVICE = match("device")


@dataclass(frozen=True)
class Signal:
    """A drift signal as the device dashboard plots it: the telemetry value against the baseline band.

    `name` is the drift engine's signal name and the `signal` tag of `baseline_band`, whose mean/lower/upper
    are in the unit of `expression`. `active_only`: skip idle windows (no inferences, zero statistics).
    """

    name: str
    expression: str
    unit: str
    active_only: bool = True


SIGNALS = (
    *(Signal(f"input_mean_{c}", f'mean("input_mean_{c}")', "none") for c in range(3)),
    *(Signal(f"input_var_{c}", f'mean("input_var_{c}")', "none") for c in range(3)),
    Signal("anomaly_rate", ANOMALY_RATE, "percentunit"),
    Signal("accuracy", ESTIMATED_ACCURACY, "percentunit"),
    Signal("latency_p95", 'mean("latency_p95_ms")', "ms"),
    Signal("memory", 'mean("mem_peak_pct")', "percent", active_only=False),
)


def signal_panel(signal: Signal) -> Panel:
    active = ['"inference_count" > 0'] if signal.active_only else []
    value = select(
        f'{signal.expression} AS "value"', TELEMETRY, TIME_FILTER, DEVICE, *active, group=(BY_TIME,), fill="none"
    )
    band = select(
        'mean("mean") AS "baseline", mean("lower") AS "lower", mean("upper") AS "upper"',
        BAND,
        TIME_FILTER,
        DEVICE,
        f"\"signal\" = '{signal.name}'",
        group=(BY_TIME,),
        fill="none",
    )
    band_color = fixed("blue")
    return timeseries(
        signal.name,
        [Query(value, alias="$col"), Query(band, alias="$col")],
        interval=WINDOW,
        unit=signal.unit,
        width=8,
        height=7,
        description=ACCURACY_NOTE
        if signal.name == "accuracy"
        else f"Drift signal {signal.name} against its baseline band.",
        overrides=(
            Override("value", {"color": fixed("orange"), "custom.lineWidth": 2}),
            Override("baseline", {"color": band_color, "custom.lineStyle": {"fill": "dash", "dash": [10, 10]}}),
            Override("lower", {"color": band_color, "custom.lineWidth": 0}),
            Override(
                "upper",
                {"color": band_color, "custom.lineWidth": 0, "custom.fillBelowTo": "lower", "custom.fillOpacity": 20},
            ),
        ),
    )


def device_detail() -> Dashboard:
    device = Variable("device", "Device", 'SHOW TAG VALUES FROM "telemetry" WITH KEY = "device"')
    info = select(
        'last("seq") AS "seq", last("received") * 1000 AS "last_received", last("window_s") AS "window_s", '
        'count("seq") AS "windows"',
        TELEMETRY,
        TIME_FILTER,
        DEVICE,
        group=('"fw_version"', '"model_id"', '"schema"'),
    )
    rebooted = select('("flags" & 8) / 8 AS "rebooted"', TELEMETRY, TIME_FILTER, DEVICE)
    flags = select(
        '"flags" & 1 AS "time synced", ("flags" & 2) / 2 AS "saturated", ("flags" & 4) / 4 AS "low battery", '
        '("flags" & 8) / 8 AS "rebooted"',
        TELEMETRY,
        TIME_FILTER,
        DEVICE,
    )
    device_findings = (TIME_FILTER, "\"scope\" = 'device'", match("key", "device"), NON_OK)
    classes = ", ".join(f'sum("class_counts_{k}") / sum("inference_count") AS "class {k}"' for k in range(4))
    overview = Row(
        "Device",
        (
            table(
                "Firmware, model and schema",
                [Query(info)],
                width=12,
                height=5,
                overrides=(
                    Override("last_received", {"unit": "dateTimeAsIso", "displayName": "last frame received"}),
                    Override("window_s", {"unit": "s", "displayName": "window"}),
                ),
            ),
            stat(
                "Reboots",
                [Query(select('sum("rebooted") AS "reboots"', f"({rebooted})"), alias="reboots")],
                height=5,
                thresholds=(Step(None, "green"), Step(1, "orange")),
                no_value="0",
                description="Windows with the rebooted flag (flags bit 3) in the time range.",
            ),
            stat(
                "Battery now",
                [Query(select('last("battery_mv") AS "battery"', TELEMETRY, TIME_FILTER, DEVICE), alias="battery")],
                height=5,
                unit="mvolt",
                color={"mode": "fixed", "fixedColor": "text"},
            ),
            stat(
                "Open findings",
                [Query(select('count("q") AS "findings"', FINDINGS, *device_findings), alias="findings")],
                height=5,
                thresholds=(Step(None, "green"), Step(1, "red")),
                no_value="0",
                links=(Link("Drift", f"/d/{UID_DRIFT}/drift?var-device=${{device}}&${{__url_time_range}}"),),
            ),
        ),
    )
    signals = Row("Signals against their baseline band", tuple(signal_panel(s) for s in SIGNALS))
    outputs = Row(
        "Model output",
        (
            confidence_heatmap("Confidence distribution", DEVICE, width=12),
            timeseries(
                "Predicted classes",
                [
                    Query(
                        select(classes, TELEMETRY, TIME_FILTER, DEVICE, group=(BY_TIME,), fill="none"),
                        alias="$col",
                    )
                ],
                stacking="percent",
                interval=WINDOW,
                unit="percentunit",
                width=12,
            ),
        ),
    )
    health = Row(
        "Health",
        (
            timeseries(
                "Latency",
                [
                    Query(
                        select(
                            'mean("latency_p50_ms") AS "p50", mean("latency_p95_ms") AS "p95"',
                            TELEMETRY,
                            TIME_FILTER,
                            DEVICE,
                            '"inference_count" > 0',
                            group=(BY_TIME,),
                            fill="none",
                        ),
                        alias="$col",
                    )
                ],
                interval=WINDOW,
                unit="ms",
                width=8,
            ),
            timeseries(
                "Battery",
                [
                    Query(
                        select(
                            'mean("battery_mv") AS "battery"',
                            TELEMETRY,
                            TIME_FILTER,
                            DEVICE,
                            group=(BY_TIME,),
                            fill="none",
                        ),
                        alias="$col",
                    )
                ],
                interval=WINDOW,
                unit="mvolt",
                width=8,
            ),
            state_timeline(
                "Flags",
                [Query(flags, alias="$col")],
                width=8,
                mappings=(
                    {"type": "value", "options": {"0": {"text": "no", "color": "transparent", "index": 0}}},
                    {"type": "value", "options": {"1": {"text": "yes", "color": "orange", "index": 1}}},
                ),
                description="flags bit 0 time synced, bit 1 saturated, bit 2 low battery, bit 3 rebooted.",
            ),
        ),
    )
    findings = Row(
        "Findings",
        (
            table(
                "Findings for this device",
                [
                    Query(
                        select(
                            '"signal", "severity", "q", "p", "effect", "effect_name", "statistic", "baseline_version"',
                            FINDINGS,
                            *device_findings,
                            tail="ORDER BY time DESC LIMIT 200",
                        )
                    )
                ],
                width=24,
                overrides=(
                    Override(
                        "severity", {"mappings": [SEVERITY_COLORS], "custom.cellOptions": {"type": "color-background"}}
                    ),
                    Override("^(q|p)$", {"unit": "sci"}, regex=True),
                ),
            ),
        ),
    )
    return Dashboard(
        UID_DEVICE,
        "fleetwatch / Device detail",
        "One device: every drift signal against its baseline band, model output, health, findings.",
        rows=(overview, signals, outputs, health, findings),
        variables=(device,),
    )


# -------------------------------------------------------------------------------------------------- drift

SIGNAL = match("signal")
IN_SCOPE = (
    "(\"scope\" = 'fleet' OR (\"scope\" = 'device' AND "
    + match("key", "device")
    + ") OR (\"scope\" = 'cohort' AND "
    + match("key", "cohort")
    + "))"
)


def finding_count(title: str, scope: str, variable: str) -> Panel:
    """How many devices (or cohorts) have a non-ok finding in the range."""
    inner = select(
        'count("q") AS "findings"',
        FINDINGS,
        TIME_FILTER,
        f"\"scope\" = '{scope}'",
        match("key", variable),
        NON_OK,
        SIGNAL,
        group=('"key"',),
    )
    return stat(
        title,
        [Query(select(f'count("findings") AS "{variable}s"', f"({inner})"), alias=f"{variable}s")],
        thresholds=(Step(None, "green"), Step(1, "orange")),
        no_value="0",
        width=6,
    )


def effect_sizes(title: str, scope: str, *conditions: str, by: Sequence[str]) -> Panel:
    query = select(
        'max("effect") AS "effect"',
        FINDINGS,
        TIME_FILTER,
        f"\"scope\" = '{scope}'",
        *conditions,
        SIGNAL,
        group=(BY_TIME, *(f'"{tag}"' for tag in by)),
        fill="none",
    )
    return timeseries(
        title,
        [Query(query, alias=" · ".join(f"$tag_{tag}" for tag in by))],
        interval=WINDOW,
        unit="none",
        width=12,
        description="Largest effect size per window (in the signal's effect measure: z, PSI, relative increase).",
    )


def drift() -> Dashboard:
    variables = (
        Variable(
            "signal", "Signal", 'SHOW TAG VALUES FROM "findings" WITH KEY = "signal"', multi=True, include_all=True
        ),
        Variable(
            "device",
            "Device",
            'SHOW TAG VALUES FROM "findings" WITH KEY = "key" WHERE "scope" = \'device\'',
            multi=True,
            include_all=True,
        ),
        Variable(
            "cohort",
            "Cohort",
            'SHOW TAG VALUES FROM "findings" WITH KEY = "key" WHERE "scope" = \'cohort\'',
            multi=True,
            include_all=True,
            description="Inventory tags (site=north), fw_version=... and model_id=... cohorts the drift engine checks.",
        ),
    )
    by_severity = select(
        'count("q") AS "findings"', FINDINGS, TIME_FILTER, NON_OK, SIGNAL, IN_SCOPE, group=('"severity"',)
    )
    rows = select(
        '"scope", "key", "signal", "severity", "q", "p", "effect", "effect_name", "statistic", "baseline_version", '
        '"window_start" * 1000 AS "window start", "window_end" * 1000 AS "window end"',
        FINDINGS,
        TIME_FILTER,
        NON_OK,
        SIGNAL,
        IN_SCOPE,
        tail="ORDER BY time DESC LIMIT 500",
    )
    grid = select(
        'count("q") AS "findings"',
        FINDINGS,
        TIME_FILTER,
        "\"scope\" = 'device'",
        match("key", "device"),
        NON_OK,
        SIGNAL,
        group=(BY_TIME, '"key"'),
        fill="0",
    )
    per_signal = select(
        'count("q") AS "findings"',
        FINDINGS,
        TIME_FILTER,
        NON_OK,
        SIGNAL,
        IN_SCOPE,
        group=(BY_TIME, '"signal"'),
        fill="0",
    )
    latest = select(
        'last("q") AS "q", last("effect") AS "effect", max("effect") AS "max effect", last("effect_name") AS '
        '"effect_name", last("baseline_version") AS "baseline_version", count("q") AS "findings"',
        FINDINGS,
        TIME_FILTER,
        "\"scope\" = 'cohort'",
        match("key", "cohort"),
        NON_OK,
        SIGNAL,
        group=('"key"', '"signal"'),
    )
    summary = Row(
        "Findings",
        (
            stat(
                "Findings by severity",
                [Query(by_severity, alias="$tag_severity")],
                width=6,
                overrides=(
                    Override("critical", {"color": fixed("red")}),
                    Override("warning", {"color": fixed("orange")}),
                ),
                color={"mode": "fixed", "fixedColor": "text"},
            ),
            finding_count("Devices with findings", "device", "device"),
            finding_count("Cohorts with findings", "cohort", "cohort"),
            stat(
                "Fleet-level findings",
                [
                    Query(
                        select('count("q") AS "fleet"', FINDINGS, TIME_FILTER, "\"scope\" = 'fleet'", NON_OK, SIGNAL),
                        alias="fleet",
                    )
                ],
                thresholds=(Step(None, "green"), Step(1, "red")),
                no_value="0",
                width=6,
            ),
            table(
                "Findings (not ok), newest first",
                [Query(rows)],
                width=24,
                height=10,
                overrides=(
                    Override(
                        "severity", {"mappings": [SEVERITY_COLORS], "custom.cellOptions": {"type": "color-background"}}
                    ),
                    Override("^(q|p)$", {"unit": "sci"}, regex=True),
                    Override("^window (start|end)$", {"unit": "dateTimeAsIso"}, regex=True),
                    Override("key", {"links": [DEVICE_LINK.to_json()]}),
                ),
                description="Every finding carries its statistic, p and q (after multiple-testing control), effect "
                "size and the baseline it was compared with. Click a device key for its dashboard.",
            ),
        ),
    )
    devices = Row(
        "Devices over time",
        (
            heatmap(
                "Findings per device and window",
                [Query(grid, alias="$tag_key")],
                interval=WINDOW,
                width=16,
                height=10,
                description="Non-ok findings per device (row) and window: persistent rows are persistent drift.",
            ),
            timeseries(
                "Findings per signal",
                [Query(per_signal, alias="$tag_signal")],
                interval=WINDOW,
                bars=True,
                stacking="normal",
                unit="short",
                width=8,
                height=10,
            ),
        ),
    )
    cohorts = Row(
        "Cohorts and fleet",
        (
            effect_sizes("Cohort effect sizes", "cohort", match("key", "cohort"), by=("key", "signal")),
            effect_sizes("Fleet effect sizes", "fleet", by=("signal",)),
            table(
                "Cohort comparison",
                [Query(latest)],
                sort_by="max effect",
                width=24,
                overrides=(Override("q", {"unit": "sci"}),),
                description="Per cohort and signal: the latest non-ok finding's q and effect, the largest effect, and "
                "how many windows had a finding in the range.",
            ),
        ),
    )
    return Dashboard(
        UID_DRIFT,
        "fleetwatch / Drift",
        "What the drift engine found: per device, cohort and fleet, with the evidence for each finding.",
        rows=(summary, devices, cohorts),
        variables=variables,
    )


# ----------------------------------------------------------------------------------------------- rollouts

ROLLOUT_ID = match("rollout_id")
METRIC = match("metric")


def arm_bands(arm: str, color: str) -> tuple[Override, ...]:
    """The estimate of one arm as a line, its confidence interval as a band of the same colour."""
    return (
        Override(f"{arm} estimate", {"color": fixed(color), "custom.lineWidth": 2}),
        Override(f"{arm} lower", {"color": fixed(color), "custom.lineWidth": 0}),
        Override(
            f"{arm} upper",
            {
                "color": fixed(color),
                "custom.lineWidth": 0,
                "custom.fillBelowTo": f"{arm} lower",
                "custom.fillOpacity": 20,
            },
        ),
    )


def rollouts() -> Dashboard:
    variables = (
        Variable("rollout_id", "Rollout", 'SHOW TAG VALUES FROM "rollout" WITH KEY = "rollout_id"'),
        Variable(
            "metric",
            "Metric",
            'SHOW TAG VALUES FROM "rollout" WITH KEY = "metric" WHERE "rollout_id" =~ /^${rollout_id:regex}$/',
            multi=True,
            include_all=True,
        ),
    )
    arms = select(
        'last("estimate") AS "estimate", last("lower") AS "lower", last("upper") AS "upper"',
        ROLLOUT,
        TIME_FILTER,
        ROLLOUT_ID,
        METRIC,
        group=(BY_TIME, '"arm"'),
        fill="none",
    )
    verdict = Row(
        "Verdict",
        (
            stat(
                "Latest verdict",
                [Query(select('last("verdict") AS "verdict"', ROLLOUT, TIME_FILTER, ROLLOUT_ID), alias="verdict")],
                fields="/^verdict$/",
                width=6,
                mappings=(VERDICT_COLORS,),
                color={"mode": "fixed", "fixedColor": "text"},
            ),
            stat(
                "Devices per arm",
                [
                    Query(
                        select('last("n_devices") AS "devices"', ROLLOUT, TIME_FILTER, ROLLOUT_ID, group=('"arm"',)),
                        alias="$tag_arm",
                    )
                ],
                width=6,
                color={"mode": "fixed", "fixedColor": "text"},
            ),
            state_timeline(
                "Stage and verdict",
                [
                    Query(
                        select('"stage", "verdict"', ROLLOUT, TIME_FILTER, ROLLOUT_ID, "\"arm\" = 'canary'"),
                        alias="$col",
                    )
                ],
                width=12,
                height=4,
                mappings=(VERDICT_COLORS,),
                description="The canary's stage at each judgement, and the verdict the judge gave.",
            ),
        ),
    )
    comparison = Row(
        "Canary vs control",
        (
            timeseries(
                "$metric: canary vs control",
                [Query(arms, alias="$tag_arm $col")],
                repeat="metric",
                width=8,
                overrides=(*arm_bands("canary", "orange"), *arm_bands("control", "blue")),
                description="Each arm's estimate of the metric with its confidence interval, per judgement.",
            ),
        ),
    )
    history = Row(
        "Judgements",
        (
            table(
                "Judgements, newest first",
                [
                    Query(
                        select(
                            '"stage", "metric", "arm", "verdict", "estimate", "lower", "upper", "n_devices"',
                            ROLLOUT,
                            TIME_FILTER,
                            ROLLOUT_ID,
                            METRIC,
                            tail="ORDER BY time DESC LIMIT 500",
                        )
                    )
                ],
                width=24,
                overrides=(
                    Override(
                        "verdict", {"mappings": [VERDICT_COLORS], "custom.cellOptions": {"type": "color-background"}}
                    ),
                ),
            ),
        ),
    )
    return Dashboard(
        UID_ROLLOUTS,
        "fleetwatch / Rollouts",
        "Canary rollouts: each metric of canary vs control with confidence intervals, stages and verdicts.",
        rows=(verdict, comparison, history),
        variables=variables,
        time_from="now-7d",
    )


#: File name (under dashboards/) -> dashboard.
DASHBOARDS = {
    "fleet-overview.json": fleet_overview,
    "device-detail.json": device_detail,
    "drift.json": drift,
    "rollouts.json": rollouts,
}
