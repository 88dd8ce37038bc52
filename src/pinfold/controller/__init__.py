"""The controller: the directory of hosts and VMs, and the global scheduler.

Its rule: the database is the only shared state. Several controller replicas
may run on one PostgreSQL, so anything two requests could race on (the last
room on a host) is decided inside one database transaction that holds the
host's lock (`store.ControllerStore.reserve`), never in process memory.
"""
