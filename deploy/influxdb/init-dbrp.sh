#!/bin/bash
# Runs once, after the influxdb:2 image's initial setup (the influx CLI is already configured with the admin
# token): maps the database name of fleetwatch's store URL (influxdb://influxdb:8086/fleet) onto the bucket,
# so fleetwatch's v1-compatible /write and /query, and Grafana's InfluxQL data source, reach it.
set -euo pipefail
influx v1 dbrp create \
    --bucket-id "${DOCKER_INFLUXDB_INIT_BUCKET_ID}" \
    --db "${FLEETWATCH_DATABASE:-fleet}" \
    --rp autogen \
    --default \
    --org "${DOCKER_INFLUXDB_INIT_ORG}"
