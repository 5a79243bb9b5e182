"""Create what the InfluxDB store writes into (what `fleetwatch influx setup` runs).

- InfluxDB 1.x, over the v1 API of the store URL: `CREATE DATABASE`, and with a retention a retention
  policy made the database's DEFAULT (`CREATE RETENTION POLICY ... DEFAULT`, or ALTER when it exists),
  named by the URL's `rp` or `fleetwatch`. Idempotent.
- InfluxDB 2.x (and 3.x / Cloud, whose v2 management API is the same), through influxdb-client: the
  bucket (named like the database unless told otherwise) with the retention as its expiry, and the DBRP
  mapping (database + retention policy -> bucket, default) that lets the v1 API write and query it with a
  token. Idempotent: an existing bucket gets the retention, an existing mapping is left alone. This path
  is tested against a stand-in for the 2.x HTTP API only; no 2.x server was available to run it against.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fleetwatch.sinks._influx_http import InfluxHTTP, parse_url, quote_identifier
from fleetwatch.sinks.base import SinkRejected

#: Retention policy made by `setup_v1` when the URL names none.
DEFAULT_RP = "fleetwatch"
#: The retention policy name a DBRP mapping gets when the URL names none (what 2.x calls it by default).
V2_DEFAULT_RP = "autogen"
_DURATION = re.compile(r"^(\d+)([hdw])$")
_SECONDS = {"h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True)
class V2Target:
    """The InfluxDB 2.x management API: base URL (http://host:8086), organization name, an all-access token."""

    url: str
    org: str
    token: str


def retention_seconds(retention: str) -> int:
    """ "90d", "12h", "4w" -> seconds; "INF" -> 0 (keep forever). ValueError for anything else."""
    if retention.upper() == "INF":
        return 0
    match = _DURATION.match(retention)
    if match is None:
        raise ValueError(f"retention {retention!r}: expected a number of h, d or w (e.g. 90d), or INF")
    seconds = int(match.group(1)) * _SECONDS[match.group(2)]
    if seconds < 3600:
        raise ValueError(f"retention {retention!r}: InfluxDB keeps data at least 1h")
    return seconds


def setup_v1(url: str, retention: str | None = None) -> str:
    """Create the database of a store URL (and its default retention policy) on 1.x; returns a summary."""
    target = parse_url(url)
    database = quote_identifier(target.database)
    http = InfluxHTTP(target)
    try:
        _run(http, f"CREATE DATABASE {database}")
        if retention is None:
            return f"database {target.database} ready"
        seconds = retention_seconds(retention)
        duration = "INF" if seconds == 0 else f"{seconds // 3600}h"
        rp = target.rp or DEFAULT_RP
        existing = {
            row[0] for _, series in http.query(f"SHOW RETENTION POLICIES ON {database}") for row in series["values"]
        }
        verb = "ALTER" if rp in existing else "CREATE"
        _run(
            http,
            f"{verb} RETENTION POLICY {quote_identifier(rp)} ON {database} DURATION {duration} REPLICATION 1 DEFAULT",
        )
    finally:
        http.close()
    return f"database {target.database} ready, default retention policy {rp} keeps {retention}"


def setup_v2(url: str, v2: V2Target, retention: str | None = None, bucket: str | None = None) -> str:
    """Create the bucket and the DBRP mapping for a store URL's database on 2.x; returns a summary."""
    from influxdb_client import BucketRetentionRules, DBRPCreate, DBRPsService, InfluxDBClient

    target = parse_url(url)
    name = bucket or target.database
    rp = target.rp or V2_DEFAULT_RP
    rules = [BucketRetentionRules(type="expire", every_seconds=retention_seconds(retention or "INF"))]
    with InfluxDBClient(url=v2.url, token=v2.token, org=v2.org, timeout=int(target.timeout * 1000)) as client:
        orgs = client.organizations_api().find_organizations(org=v2.org)
        if not orgs:
            raise SinkRejected(f"organization {v2.org!r} not found (or the token may not read it)")
        org_id = orgs[0].id
        buckets = client.buckets_api()
        found = buckets.find_buckets(name=name, org_id=org_id).buckets or []
        if found:
            made = found[0]
            made.retention_rules = rules
            buckets.update_bucket(made)
        else:
            made = buckets.create_bucket(bucket_name=name, org=org_id, retention_rules=rules)
        dbrps = DBRPsService(client.api_client)
        mapped = dbrps.get_dbr_ps(org_id=org_id, db=target.database, rp=rp).content or []
        if not mapped:
            dbrps.post_dbrp(
                DBRPCreate(
                    org_id=org_id, bucket_id=made.id, database=target.database, retention_policy=rp, default=True
                )
            )
    return f"bucket {name} ready ({'existing' if found else 'created'}), mapped from {target.database}/{rp}"


def _run(http: InfluxHTTP, statement: str) -> None:
    for _ in http.query(statement, database=False):
        pass
