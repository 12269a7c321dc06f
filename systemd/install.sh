#!/usr/bin/env bash
# Install edge-emotion as a systemd service, from this repository: venv /opt/edge-emotion/venv, the template unit
# edge-emotion@.service, one instance per camera, each reading /etc/edge-emotion/<instance>.yaml (kept if present).
# Run it again to upgrade (idempotent): every enabled instance is restarted on the new code.
# Usage: systemd/install.sh [--instance NAME]... | --uninstall [--purge]   (as root)
#   --instance NAME  enable and start edge-emotion@NAME (repeatable; default: the enabled instances, else "main")
#   --uninstall      stop and remove every instance, the unit, /opt/edge-emotion and the state; keeps /etc/edge-emotion
#   --purge          with --uninstall: remove /etc/edge-emotion too
set -euo pipefail

PREFIX=/opt/edge-emotion
VENV="$PREFIX/venv"
CONFIG_DIR=/etc/edge-emotion
STATE_DIRS=(/var/lib/edge-emotion /var/lib/private/edge-emotion)
TEMPLATE=edge-emotion@.service
UNIT_PATH="/etc/systemd/system/$TEMPLATE"
OLD_UNIT=edge-emotion.service  # the single-camera unit of earlier versions
WANTS=/etc/systemd/system/multi-user.target.wants
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"

die() { echo "install.sh: $*" >&2; exit 1; }

uninstall=0
purge=0
instances=()
while [ $# -gt 0 ]; do
    case "$1" in
        --uninstall) uninstall=1 ;;
        --purge) purge=1 ;;
        --instance)
            [ $# -ge 2 ] || die "--instance needs a name"
            [[ "$2" =~ ^[A-Za-z0-9_-]+$ ]] || die "--instance $2: use letters, digits, '_' or '-' (a file name and MQTT topic part)"
            instances+=("$2"); shift ;;
        -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (try --help)" ;;
    esac
    shift
done
[ "$purge" -eq 0 ] || [ "$uninstall" -eq 1 ] || die "--purge only goes with --uninstall"
[ "$uninstall" -eq 0 ] || [ "${#instances[@]}" -eq 0 ] || die "--instance does not go with --uninstall"
[ "$(id -u)" -eq 0 ] || die "run as root"
command -v systemctl >/dev/null 2>&1 || die "systemctl not found: this installs a systemd service"

# enabled_instances: the instance names enabled now, one a line.
enabled_instances() {
    local link
    for link in "$WANTS"/edge-emotion@*.service; do
        [ -e "$link" ] || [ -L "$link" ] || continue
        link="${link##*/edge-emotion@}"
        echo "${link%.service}"
    done
}

if [ "$uninstall" -eq 1 ]; then
    mapfile -t enabled < <(enabled_instances)
    for name in "${enabled[@]}"; do
        systemctl disable --now "edge-emotion@$name.service" || true
    done
    systemctl stop 'edge-emotion@*.service' 2>/dev/null || true  # started by hand, never enabled
    systemctl disable --now "$OLD_UNIT" 2>/dev/null || true
    rm -f "$UNIT_PATH" "/etc/systemd/system/$OLD_UNIT"
    systemctl daemon-reload
    systemctl reset-failed 'edge-emotion@*.service' "$OLD_UNIT" 2>/dev/null || true
    rm -rf "$PREFIX" "${STATE_DIRS[@]}"
    if [ "$purge" -eq 1 ]; then
        rm -rf "$CONFIG_DIR"
        echo "edge-emotion removed, with its configuration"
    else
        echo "edge-emotion removed; configuration kept in $CONFIG_DIR (--uninstall --purge removes it)"
    fi
    exit 0
fi

[ -f "$REPO/pyproject.toml" ] || die "$REPO does not look like the edge-emotion repository"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 9))' || die "$PYTHON is older than Python 3.9"

# picamera2 comes from apt on Raspberry Pi OS (python3-picamera2), PyGObject for GStreamer pipelines from apt
# (python3-gi) on Debian and JetPack: let the venv see the system packages then.
venv_options=()
if "$PYTHON" -c 'import picamera2' >/dev/null 2>&1 || "$PYTHON" -c 'import gi' >/dev/null 2>&1; then
    venv_options+=(--system-site-packages)
fi
if [ ! -x "$VENV/bin/python" ]; then
    install -d -m 0755 "$PREFIX"
    "$PYTHON" -m venv "${venv_options[@]}" "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet --upgrade "$REPO"

# Upgrading from the single-camera unit: its config.yaml becomes the instance "main".
install -d -m 0755 "$CONFIG_DIR"
if [ -e "/etc/systemd/system/$OLD_UNIT" ]; then
    systemctl disable --now "$OLD_UNIT" || true
    rm -f "/etc/systemd/system/$OLD_UNIT"
    if [ -e "$CONFIG_DIR/config.yaml" ] && [ ! -e "$CONFIG_DIR/main.yaml" ]; then
        mv "$CONFIG_DIR/config.yaml" "$CONFIG_DIR/main.yaml"
        echo "moved $CONFIG_DIR/config.yaml to $CONFIG_DIR/main.yaml (instance edge-emotion@main)"
    fi
fi
if [ "${#instances[@]}" -eq 0 ]; then
    mapfile -t instances < <(enabled_instances)
    [ "${#instances[@]}" -gt 0 ] || instances=(main)
fi

# The service's dynamic user reads <instance>.yaml; secrets go into the root-only secrets.env, which systemd reads.
for name in "${instances[@]}"; do
    if [ ! -e "$CONFIG_DIR/$name.yaml" ]; then
        install -m 0644 "$REPO/config.yaml" "$CONFIG_DIR/$name.yaml"
        echo "installed $CONFIG_DIR/$name.yaml: set source.uri and mqtt.host there"
    fi
done
if [ ! -e "$CONFIG_DIR/secrets.env" ]; then
    install -m 0600 /dev/null "$CONFIG_DIR/secrets.env"
    echo "# Root-only settings for every edge-emotion@ instance, e.g.: EDGE_EMOTION__MQTT__PASSWORD=..." \
        > "$CONFIG_DIR/secrets.env"
fi

# The unit's SupplementaryGroups: video (cameras) exists everywhere; plugdev (Coral USB udev rules) may not.
for group in $(sed -n 's/^SupplementaryGroups=//p' "$REPO/systemd/$TEMPLATE"); do
    getent group "$group" >/dev/null || groupadd --system "$group"
done
install -m 0644 "$REPO/systemd/$TEMPLATE" "$UNIT_PATH"
systemctl daemon-reload
for name in "${instances[@]}"; do
    systemctl enable "edge-emotion@$name.service"
done
# Start, or pick up the new code and unit on a re-run: every enabled instance, not only the ones named.
mapfile -t enabled < <(enabled_instances)
for name in "${enabled[@]}"; do
    systemctl restart "edge-emotion@$name.service"
    echo "edge-emotion@$name is running: systemctl status edge-emotion@$name; journalctl -u edge-emotion@$name -f"
done
