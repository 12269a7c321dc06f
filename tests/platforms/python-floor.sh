#!/usr/bin/env bash
# The lowest Python the project supports (3.9), in a real interpreter: Debian bullseye's python3.9 in a debootstrap
# root (chroot). The device package is installed from this working tree as a device installs it (`pip install .`,
# not editable), then every device command is imported, `edge-emotion check` runs on FER-2013 faces (or, without
# FER2013_PATH, on the bundled demo photo through --full-pipeline) and a short `edge-emotion run --duration`
# publishes to a mosquitto on a loopback port of this host (a chroot shares the network namespace), where a
# subscriber inside the root receives status, emotions and stats.
#
# Run as root from the repository root: bash tests/platforms/python-floor.sh
# Needs debootstrap and mosquitto (apt-get install debootstrap mosquitto). The rootfs tarball and pip's cache of
# wheels are kept under ${EDGE_EMOTION_CI_CACHE:-/var/cache/edge-emotion-ci}, outside the clone: a second run is fast.
# Exits non-zero on failure; the last line printed is a JSON summary.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$(pwd)
started=$(date +%s)
CACHE=${EDGE_EMOTION_CI_CACHE:-/var/cache/edge-emotion-ci}
SUITE=bullseye
TARBALL="$CACHE/rootfs-$SUITE-amd64-python3.tar"
PIP_CACHE="$CACHE/pip-$SUITE-amd64"
FER=${FER2013_PATH:-}
CHECK_FACES=48
WORK=""
ROOT=""
BROKER_PID=""
SUBSCRIBER_PID=""
rootfs="cached"
stage="start"

summary() {  # summary OK [extra JSON fields]: the last line of output
    local ok=$1 extra=${2:-}
    printf '{"check": "python-floor", "ok": %s, "stage": "%s", "suite": "%s", "rootfs": "%s", "seconds": %d%s}\n' \
        "$ok" "$stage" "$SUITE" "$rootfs" "$(($(date +%s) - started))" "$extra"
}

fail() {
    echo "python-floor: $stage: $*" >&2
    summary false ", \"error\": \"$(echo "$*" | head -1 | tr -d '"\\')\""
    exit 1
}

cleanup() {
    [ -n "$SUBSCRIBER_PID" ] && kill "$SUBSCRIBER_PID" 2>/dev/null || true
    [ -n "$BROKER_PID" ] && kill "$BROKER_PID" 2>/dev/null || true
    if [ -n "$ROOT" ]; then
        for mount in fer dev/pts dev proc sys root/.cache/pip; do
            mountpoint -q "$ROOT/$mount" 2>/dev/null && umount -l "$ROOT/$mount" || true
        done
        # Never delete through a mount that is still there (the FER-2013 folder, pip's cache).
        if grep -q " $ROOT/" /proc/mounts; then
            echo "python-floor: $ROOT still has mounts; left in place" >&2
            return 0
        fi
    fi
    [ -n "$WORK" ] && rm -rf --one-file-system "$WORK"
    return 0
}
trap cleanup EXIT

[ "$(id -u)" -eq 0 ] || fail "must run as root (debootstrap, chroot, mount)"
command -v debootstrap >/dev/null || fail "debootstrap is missing: apt-get install debootstrap"
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
[ -x "$MOSQUITTO" ] || fail "mosquitto is missing: apt-get install mosquitto"
if [ -n "$FER" ] && [ ! -f "$FER" ]; then
    fail "FER2013_PATH=$FER is not a file"
fi

mkdir -p "$CACHE" "$PIP_CACHE"
WORK=$(mktemp -d /var/tmp/python-floor.XXXXXX)
ROOT="$WORK/root"
mkdir -p "$ROOT"

stage="rootfs"
if [ -f "$TARBALL" ]; then
    tar -C "$ROOT" -xf "$TARBALL"
else
    rootfs="built"
    MIRROR=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    MIRROR=${MIRROR:-http://deb.debian.org/debian}
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates "$SUITE" "$ROOT" "$MIRROR" \
        >"$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log" >&2; fail "debootstrap $SUITE from $MIRROR failed"; }
    tar -C "$ROOT" -cf "$TARBALL.tmp" . && mv "$TARBALL.tmp" "$TARBALL"
fi

# The host's CA certificates (pip behind this network's TLS proxy), DNS, and the file systems a Python process needs.
cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/" 2>/dev/null || true
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
grep -qw localhost "$ROOT/etc/hosts" 2>/dev/null || echo "127.0.0.1 localhost" >>"$ROOT/etc/hosts"
mount -t proc proc "$ROOT/proc"
mount --bind /dev "$ROOT/dev"
mount --bind /dev/pts "$ROOT/dev/pts"
mount --bind /sys "$ROOT/sys"
mkdir -p "$ROOT/root/.cache/pip"
mount --bind "$PIP_CACHE" "$ROOT/root/.cache/pip"
inside() {  # a command in the root, with a clean environment (the host's PIP_* settings name host paths)
    chroot "$ROOT" /usr/bin/env -i PATH=/opt/ee/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_CERT=/etc/ssl/certs/ca-certificates.crt PYTHONDONTWRITEBYTECODE=1 "$@"
}
inside update-ca-certificates >/dev/null 2>&1 || fail "update-ca-certificates failed in the root"
python_version=$(inside python3 -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')
case "$python_version" in 3.9.*) ;; *) fail "expected Python 3.9 in $SUITE, found $python_version" ;; esac

stage="install"
# The working tree as it is (tracked and untracked files git does not ignore), not the last commit.
mkdir -p "$ROOT/src"
git -C "$REPO" ls-files -z --cached --others --exclude-standard \
    | (cd "$REPO" && tar --null --ignore-failed-read -T - -cf -) | tar -C "$ROOT/src" -xf -
install_started=$(date +%s)
inside python3 -m venv /opt/ee || fail "python3 -m venv failed"
inside pip install -q --upgrade pip >"$WORK/pip.log" 2>&1 || { tail -20 "$WORK/pip.log" >&2; fail "pip upgrade failed"; }
inside pip install -q /src >>"$WORK/pip.log" 2>&1 || { tail -30 "$WORK/pip.log" >&2; fail "pip install . failed"; }
install_s=$(($(date +%s) - install_started))
venv_mb=$(du -sm "$ROOT/opt/ee" | cut -f1)

stage="imports"
# Every device module imports on 3.9; each command's --help runs; no desktop code, no heavy package, no libGL.
inside python3 - <<'EOF' || fail "a device module does not import on Python 3.9"
import importlib
import importlib.util
import pkgutil
import sys

import edge_app

names = [m.name for m in pkgutil.walk_packages(edge_app.__path__, "edge_app.") if not m.name.endswith("__main__")]
for name in names:
    importlib.import_module(name)
for absent in ("train", "convert", "mediapipe", "tensorflow", "jax", "matplotlib"):
    if importlib.util.find_spec(absent) is not None:
        sys.exit(f"{absent} is importable in the device install")
print(f"imported {len(names)} edge_app modules", file=sys.stderr)
EOF
for command in run check annotate bench ui; do
    inside edge-emotion "$command" --help >/dev/null || fail "edge-emotion $command --help failed"
done
cv2_so=$(inside python3 -c 'import cv2, glob, os; print(glob.glob(os.path.join(os.path.dirname(cv2.__file__), "cv2*.so"))[0])')
if inside ldd "$cv2_so" | grep -qE 'libGL|not found'; then
    fail "cv2 ($cv2_so) links libGL or misses a library: $(inside ldd "$cv2_so" | grep -E 'libGL|not found' | head -3)"
fi

stage="check"
cd /  # the commands run with the root's working directory, so ./config.yaml is not picked up
if [ -n "$FER" ]; then
    mkdir -p "$ROOT/fer" && mount --bind -o ro "$(dirname "$(readlink -f "$FER")")" "$ROOT/fer"
    data="/fer/$(basename "$FER")"
    check_json=$(inside edge-emotion check --data "$data" --split test --limit "$CHECK_FACES" --tolerance 100) \
        || fail "edge-emotion check on $CHECK_FACES FER-2013 faces failed"
    check_mode="fer2013 test, first $CHECK_FACES faces"
    # The same faces on the host's Python (the CI venv), when there is one: the same model must agree.
    if [ -x "$REPO/.venv/bin/edge-emotion" ]; then
        host_json=$("$REPO/.venv/bin/edge-emotion" check --data "$FER" --split test --limit "$CHECK_FACES" \
            --tolerance 100 2>/dev/null) || fail "edge-emotion check on the host failed"
    fi
else
    echo "python-floor: FER2013_PATH is not set: check runs on the bundled demo photo (--full-pipeline)" >&2
    mkdir -p "$ROOT/photos/happy"
    cp "$REPO/edge_app/data/demo_face.jpg" "$ROOT/photos/happy/"
    check_json=$(inside edge-emotion check --data /photos --full-pipeline --tolerance 100) \
        || fail "edge-emotion check --full-pipeline on the demo photo failed"
    check_mode="demo photo, full pipeline"
fi
check_accuracy=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["accuracy"])' "$check_json")
check_n=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["n"])' "$check_json")
host_accuracy=null
if [ -n "${host_json:-}" ]; then
    host_accuracy=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["accuracy"])' "$host_json")
    python3 -c 'import sys; a, b, n = map(float, sys.argv[1:]); sys.exit(abs(a - b) * n > 1.5)' \
        "$check_accuracy" "$host_accuracy" "$check_n" \
        || fail "accuracy on Python 3.9 ($check_accuracy) differs from the host's ($host_accuracy) by more than one face"
fi

stage="run"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$port" >"$WORK/mosquitto.conf"
"$MOSQUITTO" -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
BROKER_PID=$!
python3 - "$port" <<'EOF' || fail "mosquitto did not listen on 127.0.0.1:$port"
import socket, sys, time
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit(1)
EOF
# The subscriber runs in the root too (paho from the device install, on 3.9) and ends when `offline` arrives.
cat >"$ROOT/subscriber.py" <<'EOF'
import json, sys, threading
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

port, out = int(sys.argv[1]), sys.argv[2]
messages, subscribed, offline = [], threading.Event(), threading.Event()
client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="python-floor-sub")
client.on_connect = lambda c, u, f, rc, p: c.subscribe("emotion/#", qos=1)
client.on_subscribe = lambda *args: subscribed.set()
def on_message(c, u, m):
    messages.append((m.topic, m.payload.decode()))
    if m.topic.endswith("/status") and m.payload == b"offline":
        offline.set()
client.on_message = on_message
client.connect("127.0.0.1", port)
client.loop_start()
subscribed.wait(60)
open(out + ".ready", "w").close()
offline.wait(60)
client.disconnect()
client.loop_stop()
json.dump(messages, open(out, "w"))
EOF
inside python3 /subscriber.py "$port" /messages.json &
SUBSCRIBER_PID=$!
for _ in $(seq 600); do [ -f "$ROOT/messages.json.ready" ] && break; sleep 0.1; done
[ -f "$ROOT/messages.json.ready" ] || fail "the subscriber did not subscribe"
run_started=$(date +%s.%N)
inside edge-emotion --set mqtt.host=127.0.0.1 --set mqtt.port="$port" --set device.id=floor39 --set aggregate.window_s=1 \
    --set mqtt.discovery=false run --duration 3 >"$WORK/run.log" 2>&1 || { tail -20 "$WORK/run.log" >&2; fail "edge-emotion run failed"; }
run_s=$(python3 -c "import time; print(round(time.time() - $run_started, 1))")
wait "$SUBSCRIBER_PID" || fail "the subscriber failed"
SUBSCRIBER_PID=""
run_result=$(python3 - "$ROOT/messages.json" <<'EOF'
import json, sys
messages = json.load(open(sys.argv[1]))
status = [p for t, p in messages if t == "emotion/floor39/status"]
windows = [json.loads(p) for t, p in messages if t == "emotion/floor39/emotions"]
stats = [json.loads(p) for t, p in messages if t == "emotion/floor39/stats"]
ok = status[:1] == ["online"] and status[-1:] == ["offline"] and windows and stats
ok = ok and all(w["faces"] == 1 and w["dominant"] == "happy" for w in windows if w["frames"])
ok = ok and sum(w["frames"] for w in windows) > 0 and [w["seq"] for w in windows] == list(range(1, len(windows) + 1))
print(json.dumps({"ok": bool(ok), "windows": len(windows), "stats": len(stats), "status": status,
                  "frames": sum(w["frames"] for w in windows)}))
EOF
)
python3 -c 'import json, sys; sys.exit(not json.loads(sys.argv[1])["ok"])' "$run_result" \
    || fail "the run did not deliver online, happy windows, stats and offline: $run_result"

stage="done"
summary true ", \"python\": \"$python_version\", \"install_s\": $install_s, \"venv_mb\": $venv_mb, \"check\": {\"data\": \"$check_mode\", \"n\": $check_n, \"accuracy\": $check_accuracy, \"host_accuracy\": $host_accuracy}, \"run\": $run_result, \"run_s\": $run_s"
