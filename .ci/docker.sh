#!/usr/bin/env bash
# A private, offline Docker engine for CI and for developers.
#
#   eval "$(.ci/docker.sh start)"   start dockerd in a fresh temp dir, print export lines
#   .ci/docker.sh base              build the offline base image tinymlaas-base:bookworm
#   .ci/docker.sh stop [DIR]        stop the engine started by 'start' and remove its dir
#   .ci/docker.sh status            say whether an engine answers at DOCKER_HOST
#
# The engine runs without iptables or a bridge (the sandbox uses network "none", builds use
# "host"), so it needs no network setup and starts in about a second. Its state lives in one
# short temp dir (unix socket paths are limited to ~107 bytes); the dir of the last engine
# started is remembered in $STATE so that 'stop' and 'base' find it without arguments.
set -euo pipefail

CACHE_DIR="${TINYMLAAS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tinymlaas}"
STATE="$CACHE_DIR/dockerd.dir"
BASE_IMAGE="${TINYMLAAS_BASE_IMAGE:-tinymlaas-base:bookworm}"
SUITE="${TINYMLAAS_SUITE:-bookworm}"
MIRROR="${TINYMLAAS_DEBIAN_MIRROR:-}"

log() { echo "docker.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    die "'$*' needs root; run as root or install sudo"; fi
}

ensure_packages() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]} with apt-get"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 --no-install-recommends \
      "${missing[@]}" >&2
  fi
}

engine_dir() {  # the dir of the running engine: $1, else the remembered one
  local dir="${1:-}"
  if [ -z "$dir" ] && [ -f "$STATE" ]; then dir="$(cat "$STATE")"; fi
  echo "$dir"
}

answers() {  # does an engine answer at $1 (a unix:// host)?
  DOCKER_HOST="$1" timeout 5 docker version --format '{{.Server.Version}}' >/dev/null 2>&1
}

cmd_start() {
  ensure_packages
  mkdir -p "$CACHE_DIR"
  local old
  old="$(engine_dir)"
  if [ -n "$old" ] && [ -S "$old/docker.sock" ] && answers "unix://$old/docker.sock"; then
    log "engine already running in $old"
    echo "export DOCKER_HOST=unix://$old/docker.sock"
    echo "export TINYMLAAS_DOCKERD_DIR=$old"
    return 0
  fi
  local dir
  dir="$(mktemp -d /tmp/tmd.XXXXXX)"
  log "starting dockerd in $dir"
  # setsid + nohup: the engine outlives this script and the shell that ran it.
  setsid nohup dockerd \
    --host "unix://$dir/docker.sock" \
    --data-root "$dir/data" --exec-root "$dir/exec" --pidfile "$dir/docker.pid" \
    --storage-driver overlay2 --iptables=false --ip6tables=false --bridge=none \
    >"$dir/dockerd.log" 2>&1 </dev/null &
  local i
  for i in $(seq 1 60); do
    if answers "unix://$dir/docker.sock"; then
      echo "$dir" >"$STATE"
      log "engine ready after ~$((i / 4))s (log: $dir/dockerd.log)"
      echo "export DOCKER_HOST=unix://$dir/docker.sock"
      echo "export TINYMLAAS_DOCKERD_DIR=$dir"
      return 0
    fi
    sleep 0.25
  done
  tail -n 20 "$dir/dockerd.log" >&2 || true
  die "dockerd did not answer within 15 s (log above)"
}

cmd_stop() {
  local dir
  dir="$(engine_dir "${1:-${TINYMLAAS_DOCKERD_DIR:-}}")"
  [ -n "$dir" ] && [ -d "$dir" ] || { log "no engine to stop"; rm -f "$STATE"; return 0; }
  if [ -f "$dir/docker.pid" ]; then
    local pid
    pid="$(cat "$dir/docker.pid")"
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      local i
      for i in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      kill -0 "$pid" 2>/dev/null && die "dockerd (pid $pid) did not stop within 15 s"
    fi
  fi
  # dockerd leaves its default netns and overlay mounts behind; deleting through a mount fails.
  local m
  for m in $(awk -v d="$dir" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" || true
  done
  rm -rf "$dir"
  [ "$(cat "$STATE" 2>/dev/null)" = "$dir" ] && rm -f "$STATE"
  log "stopped the engine in $dir"
}

cmd_base() {
  ensure_packages
  if [ -z "${DOCKER_HOST:-}" ]; then
    local dir
    dir="$(engine_dir)"
    [ -n "$dir" ] || die "no engine: run 'eval \"\$(.ci/docker.sh start)\"' first or set DOCKER_HOST"
    export DOCKER_HOST="unix://$dir/docker.sock"
  fi
  answers "$DOCKER_HOST" || die "no Docker engine answers at $DOCKER_HOST"
  if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    log "$BASE_IMAGE already exists on $DOCKER_HOST; skipping"
    return 0
  fi
  mkdir -p "$CACHE_DIR"
  local tarball="$CACHE_DIR/rootfs-$SUITE-$(dpkg --print-architecture).tar"
  if [ ! -s "$tarball" ]; then
    local work
    work="$(mktemp -d /tmp/tmb.XXXXXX)"
    trap 'rm -rf "$work"' RETURN
    log "debootstrap $SUITE (about a minute)"
    as_root debootstrap --variant=minbase \
      --include=python3,python3-venv,python3-pip,ca-certificates \
      "$SUITE" "$work/rootfs" $MIRROR >&2
    # apt lists and caches are ~50 MB nobody in the image needs.
    rm -rf "$work/rootfs/var/lib/apt/lists/"* "$work/rootfs/var/cache/apt/"*.bin \
      "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/log/"*.log
    tar -C "$work/rootfs" --numeric-owner -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
  else
    log "reusing the cached rootfs $tarball"
  fi
  docker import -c 'CMD ["python3"]' -c 'ENV LANG=C.UTF-8' "$tarball" "$BASE_IMAGE" >&2
  log "built $BASE_IMAGE on $DOCKER_HOST"
}

cmd_status() {
  local host="${DOCKER_HOST:-}"
  if [ -z "$host" ]; then local dir; dir="$(engine_dir)"; [ -n "$dir" ] && host="unix://$dir/docker.sock"; fi
  if [ -n "$host" ] && answers "$host"; then echo "engine answers at $host"; else
    echo "no engine answers${host:+ at $host}"; return 1; fi
}

case "${1:-}" in
  start) cmd_start ;;
  stop) shift; cmd_stop "${1:-}" ;;
  base) cmd_base ;;
  status) cmd_status ;;
  *) echo "usage: $0 start|stop [DIR]|base|status" >&2; exit 2 ;;
esac
