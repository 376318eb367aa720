# shellcheck shell=bash
# Small helpers shared by tools/cluster and tools/pg (sourced, not executed).

# log/die print with the calling tool's name ($TOOL).
log()  { printf '%s: %s\n' "${TOOL:-tool}" "$*" >&2; }
die()  { printf '%s: ERROR: %s\n' "${TOOL:-tool}" "$*" >&2; exit 1; }

# show_tail LOGFILE [N] — print the last N lines of a log, framed.
show_tail() {
  local f="$1" n="${2:-40}"
  if [ -s "$f" ]; then
    printf -- '----- last %s lines of %s -----\n' "$n" "$f" >&2
    tail -n "$n" "$f" >&2
    printf -- '----- end of %s -----\n' "$f" >&2
  else
    printf '(log %s is empty or missing)\n' "$f" >&2
  fi
}

# free_ports N — print N distinct TCP ports on 127.0.0.1 that are free right now.
free_ports() {
  local n="$1"
  if command -v python3 >/dev/null 2>&1; then
    python3 - "$n" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
  else
    local out=() p used
    used="$(ss -Htan 2>/dev/null | awk '{print $4}' | sed 's/.*://' | sort -u)"
    while [ "${#out[@]}" -lt "$n" ]; do
      p=$(( 20000 + RANDOM % 30000 ))
      grep -qx "$p" <<<"$used" && continue
      [[ " ${out[*]} " == *" $p "* ]] && continue
      out+=("$p")
    done
    echo "${out[*]}"
  fi
}

# port_in_use PORT — true if something listens on 127.0.0.1:PORT.
port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# pid_alive PIDFILE EXPECTED_SUBSTRING — true if the pid in PIDFILE is running and
# its command line contains EXPECTED_SUBSTRING (guards against reused pids).
# A process inside execve() shows an empty command line for a moment (the kernel
# has swapped in the new address space but not yet written argv), so an empty one
# is read again before it counts as gone; a zombie's stays empty.
pid_alive() {
  local pf="$1" want="$2" pid cmd i
  [ -s "$pf" ] || return 1
  pid="$(cat "$pf")"
  for i in 1 2 3 4 5 6 7 8 9 10; do
    [ -r "/proc/$pid/cmdline" ] || return 1
    cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
    [ -n "$cmd" ] && break
    sleep 0.1
  done
  grep -qF -- "$want" <<<"$cmd"
}

# spawn NAME LOGFILE PIDFILE CMD... — start CMD detached in its own session,
# stdout+stderr to LOGFILE, and record its pid (the pid of CMD itself) in PIDFILE.
spawn() {
  local name="$1" logf="$2" pf="$3"; shift 3
  rm -f "$pf"
  : >>"$logf"
  # fds 8/9 are the tools' lock files: the daemon must not keep them locked.
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pf" "$@" </dev/null >>"$logf" 2>&1 8>&- 9>&- &
  local i pid argv0
  for i in $(seq 1 50); do [ -s "$pf" ] && break; sleep 0.1; done
  [ -s "$pf" ] || die "$name: could not start (no pid file $pf)"
  # The pid file is written before the exec: return once the command runs, so the
  # caller's liveness checks see the daemon and not the shell turning into it.
  pid="$(cat "$pf")"
  for i in $(seq 1 100); do
    [ -r "/proc/$pid/cmdline" ] || return 0   # already exited: the caller's check says so
    argv0="$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | head -n 1)" || return 0
    [ "$argv0" = "$1" ] && return 0
    sleep 0.05
  done
  log "$name: pid $pid has not become '$1' after 5 s"
}

# stop_pid NAME PIDFILE EXPECTED_SUBSTRING — SIGTERM the recorded pid, wait up to
# 15 s, then SIGKILL. Only ever signals that one pid.
stop_pid() {
  local name="$1" pf="$2" want="$3" pid i
  if ! pid_alive "$pf" "$want"; then rm -f "$pf"; return 0; fi
  pid="$(cat "$pf")"
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 150); do
    pid_alive "$pf" "$want" || { log "stopped $name (pid $pid)"; rm -f "$pf"; return 0; }
    sleep 0.1
  done
  log "$name (pid $pid) did not exit after SIGTERM; sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  sleep 0.5
  rm -f "$pf"
}

# wait_until TIMEOUT_S DESCRIPTION CMD... — poll CMD every 0.5 s.
wait_until() {
  local t="$1" what="$2"; shift 2
  local end=$(( SECONDS + t ))
  while [ "$SECONDS" -lt "$end" ]; do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  return 1
}
