"""What Grafana 10/11 does to an InfluxQL raw query before InfluxDB sees it, in code.

Two steps, in this order:

1. The browser (template service, `templateSrv.replace`) replaces variables: `$name`, `${name}`,
   `${name:format}` and `[[name]]`. Built-ins: `$__interval` (e.g. `1h`), `$__interval_ms` (`3600000`),
   `$__from` / `$__to` (Unix ms; `${__to:date:seconds}` is Unix s), `$__range` (`86400s`), `$__range_s`,
   `$__range_ms`. A dashboard variable is formatted by its format when one is given; `:regex` escapes
   every value for a regular expression (`\\^$*+?.()|[]{}/` get a backslash) and joins several as
   `(a|b)`, `:raw` inserts the values joined by commas. Without a format the InfluxDB data source
   decides: numbers pass unchanged; a multi-value variable is always regex-escaped and joined as `(a|b)`;
   a single-value variable is inserted as it is unless it stands inside a `=~ /.../` or `!~ /.../`
   literal, where it is escaped. "All" with a custom all value (fleetwatch uses `.*`) inserts that value
   unformatted; "All" without one means every option's value. Unknown names stay as they are.
2. The server (the InfluxDB data source's backend, `models/query.go`) replaces `$timeFilter` with
   `time >= <from>ms and time <= <to>ms`, then `$interval`, `$__interval_ms` and `$__interval` when the
   browser left them.

Before Grafana moved InfluxQL to the backend, `$timeFilter` of a relative range ending now was
`time > now() - 6h`; `timefilter="relative"` renders that form (InfluxDB takes both).

`$__interval` is the range divided by the panel's max data points (its width in pixels), rounded to a
"nice" interval (Grafana's `roundInterval` table below), and raised to the panel's min interval.

>>> window = TimeRange(1_699_978_400_000, 1_700_000_000_000, relative="6h")
>>> interpolate("$timeFilter GROUP BY time($__interval)", window, {}, max_data_points=360)
'time >= 1699978400000ms and time <= 1700000000000ms GROUP BY time(1m)'
>>> print(interpolate('"d" =~ /^${d:regex}$/', window, {"d": Selection(("dev-1", "a.b"), multi=True)}))
"d" =~ /^(dev-1|a\\.b)$/
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

#: Grafana's `roundInterval`: (below this many ms, use this interval in ms).
_NICE_INTERVALS_MS = (
    (15, 10),
    (35, 20),
    (75, 50),
    (150, 100),
    (350, 200),
    (750, 500),
    (1_500, 1_000),
    (3_500, 2_000),
    (7_500, 5_000),
    (12_500, 10_000),
    (17_500, 15_000),
    (25_000, 20_000),
    (45_000, 30_000),
    (90_000, 60_000),
    (210_000, 120_000),
    (450_000, 300_000),
    (750_000, 600_000),
    (1_050_000, 900_000),
    (1_500_000, 1_200_000),
    (2_700_000, 1_800_000),
    (5_400_000, 3_600_000),
    (9_000_000, 7_200_000),
    (16_200_000, 10_800_000),
    (32_400_000, 21_600_000),
    (86_400_000, 43_200_000),
    (604_800_000, 86_400_000),
    (1_814_400_000, 604_800_000),
    (3_628_800_000, 2_592_000_000),
)
_YEAR_MS = 31_536_000_000
_UNITS_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000, "y": _YEAR_MS}
#: Grafana's variable syntax (templateSrv): $name | [[name:format]] | ${name.path:format}.
_VARIABLE = re.compile(r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^}]+))?(?::([^}]+))?\}")
_REGEX_SPECIALS = re.compile(r"[\\^$*+?.()|\[\]{}/]")
#: A regular expression literal after =~ or !~ (the InfluxDB data source's test for "used in a regex").
_REGEX_LITERAL = re.compile(r"[=!]~\s*/(?![*+?])(?:[^\r\n\[/\\]|\\.|\[(?:[^\r\n\]\\]|\\.)*\])+/")
#: What JavaScript's parseFloat reads as a number (then the data source inserts the value unchanged).
_JS_PARSES_AS_NUMBER = re.compile(r"\s*[+-]?(\d|\.\d|Infinity)")


@dataclass(frozen=True)
class TimeRange:
    """The dashboard's time range in Unix ms; `relative` ("6h") when it is `now-6h` to `now`."""

    start_ms: int
    end_ms: int
    relative: str | None = None


@dataclass(frozen=True)
class Selection:
    """What a dashboard variable holds: the selected values (all option values when "All" without a custom
    all value), how the variable is defined (multi, include all) and whether "All" is selected."""

    values: tuple[str, ...]
    multi: bool = False
    include_all: bool = False
    all_selected: bool = False
    all_value: str | None = None


def regex_escape(value: str) -> str:
    """Grafana's `escapeRegex` / `kbn.regexEscape`."""
    return _REGEX_SPECIALS.sub(lambda m: "\\" + m.group(0), value)


def round_interval(ms: float) -> int:
    """Grafana's `roundInterval`: the nice interval (ms) for a raw interval (ms)."""
    for below, nice in _NICE_INTERVALS_MS:
        if ms < below:
            return nice
    return _YEAR_MS


def interval_ms(text: str) -> int:
    """A Grafana interval ("1h", "30s", ">1m": the `>` of a min interval is ignored) in ms."""
    match = re.fullmatch(r">?(\d+)(ms|s|m|h|d|w|y)", text.strip())
    if not match:
        raise ValueError(f"not a Grafana interval: {text!r}")
    return int(match.group(1)) * _UNITS_MS[match.group(2)]


def format_interval(ms: int) -> str:
    """How Grafana writes an interval into a query (the backend's `gtime.FormatInterval`)."""
    for unit in ("y", "d", "h", "m", "s", "ms"):
        if ms >= _UNITS_MS[unit]:
            return f"{ms // _UNITS_MS[unit]}{unit}"
    return "1ms"


def panel_interval_ms(time_range: TimeRange, max_data_points: int, min_interval: str | None = None) -> int:
    """`$__interval_ms` of a panel: Grafana's `calculateInterval` (round first, then the min interval)."""
    ms = round_interval((time_range.end_ms - time_range.start_ms) / max_data_points)
    return max(ms, interval_ms(min_interval)) if min_interval else ms


def time_filter(time_range: TimeRange, style: Literal["absolute", "relative"] = "absolute") -> str:
    """`$timeFilter`: absolute ms bounds (Grafana 10/11), or `time > now() - 6h` (the former browser form)."""
    if style == "relative" and time_range.relative:
        return f"time > now() - {time_range.relative}"
    return f"time >= {time_range.start_ms}ms and time <= {time_range.end_ms}ms"


def interpolate(
    query: str,
    time_range: TimeRange,
    variables: Mapping[str, Selection],
    *,
    max_data_points: int = 1000,
    min_interval: str | None = None,
    timefilter: Literal["absolute", "relative"] = "absolute",
) -> str:
    """The query InfluxDB receives from a panel (see the module docstring for each rule)."""
    interval = panel_interval_ms(time_range, max_data_points, min_interval)
    span = time_range.end_ms - time_range.start_ms
    builtins = {
        "__interval": format_interval(interval),
        "__interval_ms": str(interval),
        "__range": f"{span // 1000}s",
        "__range_s": str(span // 1000),
        "__range_ms": str(span),
    }
    times = {"__from": time_range.start_ms, "__to": time_range.end_ms}

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(4)
        fmt = match.group(3) or match.group(6)
        if name in builtins and fmt is None:
            return builtins[name]
        if name in times:
            return _format_time(times[name], fmt)
        if name in variables:
            return _format_variable(variables[name], fmt, name, query)
        return match.group(0)

    text = _VARIABLE.sub(replace, query)
    text = text.replace("$timeFilter", time_filter(time_range, timefilter))
    text = text.replace("$interval", builtins["__interval"])
    text = text.replace("$__interval_ms", builtins["__interval_ms"])
    return text.replace("$__interval", builtins["__interval"])


def _format_time(ms: int, fmt: str | None) -> str:
    if fmt is None:
        return str(ms)
    if fmt == "date:seconds":
        return str(ms // 1000)
    if fmt in ("date", "date:iso"):
        return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    raise ValueError(f"time format {fmt!r} is not emulated")


def _format_variable(selection: Selection, fmt: str | None, name: str, query: str) -> str:
    if selection.all_selected and selection.all_value is not None:
        return selection.all_value
    value: str | list[str] = (
        list(selection.values) if selection.multi or selection.all_selected else selection.values[0]
    )
    if fmt == "regex":
        escaped = [regex_escape(v) for v in ([value] if isinstance(value, str) else value)]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
    if fmt is not None:
        raise ValueError(f"variable format {fmt!r} is not emulated")
    return _influx_default(value, selection.multi, name, query)


def _influx_default(value: str | list[str], multi: bool, name: str, query: str) -> str:
    """The InfluxDB data source's `interpolateQueryExpr` (Grafana 10/11)."""
    if isinstance(value, str) and _JS_PARSES_AS_NUMBER.match(value):
        return value
    group = regex_escape(value) if isinstance(value, str) else "(" + "|".join(map(regex_escape, value)) + ")"
    if multi:
        return group
    mentioned = re.compile(rf"/(?:\^)?(.*)(\${re.escape(name)})(?:\$)?/")
    if any(mentioned.search(literal.group(0)) for literal in _REGEX_LITERAL.finditer(query)):
        return group
    return value if isinstance(value, str) else ",".join(value)
