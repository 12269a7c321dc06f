#!/usr/bin/env bash
# The device install on arm64, Raspberry Pi OS's base: a Debian bookworm arm64 root run under qemu-user-static
# (binfmt_misc), the device install (`pip install .`) from the working tree, `edge-emotion check` on PrivateTest
# faces compared face by face with the same check on this x86 host (top-1 agreement >= 99%), and
# `edge-emotion run --duration` publishing to a mosquitto inside the root.
# Emulated timings say nothing about a Pi's speed: none is reported.
# Root only. Prints a JSON summary as its last line; exits 1 on a failed check. Cache: see lib.bash.
# FER2013_PATH: the FER-2013 npz (without it, or when it is no file, the agreement check is skipped and says so);
# EDGE_EMOTION_CI_FACES (default 300): how many PrivateTest faces; EDGE_EMOTION_CI_PYTHON: the x86 Python with
# edge_app installed (default: the clone's .venv).
set -euo pipefail
source "$(dirname "$0")/lib.bash"

PACKAGES=python3,python3-venv,ca-certificates,mosquitto,mosquitto-clients
FACES="${EDGE_EMOTION_CI_FACES:-300}"
HOST_PYTHON="${EDGE_EMOTION_CI_PYTHON:-$REPO/.venv/bin/python}"
MIN_AGREEMENT=0.99
RUN_S=10

need_root
need_command debootstrap debootstrap
need_command qemu-aarch64-static qemu-user-static
need_command update-binfmts binfmt-support
need_command unshare util-linux
mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
    || fail "cannot mount binfmt_misc"
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64 \
    || fail "cannot register qemu-aarch64 with binfmt_misc"
FER="${FER2013_PATH:-}"
if [ -n "$FER" ] && [ ! -f "$FER" ]; then
    log "FER2013_PATH=$FER is not a file: the agreement check will be skipped"  # as pytest skips without it
    FER=""
fi

WORK="$(mktemp -d /var/tmp/edge-emotion-arm64.XXXXXX)"
on_exit "rm -rf '$WORK'"
ROOT="$WORK/root"
install -d "$CACHE/pip-arm64" "$WORK/out"

start=$SECONDS
rootfs arm64 "$PACKAGES" "$ROOT"
prepare_root "$ROOT"
result rootfs_s $((SECONDS - start))
result rootfs_cached "$ROOTFS_CACHED"
[ "$(chroot "$ROOT" uname -m)" = aarch64 ] || fail "the root does not run as aarch64"

# ai-edge-litert's cpuinfo reads /proc/cpuinfo, which under qemu is the x86 host's, and crashes: give it a Pi 4's
# (four Cortex-A72 cores, CPU part 0xd08), and have qemu emulate that CPU (QEMU_CPU below), not its default "max"
# with features (SVE, SME, dot products) that no Pi 4 has.
for cpu in 0 1 2 3; do
    printf 'processor\t: %s\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\n' "$cpu"
    printf 'CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n'
done >"$WORK/cpuinfo"
printf 'Hardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n' >>"$WORK/cpuinfo"

# The x86 reference: the same check, on the same faces, on this host. The faces (the first $FACES of PrivateTest)
# go into a small npz in the work folder, deleted at the end: unpacking all of FER-2013 under emulation takes minutes.
if [ -n "$FER" ]; then
    [ -x "$HOST_PYTHON" ] || fail "$HOST_PYTHON not found (set EDGE_EMOTION_CI_PYTHON to a Python with edge_app)"
    install -d "$ROOT/data"
    "$HOST_PYTHON" - "$FER" "$ROOT/data/faces.npz" "$FACES" <<'PY' || fail "could not read PrivateTest from $FER"
import sys
import numpy as np
from edge_app.dataset import TEST
with np.load(sys.argv[1]) as data:
    rows = np.flatnonzero(data["usage"] == TEST)[: int(sys.argv[3])]
    np.savez(sys.argv[2], **{key: data[key][rows] for key in ("pixels", "emotion", "usage")})
PY
    log "check on $FACES PrivateTest faces, x86"
    "$HOST_PYTHON" -m edge_app check --data "$ROOT/data/faces.npz" --split test --tolerance 100 \
        --predictions "$WORK/x86.json" >"$WORK/x86-check.json" 2>"$WORK/x86-check.log" \
        || fail "check on x86 failed: $(tail -n 3 "$WORK/x86-check.log")"
fi

port="$(free_port)"
cat >"$ROOT/inner.sh" <<EOF
set -euo pipefail
cd /
export HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8
# pip trusts the root's CA bundle, which has the host's certificates (a TLS-inspecting proxy) since prepare_root.
export PIP_CERT=/etc/ssl/certs/ca-certificates.crt
start=\$(date +%s)
python3 -m venv /opt/venv
/opt/venv/bin/python -m pip install --quiet --upgrade pip
/opt/venv/bin/python -m pip install --quiet /src/edge-emotion
echo "install_s \$((\$(date +%s) - start))" >/out/facts
echo "device install done" >&2
echo "venv_mb \$(du -sm /opt/venv | cut -f1)" >>/out/facts
/opt/venv/bin/python -c 'import platform, cv2; print("machine", platform.machine()); print("cv2", cv2.__version__)' \
    >>/out/facts
if [ -n "$FER" ]; then
    echo "check on $FACES faces" >&2
    /opt/venv/bin/edge-emotion check --data /data/faces.npz --split test --tolerance 100 \
        --predictions /out/arm64.json >/out/arm64-check.json 2>/out/arm64-check.log
fi
echo "run --duration $RUN_S" >&2
printf 'listener $port 127.0.0.1\nallow_anonymous true\npersistence false\n' >/out/mosquitto.conf
mosquitto -c /out/mosquitto.conf >/out/mosquitto.log 2>&1 &
for _ in \$(seq 100); do mosquitto_sub -p $port -t probe -W 1 -E >/dev/null 2>&1 && break; sleep 0.2; done
mosquitto_sub -p $port -v -t 'emotion/#' >/out/messages.log 2>&1 &
/opt/venv/bin/edge-emotion --set mqtt.port=$port --set mqtt.host=127.0.0.1 --set device.id=pi \\
    --set aggregate.window_s=2 --set mqtt.discovery=false run --duration $RUN_S >/out/run.log 2>&1
mosquitto_sub -p $port -t emotion/pi/status -C 1 -W 10 >/out/retained 2>&1 || true
sleep 1  # the subscriber has printed what it received; this PID namespace ends with this script
EOF

# One PID and mount namespace for everything inside: its mounts go away with it, and so does any process
# left running there (mosquitto, the subscriber) when the script ends, however it ends.
log "device install, check and run in the arm64 root (emulated)"
start=$SECONDS
unshare --mount --pid --fork --kill-child --propagation private bash -c "
    set -e
    mount -t proc proc '$ROOT/proc'
    mount --bind '$WORK/cpuinfo' '$ROOT/proc/cpuinfo'
    mount --rbind /dev '$ROOT/dev'
    mount --rbind /sys '$ROOT/sys'
    mkdir -p '$ROOT/root/.cache/pip'; mount --bind '$CACHE/pip-arm64' '$ROOT/root/.cache/pip'
    install -d '$ROOT/out'; mount --bind '$WORK/out' '$ROOT/out'
    exec env -i QEMU_CPU=cortex-a72 /usr/sbin/chroot '$ROOT' /bin/bash /inner.sh
" >"$WORK/inner.log" 2> >(tee -a "$WORK/inner.log" >&2) || fail "in the arm64 root: $(tail -n 5 "$WORK/inner.log"; tail -n 3 "$WORK/out/arm64-check.log" \
    "$WORK/out/run.log" 2>/dev/null)"
result emulated_total_s_not_a_speed $((SECONDS - start))
fact() { sed -n "s/^$1 //p" "$WORK/out/facts"; }
[ "$(fact machine)" = aarch64 ] || fail "the venv's Python says it runs on '$(fact machine)'"
result machine '"aarch64"'
result device_install_s "$(fact install_s)"
result venv_mb "$(fact venv_mb)"
result cv2 "\"$(fact cv2)\""

if [ -n "$FER" ]; then
    agreement="$("$HOST_PYTHON" - "$WORK/x86.json" "$WORK/out/arm64.json" "$WORK/x86-check.json" \
        "$WORK/out/arm64-check.json" <<'EOF'
import json, sys
x86, arm = (json.load(open(p)) for p in sys.argv[1:3])
x86_check, arm_check = (json.load(open(p)) for p in sys.argv[3:5])
if x86["labels"] != arm["labels"] or x86["classes"] != arm["classes"]:
    sys.exit("the two runs did not check the same faces")
same = sum(a == b for a, b in zip(x86["predictions"], arm["predictions"]))
print(json.dumps({"faces": len(x86["labels"]), "same_top1": same, "agreement": round(same / len(x86["labels"]), 4),
                  "accuracy_x86": x86_check["accuracy"], "accuracy_arm64": arm_check["accuracy"]}))
EOF
)" || fail "could not compare the x86 and arm64 predictions"
    result agreement "$agreement"
    value="$(echo "$agreement" | sed 's/.*"agreement": \([0-9.]*\).*/\1/')"
    awk -v a="$value" -v m="$MIN_AGREEMENT" 'BEGIN { exit !(a >= m) }' \
        || fail "top-1 agreement with x86 is $value, below $MIN_AGREEMENT"
else
    log "SKIPPED the agreement check: no FER-2013 (FER2013_PATH)"
    result agreement '"skipped: no FER-2013 at FER2013_PATH"'
fi

# run --duration: the service published its status, at least one window and its stats, and went offline.
messages="$WORK/out/messages.log"
for topic in status emotions stats; do
    grep -q "^emotion/pi/$topic " "$messages" \
        || fail "run --duration published no emotion/pi/$topic message: $(tail -n 3 "$WORK/out/run.log")"
done
grep -q '^emotion/pi/status online$' "$messages" || fail "no online status was published"
[ "$(cat "$WORK/out/retained")" = offline ] || fail "the retained status after the run is '$(cat "$WORK/out/retained")'"
result run_messages "$(grep -c '^emotion/' "$messages")"
result offline_retained true

summary true
