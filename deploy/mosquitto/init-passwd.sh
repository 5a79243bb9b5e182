#!/bin/sh
# Maintains the broker's password file (mosquitto_passwd, salted hashes).
#   init-passwd.sh           create the file if missing; set the fleetwatch user's password from
#                            $MQTT_FLEETWATCH_PASSWORD (docker compose runs this before the broker starts)
#   init-passwd.sh DEVICE    add or change DEVICE's password, read from standard input:
#                            docker compose run --rm -T mosquitto-passwd dev-00042 < dev-00042.pass
#                            then reload the broker: docker compose kill -s HUP mosquitto
set -eu
file="${PASSWORD_FILE:-/mosquitto/passwd/passwd}"
umask 077
[ -f "$file" ] || : > "$file"
if [ "$#" -eq 0 ]; then
    : "${MQTT_FLEETWATCH_PASSWORD:?set MQTT_FLEETWATCH_PASSWORD (deploy/.env)}"
    mosquitto_passwd -b "$file" fleetwatch "$MQTT_FLEETWATCH_PASSWORD"
else
    IFS= read -r password
    [ -n "$password" ] || { echo "no password on standard input for $1" >&2; exit 1; }
    mosquitto_passwd -b "$file" "$1" "$password"
fi
