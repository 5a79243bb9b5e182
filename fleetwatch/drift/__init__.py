"""Drift detection: telemetry windows against a model's baseline.

The pure statistical core: `stats` (tests and effect sizes over whole-fleet arrays), `sequential` (CUSUM
with a threshold from a false-alarm budget), `multitest` (FDR and FWER control, cohort evidence) and
`severity` (significance and effect size to an alert level). docs/drift.md explains each test.
"""
