"""`fleetwatch grafana push`: data source, folder, dashboards, alert rules, contact point (and policy) into a
running Grafana 10/11 through its HTTP API, with grafana-client. Safe to run again: everything is keyed by
uid and updated in place.

grafana-client is the optional extra `fleetwatch[grafana]`, imported only here. It brings niquests and
urllib3-future, which replaces the `urllib3` package of the environment it is installed in (at every
interpreter start, through a .pth file, even after it is uninstalled); install it where that is acceptable,
e.g. a separate virtual environment for the ops tooling (docs/dashboards.md).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fleetwatch.grafana.builder import DATASOURCE_UID, Json
from fleetwatch.grafana.dashboards import DASHBOARDS
from fleetwatch.grafana.provisioning import (
    CONTACT_POINT,
    CONTACT_POINT_UID,
    alert_rules,
    contact_point,
    datasource_v1,
    datasource_v2,
    notification_policy,
)
from fleetwatch.sinks._influx_http import parse_url

#: What the extra `fleetwatch[grafana]` installs.
GRAFANA_CLIENT = "grafana-client>=5,<6"


class PushError(RuntimeError):
    """Grafana refused a request, or grafana-client is not installed."""


@dataclass(frozen=True)
class PushTarget:
    """Where to push: Grafana's URL (user:password@ allowed), a service account token, the folder title."""

    url: str
    token: str | None
    folder: str = "fleetwatch"
    timeout: float = 10.0


def datasource_from_store_url(store_url: str) -> Json:
    """The Grafana data source for a fleetwatch store URL (`influxdb://[user:password@]host:port/db[?token=]`).

    With a token: the 2.x/3.x variant (InfluxQL on a DBRP-mapped database, `Authorization: Token`).
    """
    target = parse_url(store_url)
    if target.token:
        return datasource_v2(target.base_url, target.database, target.token)
    return datasource_v1(target.base_url, target.database, target.username or "", target.password or "")


def folder_uid(title: str) -> str:
    """A folder uid from its title: lower case, runs of other characters as `-` (at most 40)."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:40] or "fleetwatch"


def push(
    target: PushTarget, datasource: Json | None, webhook_url: str | None = None, policy: bool = False
) -> list[str]:
    """Create or update everything; returns one line per object ("created ..." / "updated ...").

    Without `datasource` the data source is left as it is (e.g. provisioned from a file; the alert rules
    need it to exist). `webhook_url` adds the webhook contact point; `policy` also replaces the org's
    notification policy tree with one that routes every alert to it.
    """
    try:
        from grafana_client import GrafanaApi
        from grafana_client.client import GrafanaClientError, GrafanaException
        from niquests.exceptions import RequestException
    except ImportError as exc:
        raise PushError(f"grafana push needs {GRAFANA_CLIENT}: pip install 'fleetwatch[grafana]'") from exc
    if policy and not webhook_url:
        raise PushError("a notification policy needs the webhook contact point: give --webhook-url")
    url = target.url if target.url.endswith("/") else target.url + "/"
    api = GrafanaApi.from_url(url, credential=target.token, timeout=target.timeout)

    def exists(get: Callable[[], Any]) -> bool:
        try:
            get()
        except GrafanaClientError as exc:
            if exc.status_code == 404:
                return False
            raise
        return True

    def upsert(what: str, found: bool, create: Callable[[], Any], update: Callable[[], Any]) -> str:
        (update if found else create)()
        return f"{'updated' if found else 'created'} {what}"

    uid = folder_uid(target.folder)
    done: list[str] = []
    try:
        if datasource is not None:
            done.append(
                upsert(
                    f"data source {DATASOURCE_UID}",
                    exists(lambda: api.datasource.get_datasource_by_uid(DATASOURCE_UID)),
                    lambda: api.datasource.create_datasource(datasource),
                    lambda: api.datasource.update_datasource_by_uid(DATASOURCE_UID, datasource),
                )
            )
        done.append(
            upsert(
                f"folder {uid}",
                exists(lambda: api.folder.get_folder(uid)),
                lambda: api.folder.create_folder(target.folder, uid=uid),
                lambda: api.folder.update_folder(uid, title=target.folder, overwrite=True),
            )
        )
        for make in DASHBOARDS.values():
            board = make()
            body = {"dashboard": board.to_json(), "folderUid": uid, "overwrite": True, "message": "fleetwatch push"}
            saved = api.dashboard.update_dashboard(body)
            done.append(f"saved dashboard {board.uid} (version {saved.get('version')})")
        provisioning = api.alertingprovisioning
        for rule in alert_rules(uid):
            done.append(
                upsert(
                    f"alert rule {rule['uid']}",
                    exists(lambda rule=rule: provisioning.get_alertrule(rule["uid"])),
                    lambda rule=rule: provisioning.create_alertrule(rule),
                    lambda rule=rule: provisioning.update_alertrule(rule["uid"], rule),
                )
            )
        if webhook_url:
            point = contact_point(webhook_url)
            known = {p.get("uid") for p in provisioning.get_contactpoints(name=CONTACT_POINT)}
            done.append(
                upsert(
                    f"contact point {CONTACT_POINT_UID}",
                    CONTACT_POINT_UID in known,
                    lambda: provisioning.create_contactpoint(point),
                    lambda: provisioning.update_contactpoint(CONTACT_POINT_UID, point),
                )
            )
        if policy:
            provisioning.set_notification_policy_tree(notification_policy())
            done.append("replaced the notification policy tree")
    except RequestException as exc:
        raise PushError(f"cannot reach Grafana at {target.url}: {exc}") from exc
    except GrafanaException as exc:
        if not exc.status_code:
            raise PushError(f"cannot reach Grafana at {target.url}: {exc.message}") from exc
        raise PushError(f"Grafana answered {exc.status_code}: {exc.message}") from exc
    return done
