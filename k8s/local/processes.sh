# The cluster's host processes: started in their own session with a log and a pid file each, judged
# alive by the process itself (a pid file can outlive its process, or name a recycled pid), stopped by
# pid. Sourced by cluster.sh.

PID_DIR="$CLUSTER_DIR/pids"
LOG_DIR="$CLUSTER_DIR/logs"

# alive NAME: the recorded pid runs the program that was started under NAME.
alive() {
    local pidfile="$PID_DIR/$1.pid" pid program
    [ -f "$pidfile" ] || return 1
    read -r pid program < "$pidfile"
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' < "/proc/$pid/cmdline" | grep -qF "$program"
}

# start NAME PROGRAM ARGS...: start PROGRAM unless NAME already runs.
start() {
    local name=$1
    shift
    if alive "$name"; then
        say "$name: already running"
        return
    fi
    mkdir -p "$PID_DIR" "$LOG_DIR"
    setsid "$@" >> "$LOG_DIR/$name.log" 2>&1 < /dev/null &
    echo "$! $1" > "$PID_DIR/$name.pid"
    sleep 0.2
    alive "$name" || die "$name did not start; the end of $LOG_DIR/$name.log:
$(tail -n 15 "$LOG_DIR/$name.log")"
    say "$name: started (pid $!)"
}

# stop NAME [SECONDS]: SIGTERM, then SIGKILL after SECONDS (default 20).
stop() {
    local name=$1 grace=${2:-20} pid program waited=0
    if alive "$name"; then
        read -r pid program < "$PID_DIR/$name.pid"
        kill "$pid" 2>/dev/null || true
        while alive "$name" && [ $waited -lt $((grace * 5)) ]; do
            sleep 0.2
            waited=$((waited + 1))
        done
        if alive "$name"; then
            warn "$name did not stop in ${grace} s: killing it"
            kill -9 "$pid" 2>/dev/null || true
        fi
        say "$name: stopped"
    fi
    rm -f "$PID_DIR/$name.pid"
}
