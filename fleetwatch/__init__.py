"""fleetwatch: fleet telemetry and model-drift monitoring for microcontrollers running TinyML models."""

__version__ = "0.1.0"
