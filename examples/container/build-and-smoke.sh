#!/usr/bin/env bash
# Builds the Fulcrum image from the repository's Dockerfile without Docker or a
# registry, then runs it and checks what a user relies on.
#
#   sudo examples/container/build-and-smoke.sh
#
# Needs root, debootstrap, buildah (Debian's), python3, curl, and the Rust
# toolchain the repository builds with. Steps:
#   1. base image: `debootstrap --variant=minbase` + the trimming debian:*-slim
#      does, committed with `buildah from scratch` / `buildah commit`;
#   2. builder image: that base + gcc, libc6-dev, ca-certificates from Debian and
#      the host's Rust toolchain (Debian's rustc is older than rust-version);
#   3. `buildah bud --isolation chroot` of the Dockerfile, unchanged, with those
#      two images as its BUILD_IMAGE and RUNTIME_IMAGE;
#   4. the image's ENTRYPOINT + CMD, as the image's USER, with its baked-in
#      config and a python3 http.server backend on 127.0.0.1:8081 (the config's
#      upstream), through `buildah run --isolation chroot`.
# Steps 1 and 2 are cached as images (delete them with `buildah rmi` to start
# over); cargo's registry and target directory are cached by the Dockerfile's
# cache mounts. Re-running is safe: it removes what an earlier run left.
#
# chroot isolation shares the host's network, so the container's ports
# (8080, 9901) and the backend's (8081) must be free on this machine.
#
# Environment:
#   IMAGE              tag of the built image (localhost/fulcrum:smoke)
#   DEBIAN_MIRROR      debootstrap mirror (http://deb.debian.org/debian)
#   STORAGE_DRIVER     buildah storage driver, e.g. vfs where overlay fails
#   SKIP_BUILD=1       smoke-test an existing $IMAGE only
set -Eeuo pipefail

cd "$(dirname "$0")/../.."
REPO=$PWD

RELEASE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
IMAGE=${IMAGE:-localhost/fulcrum:smoke}
RUST_VERSION=$(rustc --version | awk '{ split($2, v, "."); print v[1] "." v[2] }')
BASE_IMAGE=localhost/fulcrum-build/debian:$RELEASE-slim
BUILDER_IMAGE=localhost/fulcrum-build/rust:$RUST_VERSION-$RELEASE
# Names of the working containers this script creates (and removes).
BASE_CTR=fulcrum-smoke-base
BUILDER_CTR=fulcrum-smoke-builder
RUN_CTR=fulcrum-smoke-run

# buildah reads no environment variable for the storage driver.
BUILDAH=(buildah ${STORAGE_DRIVER:+--storage-driver "$STORAGE_DRIVER"})
buildah() { command "${BUILDAH[@]}" "$@"; }

descendants() {
  local p
  for p in $(pgrep -P "$1" || true); do
    echo "$p"
    descendants "$p"
  done
}

say() { printf '==> [%3ds] %s\n' "$SECONDS" "$*"; }

# --- checks -----------------------------------------------------------------
PASSED=0
FAILED=0
pass() { PASSED=$((PASSED + 1)); printf 'PASS: %s\n' "$1"; }
fail() { FAILED=$((FAILED + 1)); printf 'FAIL: %s%s\n' "$1" "${2:+ ($2)}"; }

# --- cleanup ----------------------------------------------------------------
TMP=$(mktemp -d)
BACKEND_PID=
RUN_PID=
FULCRUM_PID=
cleanup() {
  local rc=$?
  set +e
  trap - ERR
  # Only processes this script started, by PID.
  if [[ -n $RUN_PID ]] && kill -0 "$RUN_PID" 2>/dev/null; then
    # buildah run and what it started (its chroot helper, fulcrum), at once:
    # killed alone, buildah would leave fulcrum running.
    # shellcheck disable=SC2046
    kill -KILL $(descendants "$RUN_PID") "$RUN_PID" 2>/dev/null
    wait "$RUN_PID" 2>/dev/null
  fi
  if [[ -n $BACKEND_PID ]]; then
    kill "$BACKEND_PID" 2>/dev/null
    wait "$BACKEND_PID" 2>/dev/null
  fi
  remove_containers
  rm -rf "$TMP"
  exit "$rc"
}
remove_containers() {
  local c
  for c in "$BASE_CTR" "$BUILDER_CTR" "$RUN_CTR"; do
    if buildah inspect --type container "$c" >/dev/null 2>&1; then
      buildah umount "$c" >/dev/null 2>&1
      buildah rm "$c" >/dev/null || echo "warning: could not remove container $c" >&2
    fi
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# A build or setup step that breaks says so before the script exits.
trap 'echo "FAIL: line $LINENO: $BASH_COMMAND (exit $?)" >&2' ERR

[[ $(id -u) == 0 ]] || { echo "FAIL: needs root (debootstrap, buildah chroot isolation)" >&2; exit 1; }
for tool in buildah debootstrap python3 curl ss rustc; do
  type -P "$tool" >/dev/null || { echo "FAIL: $tool not found" >&2; exit 1; }
done
remove_containers # left by an interrupted run

# --- 1. base image ------------------------------------------------------------
build_base() {
  local root=$TMP/rootfs
  say "debootstrap --variant=minbase $RELEASE ($MIRROR)"
  debootstrap --variant=minbase "$RELEASE" "$root" "$MIRROR" >"$TMP/debootstrap.log" 2>&1 ||
    { tail -20 "$TMP/debootstrap.log"; return 1; }
  # What debian:*-slim does: no docs, man pages or locales from later
  # installs (copyright files stay), and no package caches or lists.
  cat >"$root/etc/dpkg/dpkg.cfg.d/slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
EOF
  cat >"$root/etc/apt/apt.conf.d/slim" <<'EOF'
APT::Install-Recommends "false";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
  find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
  rm -rf "$root"/usr/share/{man,info,lintian}/* "$root"/var/cache/apt/* \
    "$root"/var/lib/apt/lists/* "$root"/var/log/* "$root"/tmp/* "$root"/etc/resolv.conf \
    "$root"/etc/hostname
  buildah from --name "$BASE_CTR" scratch >/dev/null
  local mnt
  mnt=$(buildah mount "$BASE_CTR")
  [[ -d $mnt && $mnt != / ]]
  cp -a "$root/." "$mnt/"
  buildah umount "$BASE_CTR" >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd bash "$BASE_CTR"
  buildah commit -q --rm "$BASE_CTR" "$BASE_IMAGE" >/dev/null
  rm -rf "$root"
}

# --- 2. builder image ---------------------------------------------------------
build_builder() {
  local sysroot mnt
  sysroot=$(rustc --print sysroot)
  say "builder: $BASE_IMAGE + gcc + Rust $RUST_VERSION from $sysroot"
  buildah from --pull=never --name "$BUILDER_CTR" "$BASE_IMAGE" >/dev/null
  mnt=$(buildah mount "$BUILDER_CTR")
  [[ -d $mnt && $mnt != / ]]
  # The toolchain as the rust image lays it out (CARGO_HOME=/usr/local/cargo,
  # cargo and rustc on PATH), without its docs (share/).
  mkdir -p "$mnt/usr/local/cargo"
  cp -a "$sysroot/bin" "$sysroot/lib" "$mnt/usr/local/cargo/"
  [[ -d $sysroot/libexec ]] && cp -a "$sysroot/libexec" "$mnt/usr/local/cargo/"
  # CA certificates this host adds (a TLS-intercepting proxy's, say): cargo
  # in the build stage reaches crates.io the way the host does. The
  # ca-certificates package installed below adds them to the bundle.
  mkdir -p "$mnt/usr/local/share/ca-certificates"
  if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$mnt/usr/local/share/ca-certificates/"
  fi
  buildah umount "$BUILDER_CTR" >/dev/null
  buildah run --isolation chroot "$BUILDER_CTR" -- sh -c \
    'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
       gcc libc6-dev ca-certificates >/dev/null \
     && rm -rf /var/lib/apt/lists/*'
  buildah config --env CARGO_HOME=/usr/local/cargo \
    --env PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    "$BUILDER_CTR"
  buildah commit -q --rm "$BUILDER_CTR" "$BUILDER_IMAGE" >/dev/null
}

if [[ ${SKIP_BUILD:-} != 1 ]]; then
  if buildah inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then
    say "base image $BASE_IMAGE: cached"
  else
    build_base
  fi
  if buildah inspect --type image "$BUILDER_IMAGE" >/dev/null 2>&1; then
    say "builder image $BUILDER_IMAGE: cached"
  else
    build_builder
  fi

  # --- 3. the Dockerfile --------------------------------------------------------
  say "buildah bud --isolation chroot -t $IMAGE"
  # A rebuild would leave the previous image dangling.
  buildah rmi "$IMAGE" >/dev/null 2>&1 || true
  # docker format: the OCI image config has no HEALTHCHECK.
  buildah bud --isolation chroot --format docker --pull=never \
    --build-arg "BUILD_IMAGE=$BUILDER_IMAGE" --build-arg "RUNTIME_IMAGE=$BASE_IMAGE" \
    -f Dockerfile -t "$IMAGE" "$REPO"
fi

# --- 4. smoke test --------------------------------------------------------------
say "smoke test of $IMAGE"
inspect() { buildah inspect --type image --format "$1" "$IMAGE"; }
SIZE=$(buildah images --format '{{.Size}}' "$IMAGE" | head -n1)
say "image size: $SIZE"

# The image's own metadata drives the checks, not copies of the Dockerfile.
USER_SPEC=$(inspect '{{.Docker.Config.User}}')
mapfile -t ENTRYPOINT < <(inspect '{{range .Docker.Config.Entrypoint}}{{println .}}{{end}}')
mapfile -t CMD < <(inspect '{{range .Docker.Config.Cmd}}{{println .}}{{end}}')
mapfile -t HEALTHCHECK < <(inspect '{{if .Docker.Config.Healthcheck}}{{range .Docker.Config.Healthcheck.Test}}{{println .}}{{end}}{{end}}')
CONFIG_PATH=
for i in "${!CMD[@]}"; do
  [[ ${CMD[$i]} == --config ]] && CONFIG_PATH=${CMD[$((i + 1))]}
done
CONFIG=$REPO/examples/fulcrum.toml
read -r ADMIN_PORT LISTEN_PORT BACKEND <<<"$(python3 - "$CONFIG" <<'EOF'
import sys, tomllib
c = tomllib.load(open(sys.argv[1], "rb"))
up = next(iter(c["upstream"].values()))
print(c["admin"]["listen"].rsplit(":", 1)[1],
      c["listener"][0]["listen"].rsplit(":", 1)[1],
      up["servers"][0]["address"])
EOF
)"
BACKEND_HOST=${BACKEND%:*}
BACKEND_PORT=${BACKEND##*:}

uid=${USER_SPEC%%:*}
if [[ -n $USER_SPEC && $uid != 0 && $uid != root ]]; then
  pass "image USER is not root ($USER_SPEC)"
else
  fail "image USER is not root" "USER='$USER_SPEC'"
fi
[[ ${#ENTRYPOINT[@]} -gt 0 && -n $CONFIG_PATH ]] ||
  { fail "image has ENTRYPOINT and CMD --config" "${ENTRYPOINT[*]} ${CMD[*]}"; exit 1; }
[[ ${HEALTHCHECK[0]:-} == CMD ]] ||
  { fail "image has a HEALTHCHECK (exec form)" "${HEALTHCHECK[*]:-none}"; exit 1; }
[[ $BACKEND_HOST == 127.0.0.1 ]] ||
  { fail "shipped config's upstream is on loopback" "$BACKEND"; exit 1; }

buildah from --pull=never --name "$RUN_CTR" "$IMAGE" >/dev/null
# As the image's user, with the image's environment.
as_user() { buildah run --isolation chroot --user "$USER_SPEC" "$RUN_CTR" -- "$@"; }

out=$(as_user id -u 2>&1) || true
if [[ $out =~ ^[0-9]+$ && $out != 0 ]]; then
  pass "processes run as uid $out"
else
  fail "processes run as a non-root uid" "$out"
fi
if out=$(as_user sh -c "test -r '$CONFIG_PATH' && cat '$CONFIG_PATH'" 2>&1) &&
  [[ $out == "$(cat "$CONFIG")" ]]; then
  pass "$CONFIG_PATH is readable by $USER_SPEC and is examples/fulcrum.toml"
else
  fail "$CONFIG_PATH is readable by $USER_SPEC" "$out"
fi

crate_version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/Cargo.toml" | head -n1)
out=$(as_user "${ENTRYPOINT[@]}" --version 2>&1) || true
if [[ $out == "fulcrum $crate_version" ]]; then
  pass "fulcrum --version: $out"
else
  fail "fulcrum --version prints 'fulcrum $crate_version'" "$out"
fi

# The ports are the host's (chroot isolation has no network namespace).
for port in "$ADMIN_PORT" "$LISTEN_PORT" "$BACKEND_PORT"; do
  if [[ -n $(ss -Hltn "sport = :$port") ]]; then
    fail "port $port is free on this machine" "$(ss -Hltnp "sport = :$port")"
    exit 1
  fi
done

# Wait (bounded) until a command succeeds.
until_ok() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}
status_of() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" || true; }
answers() { [[ $(status_of "$2") == "$1" ]]; }
not_running() { ! kill -0 "$1" 2>/dev/null; }

mkdir -p "$TMP/www"
MARKER="fulcrum-smoke-$$-$RANDOM"
echo "$MARKER" >"$TMP/www/index.html"
python3 -m http.server "$BACKEND_PORT" --bind "$BACKEND_HOST" --directory "$TMP/www" \
  >"$TMP/backend.log" 2>&1 &
BACKEND_PID=$!
until_ok 10 answers 200 "http://$BACKEND/" ||
  { fail "test backend starts on $BACKEND" "$(cat "$TMP/backend.log")"; exit 1; }

say "start: ${ENTRYPOINT[*]} ${CMD[*]} (as $USER_SPEC)"
# exec: $! is buildah's own pid, not a subshell's.
(exec "${BUILDAH[@]}" run --isolation chroot --user "$USER_SPEC" "$RUN_CTR" -- \
  "${ENTRYPOINT[@]}" "${CMD[@]}" >"$TMP/fulcrum.log" 2>&1) &
RUN_PID=$!
ADMIN=http://127.0.0.1:$ADMIN_PORT

if until_ok 20 answers 200 "$ADMIN/health"; then
  pass "GET /health on the admin port: 200"
else
  fail "GET /health on the admin port" "$(status_of "$ADMIN/health"); log: $(tail -5 "$TMP/fulcrum.log")"
fi

# The fulcrum process under buildah's chroot helper.
for p in $(descendants "$RUN_PID"); do
  [[ $(cat "/proc/$p/comm" 2>/dev/null) == fulcrum ]] && FULCRUM_PID=$p
done
if [[ -n $FULCRUM_PID ]]; then
  proc_uid=$(awk '/^Uid:/ { print $2 }' "/proc/$FULCRUM_PID/status")
  if [[ $proc_uid == "$uid" ]]; then
    pass "the fulcrum process (pid $FULCRUM_PID) runs as uid $proc_uid"
  else
    fail "the fulcrum process runs as uid $uid" "uid $proc_uid"
  fi
else
  fail "found the fulcrum process under buildah run (pid $RUN_PID)"
fi

# /ready is 200 once the health check has seen the backend up.
if until_ok 20 answers 200 "$ADMIN/ready"; then
  pass "GET /ready on the admin port: 200"
else
  fail "GET /ready on the admin port" "$(curl -s --max-time 2 "$ADMIN/ready")"
fi

body=$(curl -s --max-time 5 "http://127.0.0.1:$LISTEN_PORT/" || true)
if [[ $body == "$MARKER" ]]; then
  pass "GET / on :$LISTEN_PORT is proxied to the backend at $BACKEND"
else
  fail "GET / on :$LISTEN_PORT is proxied to the backend" "body: ${body:0:200}"
fi

if as_user "${HEALTHCHECK[@]:1}" 2>"$TMP/hc.err"; then
  pass "HEALTHCHECK exits 0 while fulcrum serves"
else
  fail "HEALTHCHECK exits 0 while fulcrum serves" "exit $?: $(cat "$TMP/hc.err")"
fi

if [[ -n $FULCRUM_PID ]]; then
  kill -TERM "$FULCRUM_PID"
  # No requests are in flight, so the drain does not wait for shutdown_timeout.
  if until_ok 15 not_running "$RUN_PID"; then
    rc=0
    wait "$RUN_PID" || rc=$?
    RUN_PID=
    FULCRUM_PID=
    if [[ $rc == 0 ]]; then
      pass "SIGTERM: fulcrum exits 0"
    else
      fail "SIGTERM: fulcrum exits 0" "exit $rc; log: $(tail -5 "$TMP/fulcrum.log")"
    fi
  else
    fail "SIGTERM: fulcrum exits within 15 s"
  fi
else
  fail "SIGTERM: fulcrum exits 0" "no fulcrum process to signal"
fi

# The same check must fail with nothing listening: it can tell.
if [[ -z $RUN_PID ]]; then
  if as_user "${HEALTHCHECK[@]:1}" 2>/dev/null; then
    fail "HEALTHCHECK fails once fulcrum has stopped" "exit 0"
  else
    pass "HEALTHCHECK fails once fulcrum has stopped"
  fi
fi

echo "$PASSED passed, $FAILED failed"
say "image $IMAGE: $SIZE"
[[ $FAILED == 0 ]]
