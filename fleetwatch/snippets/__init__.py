"""The data loop: snippets (raw sensor recordings) from devices into a dataset, and on to Edge Impulse.

- `store`: the dataset directory (one raw file per snippet) and its index in the state database;
  deduplication by sha256, size and age limits.
- `ingest`: a snippet message in (MQTT, Notehub event, `/notehub/snippet`) -> stored, duplicate or
  quarantined with a reason; counted on /metrics.
- `edgeimpulse`: the data acquisition document (pure) and the forwarder (HTTP, retries, idempotent).
- `capture`: snippet requests to devices through the rollout commanders, and the drift-alert hook.

The wire format and its pure decoder live in `fleetwatch.frames.snippet`; docs/snippets.md explains it all.
"""
