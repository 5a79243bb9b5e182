"""Grafana as code: the fleetwatch dashboards, their provisioning files, and `push` to a running Grafana.

- `builder`: a small typed builder for the dashboard JSON model (Grafana 10/11, schemaVersion 39);
- `dashboards`: the four dashboards (fleet overview, device detail, drift, rollouts) over the data model;
- `provisioning`: data source, dashboard provider, alert rules, contact point and policy; `build` writes
  dashboards/ (`fleetwatch grafana build`);
- `push`: the same objects through Grafana's HTTP API with grafana-client (`fleetwatch grafana push`,
  extra `fleetwatch[grafana]`);
- `macros`: what Grafana does to an InfluxQL query (variables, `$timeFilter`, `$__interval`) before
  InfluxDB sees it, used to run every panel's query as Grafana would.

docs/dashboards.md describes the dashboards and how to install them.
"""
