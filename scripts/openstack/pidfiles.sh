# Sourced by scripts/openstack-up and scripts/openstack-down: whether the lab
# process that a pid file names is still running.
#
# A pid file outlives its process (a crash, a machine restored from a disk
# image that was taken while the lab ran), and its pid may by then belong to
# another process: a CI machine started from such an image had neutron's old
# pid taken by something else, so openstack-up took neutron for running and
# never started it. Two checks, each enough for one of the two cases.

BOOT_ID_FILE=/proc/sys/kernel/random/boot_id

# Forget the pid files written before the machine last booted: none of their
# processes can be running. $1 is the lab's run directory; further arguments
# are pid files kept elsewhere (RabbitMQ's).
forget_earlier_boots() {
    local run="$1" boot
    shift
    boot="$(cat "$BOOT_ID_FILE")"
    if [ "$(cat "$run/boot-id" 2>/dev/null)" != "$boot" ]; then
        rm -f "$run"/*.pid "$@"
        echo "$boot" > "$run/boot-id"
    fi
}

# The pid in file $1 is a running process that was started no later than the
# file was written (a pid taken again later belongs to a newer process).
running_pidfile() {
    local file="$1" pid age written now
    pid="$(cat "$file" 2>/dev/null)" || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    age="$(ps -o etimes= -p "$pid" | tr -d ' ')"
    [[ "$age" =~ ^[0-9]+$ ]] || return 1
    written="$(stat -c %Y "$file")" || return 1
    now="$(date +%s)"
    # seconds are whole on both sides: allow for the rounding
    [ "$((now - age))" -le "$((written + 2))" ]
}
