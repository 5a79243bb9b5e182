"""Sources: where transport messages come from (MQTT, Notehub routes and API, files)."""
