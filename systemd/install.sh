#!/usr/bin/env bash
# Install edge-emotion as a systemd service, from this repository:
#   venv /opt/edge-emotion/venv, config /etc/edge-emotion/config.yaml (kept if present), unit enabled and started.
# Run it again to upgrade (idempotent). Usage: sudo systemd/install.sh [--uninstall [--purge]]
#   --uninstall  stop and remove the service and /opt/edge-emotion; keeps /etc/edge-emotion
#   --purge      with --uninstall: remove /etc/edge-emotion too
set -euo pipefail

PREFIX=/opt/edge-emotion
VENV="$PREFIX/venv"
CONFIG_DIR=/etc/edge-emotion
UNIT_NAME=edge-emotion.service
UNIT_PATH="/etc/systemd/system/$UNIT_NAME"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"

die() { echo "install.sh: $*" >&2; exit 1; }

uninstall=0
purge=0
for arg in "$@"; do
    case "$arg" in
        --uninstall) uninstall=1 ;;
        --purge) purge=1 ;;
        -h|--help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $arg (try --help)" ;;
    esac
done
[ "$purge" -eq 0 ] || [ "$uninstall" -eq 1 ] || die "--purge only goes with --uninstall"
[ "$(id -u)" -eq 0 ] || die "run as root (sudo $0 $*)"
command -v systemctl >/dev/null 2>&1 || die "systemctl not found: this installs a systemd service"

if [ "$uninstall" -eq 1 ]; then
    systemctl disable --now "$UNIT_NAME" 2>/dev/null || true  # not installed: nothing to stop
    rm -f "$UNIT_PATH"
    systemctl daemon-reload
    systemctl reset-failed "$UNIT_NAME" 2>/dev/null || true
    rm -rf "$PREFIX"
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

# The service's dynamic user reads config.yaml; secrets go into the root-only secrets.env, which systemd reads.
install -d -m 0755 "$CONFIG_DIR"
if [ ! -e "$CONFIG_DIR/config.yaml" ]; then
    install -m 0644 "$REPO/config.yaml" "$CONFIG_DIR/config.yaml"
    echo "installed $CONFIG_DIR/config.yaml: set source.uri and mqtt.host there"
fi
if [ ! -e "$CONFIG_DIR/secrets.env" ]; then
    install -m 0600 /dev/null "$CONFIG_DIR/secrets.env"
    echo "# Root-only settings for edge-emotion.service, e.g.: EDGE_EMOTION__MQTT__PASSWORD=..." > "$CONFIG_DIR/secrets.env"
fi

# The unit's SupplementaryGroups: video (cameras) exists everywhere; plugdev (Coral USB udev rules) may not.
for group in $(sed -n 's/^SupplementaryGroups=//p' "$REPO/systemd/$UNIT_NAME"); do
    getent group "$group" >/dev/null || groupadd --system "$group"
done
install -m 0644 "$REPO/systemd/$UNIT_NAME" "$UNIT_PATH"
systemctl daemon-reload
systemctl enable "$UNIT_NAME"
systemctl restart "$UNIT_NAME"  # start, or pick up the new code and unit on a re-run
echo "edge-emotion is running: systemctl status $UNIT_NAME; journalctl -u $UNIT_NAME -f"
