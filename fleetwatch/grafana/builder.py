"""A small typed builder for Grafana 10/11 dashboard JSON (classic model, schemaVersion 39), InfluxQL only.

Panels are values (`Panel`), made by the kind functions below (`timeseries`, `stat`, `table`, `heatmap`,
`state_timeline`); a `Dashboard` lays its `Row`s out on Grafana's 24-column grid, numbers the panels and
renders the JSON model. Every target is a raw InfluxQL query (`rawQuery: true`) against the provisioned
data source `DATASOURCE_UID`, so the same JSON works from file provisioning and from `grafana push`.

>>> panel = stat("Devices", [Query('SELECT count("seq") FROM "telemetry" WHERE $timeFilter', alias="devices")])
>>> board = Dashboard("demo", "Demo", "", rows=(Row("Fleet", (panel,)),))
>>> model = board.to_json()
>>> [p["type"] for p in model["panels"]], model["panels"][1]["targets"][0]["rawQuery"]
(['row', 'stat'], True)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

SCHEMA_VERSION = 39
DATASOURCE_UID = "fleetwatch-influxdb"
DATASOURCE: dict[str, str] = {"type": "influxdb", "uid": DATASOURCE_UID}
#: Every fleetwatch dashboard carries this tag; the dashboard links list the dashboards that have it.
TAG = "fleetwatch"
GRID_WIDTH = 24

Json = dict[str, Any]


@dataclass(frozen=True)
class Query:
    """One InfluxQL target. `alias` uses Grafana's InfluxDB alias patterns ($col, $tag_<name>, $m)."""

    text: str
    alias: str = ""
    table: bool = False

    def to_json(self, ref_id: str) -> Json:
        target: Json = {
            "refId": ref_id,
            "datasource": dict(DATASOURCE),
            "rawQuery": True,
            "query": self.text,
            "resultFormat": "table" if self.table else "time_series",
        }
        if self.alias:
            target["alias"] = self.alias
        return target


@dataclass(frozen=True)
class Step:
    """A threshold step: from `value` up (None = from minus infinity), shown in `color`."""

    value: float | None
    color: str


@dataclass(frozen=True)
class Override:
    """Field config properties for the fields whose display name is `name` (or matches it, `regex=True`)."""

    name: str
    properties: Mapping[str, Any]
    regex: bool = False

    def to_json(self) -> Json:
        return {
            "matcher": {"id": "byRegexp" if self.regex else "byName", "options": self.name},
            "properties": [{"id": key, "value": value} for key, value in self.properties.items()],
        }


@dataclass(frozen=True)
class Link:
    """A data link (on a field) or dashboard link: `url` may use Grafana's ${__value.raw}, ${__url_time_range}."""

    title: str
    url: str

    def to_json(self) -> Json:
        return {"title": self.title, "url": self.url}


GREEN = (Step(None, "green"),)


@dataclass(frozen=True)
class Panel:
    """One visualization. Build it with a kind function (`timeseries`, `stat`, ...) rather than directly."""

    type: str
    title: str
    queries: tuple[Query, ...]
    width: int = 12
    height: int = 8
    description: str = ""
    unit: str | None = None
    decimals: int | None = None
    min: float | None = None
    max: float | None = None
    thresholds: tuple[Step, ...] = GREEN
    mappings: tuple[Json, ...] = ()
    color: Json = field(default_factory=lambda: {"mode": "palette-classic"})
    custom: Mapping[str, Any] = field(default_factory=dict)
    overrides: tuple[Override, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    links: tuple[Link, ...] = ()
    interval: str | None = None
    repeat: str | None = None
    transformations: tuple[Json, ...] = ()
    no_value: str | None = None

    def to_json(self, panel_id: int, x: int, y: int) -> Json:
        defaults: Json = {
            "color": dict(self.color),
            "mappings": list(self.mappings),
            "thresholds": {
                "mode": "absolute",
                "steps": [{"color": s.color, "value": s.value} for s in self.thresholds],
            },
            "custom": dict(self.custom),
            "links": [link.to_json() for link in self.links],
        }
        for key, value in (
            ("unit", self.unit),
            ("decimals", self.decimals),
            ("min", self.min),
            ("max", self.max),
            ("noValue", self.no_value),
        ):
            if value is not None:
                defaults[key] = value
        model: Json = {
            "id": panel_id,
            "type": self.type,
            "title": self.title,
            "description": self.description,
            "datasource": dict(DATASOURCE),
            "gridPos": {"h": self.height, "w": self.width, "x": x, "y": y},
            "targets": [q.to_json(chr(ord("A") + i)) for i, q in enumerate(self.queries)],
            "fieldConfig": {"defaults": defaults, "overrides": [o.to_json() for o in self.overrides]},
            "options": dict(self.options),
            "transformations": list(self.transformations),
        }
        if self.interval:
            model["interval"] = self.interval
        if self.repeat:
            model.update(repeat=self.repeat, repeatDirection="h", maxPerRow=3)
        return model


@dataclass(frozen=True)
class Row:
    """A titled row of panels, laid out left to right and wrapped at the grid's width."""

    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class Variable:
    """A query template variable (InfluxQL `SHOW TAG VALUES ...`).

    With `include_all`, "All" is selected by default and sends the custom all value `.*`, so a filter
    `"tag" =~ /^${name:regex}$/` matches every value without listing them (a fleet has many devices).
    """

    name: str
    label: str
    query: str
    multi: bool = False
    include_all: bool = False
    description: str = ""

    def to_json(self) -> Json:
        current: Json = {"selected": True, "text": ["All"], "value": ["$__all"]} if self.include_all else {}
        return {
            "type": "query",
            "name": self.name,
            "label": self.label,
            "description": self.description,
            "datasource": dict(DATASOURCE),
            "query": self.query,
            "definition": self.query,
            "refresh": 2,
            "regex": "",
            "sort": 1,
            "multi": self.multi,
            "includeAll": self.include_all,
            "allValue": ".*" if self.include_all else None,
            "current": current,
            "options": [],
            "hide": 0,
            "skipUrlSync": False,
        }


@dataclass(frozen=True)
class Dashboard:
    """A dashboard: identity, variables, rows of panels; `to_json` is the Grafana JSON model."""

    uid: str
    title: str
    description: str
    rows: tuple[Row, ...]
    variables: tuple[Variable, ...] = ()
    time_from: str = "now-24h"
    refresh: str = "5m"

    def panels(self) -> list[Panel]:
        """Every panel, in layout order (rows not included)."""
        return [panel for row in self.rows for panel in row.panels]

    def panel_id(self, title: str) -> int:
        """The id the panel titled `title` gets in `to_json` (alert rules link to it)."""
        ids = [p["id"] for p in self.to_json()["panels"] if p["title"] == title and p["type"] != "row"]
        if len(ids) != 1:
            raise KeyError(f"{self.uid}: {len(ids)} panels titled {title!r}")
        return ids[0]

    def to_json(self) -> Json:
        panels: list[Json] = []
        y = 0
        for row in self.rows:
            panels.append(
                {
                    "id": len(panels) + 1,
                    "type": "row",
                    "title": row.title,
                    "collapsed": False,
                    "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": y},
                    "panels": [],
                }
            )
            y += 1
            x, line_height = 0, 0
            for panel in row.panels:
                if x + panel.width > GRID_WIDTH:
                    x, y, line_height = 0, y + line_height, 0
                panels.append(panel.to_json(len(panels) + 1, x, y))
                x += panel.width
                line_height = max(line_height, panel.height)
            y += line_height
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": [TAG],
            "timezone": "utc",
            "editable": True,
            "graphTooltip": 1,
            "fiscalYearStartMonth": 0,
            "liveNow": False,
            "refresh": self.refresh,
            "schemaVersion": SCHEMA_VERSION,
            "version": 1,
            "time": {"from": self.time_from, "to": "now"},
            "timepicker": {},
            "templating": {"list": [v.to_json() for v in self.variables]},
            "annotations": {"list": []},
            "links": [
                {
                    "title": "fleetwatch",
                    "type": "dashboards",
                    "tags": [TAG],
                    "asDropdown": False,
                    "includeVars": False,
                    "keepTime": True,
                    "targetBlank": False,
                    "icon": "external link",
                    "tooltip": "",
                    "url": "",
                }
            ],
            "panels": panels,
        }


def _timeseries_custom(**changes: Any) -> dict[str, Any]:
    custom: dict[str, Any] = {
        "drawStyle": "line",
        "lineWidth": 1,
        "fillOpacity": 10,
        "gradientMode": "none",
        "showPoints": "never",
        "pointSize": 4,
        "spanNulls": False,
        "axisPlacement": "auto",
        "axisLabel": "",
        "stacking": {"mode": "none", "group": "A"},
        "thresholdsStyle": {"mode": "off"},
    }
    custom.update(changes)
    return custom


def timeseries(
    title: str,
    queries: Sequence[Query],
    *,
    stacking: Literal["none", "normal", "percent"] = "none",
    bars: bool = False,
    **settings: Any,
) -> Panel:
    """A time series panel; `stacking="percent"` shows each series' share of the total."""
    custom = _timeseries_custom(
        drawStyle="bars" if bars else "line",
        fillOpacity=60 if stacking != "none" or bars else 10,
        stacking={"mode": stacking, "group": "A"},
    )
    options = {
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True, "calcs": []},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    return Panel("timeseries", title, tuple(queries), custom=custom, options=options, **settings)


def stat(title: str, queries: Sequence[Query], *, fields: str = "", **settings: Any) -> Panel:
    """A stat panel showing the last non-null value of each numeric series; `fields` (a /regex/) picks
    other fields, e.g. a string field."""
    options = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": fields, "values": False},
        "colorMode": "value",
        "graphMode": "none",
        "justifyMode": "auto",
        "orientation": "auto",
        "textMode": "value_and_name",
        "wideLayout": True,
        "showPercentChange": False,
    }
    settings.setdefault("width", 4)
    settings.setdefault("height", 4)
    settings.setdefault("color", {"mode": "thresholds"})
    return Panel("stat", title, tuple(queries), options=options, **settings)


def table(title: str, queries: Sequence[Query], *, sort_by: str | None = None, **settings: Any) -> Panel:
    """A table of `table`-format queries; `sort_by` names the column sorted descending."""
    options: dict[str, Any] = {
        "showHeader": True,
        "cellHeight": "sm",
        "footer": {"show": False, "reducer": ["sum"], "countRows": False, "fields": ""},
        "sortBy": [{"displayName": sort_by, "desc": True}] if sort_by else [],
    }
    custom = {"align": "auto", "cellOptions": {"type": "auto"}, "filterable": True, "inspect": False}
    queries = tuple(replace(q, table=True) for q in queries)
    return Panel("table", title, queries, options=options, custom=custom, **settings)


def heatmap(title: str, queries: Sequence[Query], *, y_unit: str = "short", **settings: Any) -> Panel:
    """A heatmap of pre-bucketed series (one field per bucket, named by its upper bound or by a label).

    The series of the queries are joined on time first, so every bucket is a field of one frame; bucket
    names that are not numbers make an ordinal y axis (e.g. one row per device).
    """
    options = {
        "calculate": False,
        "cellGap": 1,
        "color": {
            "mode": "scheme",
            "scheme": "Oranges",
            "steps": 64,
            "exponent": 0.5,
            "fill": "dark-orange",
            "reverse": False,
            "scale": "exponential",
        },
        "rowsFrame": {"layout": "le"},
        "yAxis": {"axisPlacement": "left", "reverse": False, "unit": y_unit},
        "cellValues": {"unit": settings.get("unit") or "short"},
        "legend": {"show": True},
        "tooltip": {"mode": "single", "yHistogram": False, "showColorScale": True},
        "filterValues": {"le": 1e-9},
        "exemplars": {"color": "rgba(255,0,255,0.7)"},
    }
    transformations = ({"id": "joinByField", "options": {"byField": "Time", "mode": "outer"}},)
    custom = {"hideFrom": {"legend": False, "tooltip": False, "viz": False}, "scaleDistribution": {"type": "linear"}}
    return Panel(
        "heatmap", title, tuple(queries), options=options, custom=custom, transformations=transformations, **settings
    )


def state_timeline(title: str, queries: Sequence[Query], **settings: Any) -> Panel:
    """A state timeline: one row per field, each value (number or string) a coloured state."""
    options = {
        "mergeValues": True,
        "showValue": "auto",
        "alignValue": "left",
        "rowHeight": 0.9,
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
        "tooltip": {"mode": "single", "sort": "none"},
    }
    custom = {"fillOpacity": 70, "lineWidth": 0, "hideFrom": {"legend": False, "tooltip": False, "viz": False}}
    return Panel("state-timeline", title, tuple(queries), options=options, custom=custom, **settings)


def value_colors(colors: Mapping[str, str]) -> Json:
    """A value mapping that colours text values (e.g. severity: critical -> red)."""
    return {
        "type": "value",
        "options": {value: {"color": color, "index": i} for i, (value, color) in enumerate(colors.items())},
    }
