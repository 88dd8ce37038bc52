# Sourced by scripts/openstack-up and scripts/openstack-down: whether the lab
# process that a pid file names is still running.
#
# A pid file outlives its process (a crash, a machine restored from a disk
# image that was taken while the lab ran), and its pid may by then belong to
# another process: a CI machine started from such an image had neutron's old
# pid taken by something else, so openstack-up took neutron for running and
# never started it. So a pid counts only if its process's command line or
# environment holds a mark of the lab: the lab's directory (MariaDB's data
# directory, the nova daemons' venv; RabbitMQ's RABBITMQ_MNESIA_BASE) or
# gunicorn's name for it, "pinfold-lab-NAME" (a gunicorn master retitles itself
# "gunicorn: master [pinfold-lab-NAME]", over its environment too). Not the
# clock (a process started after its pid file was written is not the file's):
# a clock stepped after a restore makes that check lie.

# The pid in file $1 is a running process whose command line or environment
# holds one of the marks $2...
running_pidfile() {
    local file="$1" pid mark patterns=()
    shift
    for mark in "$@"; do
        patterns+=(-e "$mark")
    done
    pid="$(cat "$file" 2>/dev/null)" || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    grep -qsaF "${patterns[@]}" "/proc/$pid/cmdline" "/proc/$pid/environ"
}

# As running_pidfile; a pid file that fails it is removed (gunicorn refuses to
# start while its --pid file names a live process, whatever process it is).
running_or_forgotten() {
    running_pidfile "$@" && return 0
    rm -f "$1"
    return 1
}

# Whether lab service $3 runs (its pid file: $2/$3.pid; the lab's directory: $1),
# by marks of that service alone: gunicorn's title for it "[pinfold-lab-NAME]", a
# nova daemon's program "$1/venv/bin/NAME", MariaDB's "--pid-file=$2/NAME.pid". Not
# the lab's directory: every process openstack-up starts after RabbitMQ's settings
# has it in its environment (RABBITMQ_MNESIA_BASE), RabbitMQ and its helpers too. A
# clean-clone CI run on a machine whose lab daemons had died, their pid files left,
# found placement's old pid taken by that run's own RabbitMQ (and neutron's,
# nova-api's and nova-conductor's by other processes of the lab's): none of the four
# was started, and nova-api was waited for 300 s.
service_running() {
    local lab="$1" run="$2" name="$3"
    running_or_forgotten "$run/$name.pid" "[pinfold-lab-$name]" "$lab/venv/bin/$name" "--pid-file=$run/$name.pid"
}
