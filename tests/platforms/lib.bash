# Shared by tests/platforms/*.sh (sourced, not run; not a .sh so that .ci/run does not run it): cached Debian roots,
# the working tree as a source folder, a cleanup stack run on any exit, and the JSON summary each script ends with.
# Cache (outside the clone, so a fresh clone is fast on a machine that ran the checks before):
#   $EDGE_EMOTION_CI_CACHE (default /var/cache/edge-emotion-ci): rootfs-*.tar and pip-<arch>/ (pip's wheel cache).

CACHE="${EDGE_EMOTION_CI_CACHE:-/var/cache/edge-emotion-ci}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SCRIPT="$(basename "$0" .sh)"
SECONDS=0
CLEANUPS=()

log() { echo "[$SCRIPT ${SECONDS}s] $*" >&2; }

# fail MESSAGE: print the failure summary (the last line) and exit 1; the EXIT trap cleans up.
fail() {
    log "FAILED: $*"
    summary false "$*"
    exit 1
}

# on_exit COMMAND: run COMMAND (a string) when the script exits, latest first.
on_exit() { CLEANUPS=("$1" "${CLEANUPS[@]}"); }
run_cleanups() {
    local rc=$? command
    trap - EXIT INT TERM
    for command in "${CLEANUPS[@]}"; do
        eval "$command" >/dev/null 2>&1 || true
    done
    exit "$rc"
}
trap run_cleanups EXIT
trap 'fail "interrupted by a signal"' INT TERM

# RESULTS holds "key": value pairs (value already JSON) that summary prints.
RESULTS=()
result() { RESULTS+=("\"$1\": $2"); }
summary() {
    local passed="$1" error="${2:-}" body
    body="$(printf '%s, ' "${RESULTS[@]}")"
    body="${body%, }"
    [ -z "$body" ] || body="$body, "
    if [ -n "$error" ]; then
        error="$(printf '%s' "$error" | sed 's/\\/\\\\/g; s/"/\\"/g' | tr '\n\t' '  ')"
        echo "{\"check\": \"$SCRIPT\", \"passed\": $passed, ${body}\"error\": \"$error\", \"seconds\": $SECONDS}"
    else
        echo "{\"check\": \"$SCRIPT\", \"passed\": $passed, ${body}\"seconds\": $SECONDS}"
    fi
}

need_root() { [ "$(id -u)" -eq 0 ] || fail "run as root (debootstrap, chroot and mounts need it)"; }

# need_command COMMAND DEBIAN-PACKAGE: install the package when the command is missing.
need_command() {
    command -v "$1" >/dev/null 2>&1 && return 0
    log "installing $2 (for $1)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null \
        || fail "$1 is missing and apt-get install $2 failed"
}

mirror() {
    local uri
    uri="$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)"
    echo "${uri:-http://deb.debian.org/debian}"
}

# rootfs ARCH PACKAGES DEST: DEST becomes a Debian bookworm minbase root with PACKAGES (comma-separated),
# unpacked from a cached tarball that is built once per (ARCH, PACKAGES); ROOTFS_CACHED says whether it was there.
rootfs() {
    local arch="$1" packages="$2" dest="$3" key tarball build
    key="$(echo "bookworm $arch $packages" | sha256sum | cut -c1-12)"
    tarball="$CACHE/rootfs-bookworm-$arch-$key.tar"
    ROOTFS_CACHED=true
    if [ ! -s "$tarball" ]; then
        ROOTFS_CACHED=false
        log "debootstrap bookworm $arch (once; cached as $tarball)"
        install -d "$CACHE"
        build="$(mktemp -d "$CACHE/build.XXXXXX")"
        on_exit "rm -rf '$build'"
        debootstrap --arch="$arch" --variant=minbase --include="$packages" bookworm "$build/root" "$(mirror)" \
            >"$build/log" 2>&1 || fail "debootstrap $arch failed: $(tail -n 3 "$build/log")"
        rm -rf "$build/root/var/cache/apt/archives/"*.deb
        tar -C "$build/root" -cf "$tarball.part" . && mv "$tarball.part" "$tarball"
        rm -rf "$build"
    fi
    install -d "$dest"
    tar -C "$dest" -xf "$tarball"
}

# prepare_root ROOT: the host's CA certificates (pip behind a TLS-inspecting proxy) and DNS, and the working tree
# (tracked and untracked files git does not ignore) copied to ROOT/src/edge-emotion.
prepare_root() {
    local root="$1" cert
    for cert in /usr/local/share/ca-certificates/*.crt; do
        [ -e "$cert" ] && install -D -m 0644 "$cert" "$root/usr/local/share/ca-certificates/$(basename "$cert")"
    done
    chroot "$root" update-ca-certificates >/dev/null 2>&1 || fail "update-ca-certificates failed in the root"
    cp -L /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
    # debootstrap writes no /etc/hosts: without it "localhost" does not resolve (Raspberry Pi OS has one).
    [ -e "$root/etc/hosts" ] || printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
    install -d "$root/src/edge-emotion"
    git -C "$REPO" ls-files -z --cached --others --exclude-standard \
        | (cd "$REPO" && xargs -0 -r sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' _) \
        | tar -C "$REPO" --null -T - -cf - | tar -C "$root/src/edge-emotion" -xf - \
        || fail "could not copy the working tree into the root"
}

# free_port: a TCP port nothing listens on now (mosquitto in a chroot shares the host's network).
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
