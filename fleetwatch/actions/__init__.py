"""Actions on findings: alerts (rules, dedupe, grouping, cooldown, silences) and their delivery.

- `config`: the `[alerts]` configuration section (`AlertsConfig`).
- `alerts`: pure decisions (findings and alert state in, transitions and notifications out).
- `receivers`: pure payload builders per receiver kind (Slack, Teams, webhook, GitHub dispatch, http).
- `alertdb`: alert state and silences in the state database; `AlertManager` applies a round.
- `webhooks`: the durable outbox and `OutboxWorker` (retries, Retry-After, dead letters).

Importing this package imports none of them, so `fleetwatch.config` can embed `AlertsConfig` (and
`rollout_config.RolloutConfig`) cheaply.
"""
