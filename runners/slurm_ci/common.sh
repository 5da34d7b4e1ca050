# Shared by up.sh and down.sh (sourced, not run).

# running PIDFILE NAME: the pid file names a live process called NAME. A zombie counts as stopped: PID 1 of a
# container may reap orphans late.
running() {
    local pid
    pid=$(tr -cd '0-9' 2>/dev/null <"$1") || return 1
    [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
    [ "$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)" != Z ] || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}
