#!/usr/bin/env bash
# The service under a real systemd: a Debian bookworm root (minbase, no libGL) booted with systemd-nspawn (systemd
# as PID 1, private network, mosquitto inside), systemd/install.sh run there from the working tree with two
# instances (two cameras), then what a device relies on: READY and STATUS, status/emotions/stats received by a
# subscriber inside, `offline` retained after a stop, a frozen process restarted by the watchdog, a broken config
# failing with exit 2 and no restart loop, the state directory the only writable path, systemd-analyze security
# <= 2.0, install.sh idempotent, and --uninstall leaving only the configuration.
# Root only. Prints a JSON summary as its last line; exits 1 on the first failed check. Cache: see lib.bash.
set -euo pipefail
source "$(dirname "$0")/lib.bash"

PACKAGES=systemd,systemd-sysv,dbus,python3,python3-venv,ca-certificates,mosquitto,mosquitto-clients
MACHINE=edge-ci  # the container's host name: instances publish as edge-ci-cam0 and edge-ci-cam1
INSTANCES=(cam0 cam1)
WAIT_S="${EDGE_EMOTION_CI_WAIT_S:-300}"  # generous upper bound for any one event to happen

need_root
need_command debootstrap debootstrap
need_command systemd-nspawn systemd-container
need_command nsenter util-linux
WORK="$(mktemp -d /var/tmp/edge-emotion-systemd.XXXXXX)"
on_exit "rm -rf '$WORK'"
ROOT="$WORK/root"
install -d "$CACHE/pip-amd64"

SECONDS_ROOT=$SECONDS
rootfs amd64 "$PACKAGES" "$ROOT"
prepare_root "$ROOT"
result rootfs_s $((SECONDS - SECONDS_ROOT))
result rootfs_cached "$ROOTFS_CACHED"
if chroot "$ROOT" ldconfig -p | grep -q 'libGL\.so\.1'; then fail "the root has libGL; the check is meant for a headless system"; fi
result libgl false

# Test configuration for every instance: the demo face, 2-second windows, the broker inside the container.
for name in "${INSTANCES[@]}"; do
    install -D -m 0644 /dev/stdin "$ROOT/etc/edge-emotion/$name.yaml" <<EOF
source:
  uri: demo
aggregate:
  window_s: 2
mqtt:
  host: localhost
  discovery: false
EOF
done

# Boot. The container gets cgroups of its own (this host runs no systemd that would give it one): systemd-nspawn
# puts itself and the container in supervisor/ and payload/ beside its own cgroup, which two containers would share.
echo "$MACHINE" >"$ROOT/etc/hostname"
CGROUPS=()
for hierarchy in /sys/fs/cgroup/unified /sys/fs/cgroup/systemd /sys/fs/cgroup; do
    if [ -e "$hierarchy/cgroup.procs" ] && mkdir "$hierarchy/edge-emotion-ci-$$" 2>/dev/null; then
        CGROUPS+=("$hierarchy/edge-emotion-ci-$$")
        [ "$hierarchy" != /sys/fs/cgroup ] || break  # pure cgroup v2
    fi
done
[ "${#CGROUPS[@]}" -gt 0 ] || fail "could not create a cgroup for the container"
(
    for cgroup in "${CGROUPS[@]}"; do echo "$BASHPID" >"$cgroup/cgroup.procs"; done
    exec systemd-nspawn --quiet --register=no --keep-unit --private-network -b -D "$ROOT" -M "$MACHINE" \
        --bind="$CACHE/pip-amd64:/root/.cache/pip"
) </dev/null >"$WORK/console.log" 2>&1 &
NSPAWN=$!

stop_container() {
    local cgroup procs
    if [ -n "${LEADER:-}" ]; then kill -s SIGRTMIN+4 "$LEADER"; else kill -TERM "$NSPAWN"; fi  # power off
    for _ in $(seq 60); do kill -0 "$NSPAWN" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$NSPAWN" 2>/dev/null
    for cgroup in "${CGROUPS[@]}"; do
        for procs in $(find "$cgroup" -name cgroup.procs); do xargs -r kill -9 <"$procs"; done
    done
    wait "$NSPAWN"
    for cgroup in "${CGROUPS[@]}"; do
        for _ in $(seq 20); do find "$cgroup" -depth -type d -exec rmdir {} + 2>/dev/null && break; sleep 0.5; done
    done
    true
}
on_exit stop_container

# The container's systemd: the child of systemd-nspawn that is PID 1 in its own PID namespace.
LEADER=""
for _ in $(seq $((WAIT_S * 2))); do
    for pid in $(pgrep -P "$NSPAWN"); do
        if awk '/^NSpid:/ { exit !(NF == 3 && $3 == 1) }' "/proc/$pid/status" 2>/dev/null; then LEADER=$pid; fi
    done
    [ -n "$LEADER" ] && break
    kill -0 "$NSPAWN" 2>/dev/null || fail "systemd-nspawn exited: $(tail -n 5 "$WORK/console.log")"
    sleep 0.5
done
[ -n "$LEADER" ] || fail "the container's systemd did not start"

# in_ct COMMAND...: run inside the container (its network: only loopback); in_ct_net: with the host's network (pip).
in_ct() { nsenter -t "$LEADER" -m -u -i -n -p -C -r -w env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root "$@"; }
in_ct_net() { nsenter -t "$LEADER" -m -u -i -p -C -r -w env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root "$@"; }
show() { in_ct systemctl show -P "$2" "$1"; }  # show UNIT PROPERTY

# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND until it succeeds.
wait_for() {
    local limit="$1" what="$2" start=$SECONDS
    shift 2
    until "$@" >/dev/null 2>&1; do
        [ $((SECONDS - start)) -lt "$limit" ] || fail "$what (waited ${limit}s)"
        sleep 1
    done
}

log "booting the container"
booted() { state="$(in_ct systemctl is-system-running)"; [ "$state" = running ] || [ "$state" = degraded ]; }
wait_for "$WAIT_S" "the container did not finish booting" booted
result boot_state "\"$(in_ct systemctl is-system-running || true)\""
wait_for 60 "mosquitto did not start in the container" in_ct systemctl is-active mosquitto.service

# A subscriber inside, as a transient unit (an nsenter'd background process would keep the container from
# powering off), from before the install, so it sees every message.
in_ct systemd-run --quiet --unit=ci-subscriber -p StandardOutput=file:/root/messages.log \
    mosquitto_sub -h localhost -v -t 'emotion/#' >/dev/null || fail "could not start the subscriber"

log "install.sh --instance cam0 --instance cam1 (first run installs the venv)"
start=$SECONDS
in_ct_net bash /src/edge-emotion/systemd/install.sh --instance cam0 --instance cam1 >"$WORK/install.log" 2>&1 \
    || fail "install.sh failed: $(tail -n 5 "$WORK/install.log"); $(in_ct journalctl -u edge-emotion@cam0 -o cat -n 5)"
result install_s $((SECONDS - start))

for name in "${INSTANCES[@]}"; do
    unit="edge-emotion@$name.service"
    [ "$(show "$unit" ActiveState)/$(show "$unit" SubState)" = active/running ] \
        || fail "$unit is not active after install: $(in_ct journalctl -u "$unit" -o cat -n 5)"
    has_status() { in_ct systemctl status --no-pager "$1" | grep -q '^ *Status: "'; }
    wait_for "$WAIT_S" "systemctl status $unit shows no Status line" has_status "$unit"
done
result ready true
log "both instances are active with READY; waiting for their MQTT messages"

# Messages from both instances, each under its own device id.
for name in "${INSTANCES[@]}"; do
    for topic in status emotions stats; do
        wait_for "$WAIT_S" "no emotion/$MACHINE-$name/$topic message reached the subscriber" \
            grep -q "^emotion/$MACHINE-$name/$topic " "$ROOT/root/messages.log"
    done
done
grep -q "^emotion/$MACHINE-cam0/status online$" "$ROOT/root/messages.log" || fail "no retained online status"
result messages "$(grep -c '^emotion/' "$ROOT/root/messages.log")"
result device_ids "[\"$MACHINE-cam0\", \"$MACHINE-cam1\"]"
status_after_a_window() { in_ct systemctl status --no-pager edge-emotion@cam0.service | grep -q '^ *Status: "window'; }
wait_for "$WAIT_S" "STATUS never reported a window" status_after_a_window
result status_line "\"$(in_ct systemctl status --no-pager edge-emotion@cam0.service \
    | sed -n 's/^ *Status: "\(.*\)"$/\1/p' | sed 's/"/\\"/g')\""

# The state directory: $STATE_DIRECTORY, owned by the dynamic user, and the only writable path besides private /tmp.
unit=edge-emotion@cam0.service
pid="$(show $unit MainPID)"
state_dir="$(in_ct cat "/proc/$pid/environ" | tr '\0' '\n' | sed -n 's/^STATE_DIRECTORY=//p')"
[ "$state_dir" = /var/lib/edge-emotion/cam0 ] || fail "STATE_DIRECTORY is '$state_dir', expected /var/lib/edge-emotion/cam0"
[ -d "$ROOT/var/lib/private/edge-emotion/cam0" ] || fail "the state directory is not in /var/lib/private"
uid="$(in_ct awk '/^Uid:/ { print $2 }' "/proc/$pid/status")"
gid="$(in_ct awk '/^Gid:/ { print $2 }' "/proc/$pid/status")"
writable=()
for path in "$state_dir" /etc/edge-emotion /opt/edge-emotion/venv /var/lib /var/lib/edge-emotion/cam1 /root /home /srv \
    /tmp /var/tmp /dev/shm; do
    if in_ct nsenter -t "$pid" -m setpriv --reuid="$uid" --regid="$gid" --clear-groups \
        sh -c "touch '$path/.ci-write' && rm '$path/.ci-write'" 2>/dev/null; then
        writable+=("$path")
    fi
done
[ "${writable[*]}" = "$state_dir /tmp /var/tmp /dev/shm" ] \
    || fail "the service may write to: ${writable[*]} (expected only $state_dir and its private /tmp, /var/tmp, /dev/shm)"
result writable_paths "[$(printf '"%s",' "${writable[@]}" | sed 's/,$//')]"

exposure="$(in_ct systemd-analyze security --no-pager $unit | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')"
[ -n "$exposure" ] || fail "systemd-analyze security printed no exposure level"
awk -v e="$exposure" 'BEGIN { exit !(e <= 2.0) }' || fail "systemd-analyze security: exposure $exposure > 2.0"
result exposure "$exposure"

log "state directory $state_dir, exposure $exposure; stopping cam1"
# A stop publishes the retained offline status; the other camera keeps running.
in_ct systemctl stop edge-emotion@cam1.service
retained="$(in_ct mosquitto_sub -h localhost -t "emotion/$MACHINE-cam1/status" -C 1 -W 10 || true)"
[ "$retained" = offline ] || fail "after systemctl stop the retained status is '$retained', not offline"
[ "$(show $unit ActiveState)" = active ] || fail "stopping cam1 stopped cam0 too"
result offline_retained true

# A frozen process stops sending WATCHDOG=1: systemd kills and restarts it.
restarts="$(show $unit NRestarts)"
log "SIGSTOP to $unit (pid $pid): waiting for the watchdog"
in_ct sh -c "kill -STOP $pid"
start=$SECONDS
restarted() { [ "$(show $unit NRestarts)" -gt "$restarts" ] && [ "$(show $unit ActiveState)" = active ] \
    && [ "$(show $unit MainPID)" != "$pid" ]; }
wait_for "$WAIT_S" "the SIGSTOPped $unit was not restarted" restarted
in_ct journalctl -u $unit -o cat | grep -q 'Watchdog timeout' || fail "$unit restarted, but not by the watchdog"
result watchdog_restart_s $((SECONDS - start))

log "a broken config"
# A broken config: exit 2, one line naming the key, and no restart scheduled (failed, not auto-restart).
printf 'mqtt:\n  port: abc\n' >"$ROOT/etc/edge-emotion/broken.yaml"
broken=edge-emotion@broken.service
in_ct systemctl start $broken >/dev/null 2>&1 && fail "$broken started with a broken config"
[ "$(show $broken ExecMainStatus)" = 2 ] || fail "$broken exited with $(show $broken ExecMainStatus), not 2"
[ "$(show $broken ActiveState)/$(show $broken SubState)/$(show $broken NRestarts)" = failed/failed/0 ] \
    || fail "$broken: $(show $broken ActiveState)/$(show $broken SubState), $(show $broken NRestarts) restarts"
in_ct journalctl -u $broken -o cat | grep -q 'mqtt.port' || fail "the journal of $broken does not name mqtt.port"
result broken_config "\"$(in_ct journalctl -u $broken -o cat | grep -m 1 'mqtt.port' | sed 's/"/\\"/g')\""
in_ct systemctl reset-failed $broken
rm "$ROOT/etc/edge-emotion/broken.yaml"

# install.sh again: the same files, units and enabled instances, everything running.
snapshot() {
    in_ct sh -c 'find /etc/edge-emotion /etc/systemd/system -name "*edge-emotion*" -o -path "/etc/edge-emotion/*" \
        | sort | xargs -r md5sum 2>/dev/null; find /etc/systemd/system -name "edge-emotion*" | sort'
}
before="$(snapshot)"
log "install.sh again"
start=$SECONDS
in_ct_net bash /src/edge-emotion/systemd/install.sh >"$WORK/install2.log" 2>&1 \
    || fail "install.sh, second run, failed: $(tail -n 5 "$WORK/install2.log")"
result reinstall_s $((SECONDS - start))
[ "$(snapshot)" = "$before" ] || fail "install.sh run twice changed: $(diff <(echo "$before") <(snapshot) | head -n 5)"
for name in "${INSTANCES[@]}"; do
    [ "$(show "edge-emotion@$name.service" ActiveState)" = active ] || fail "edge-emotion@$name is not active after a re-run"
done
[ ! -e "$ROOT/etc/edge-emotion/main.yaml" ] || fail "a re-run added an instance main"
result idempotent true

log "install.sh --uninstall"
# --uninstall: nothing left but /etc/edge-emotion.
in_ct bash /src/edge-emotion/systemd/install.sh --uninstall >"$WORK/uninstall.log" 2>&1 \
    || fail "install.sh --uninstall failed: $(tail -n 5 "$WORK/uninstall.log")"
left="$(cd "$ROOT" && find etc/systemd opt var/lib -name '*edge-emotion*' | tr '\n' ' ')"
[ -z "$left" ] || fail "--uninstall left $left"
units="$(in_ct systemctl list-units --all --no-legend --plain 'edge-emotion*' | tr '\n' ' ')"
[ -z "$units" ] || fail "--uninstall left units: $units"
[ "$(cd "$ROOT/etc/edge-emotion" && ls | tr '\n' ' ')" = "cam0.yaml cam1.yaml secrets.env " ] \
    || fail "--uninstall did not keep exactly the configuration: $(ls "$ROOT/etc/edge-emotion")"
result uninstall_keeps_only_config true

summary true
