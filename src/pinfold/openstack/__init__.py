"""pinfold's OpenStack component: VMs as Nova servers, through openstacksdk.

One rule: this package imports `pinfold.model` and the libraries, never the
agent's internals nor RAPID's (tests/test_layers.py holds it to that), so
that RAPID's OpenStack back-end (`pinfold.rapid.openstack_backend`) and the
agent's `--driver openstack` (`pinfold.agent.cloud_agent`) sit on the same `Cloud`.

- `settings`: how to reach the cloud (clouds.yaml or explicit), RAPID's keys mapped onto it;
- `flavors`: the flavor a VM gets, and the level a flavor is (pure);
- `errors`: the cloud's exceptions translated once into pinfold's codes;
- `levels`: capacity and use per level from Placement's inventories (pure);
- `records`: what `Cloud` answers as plain data (`Server`, `Capacity`, `Diagnostics`,
  `vm_state`), importable without openstacksdk;
- `usage`: a server's CPU % from two readings of its diagnostics, as Ceilometer's cpu_util (pure);
- `cloud`: `Cloud`, the servers' lifecycle over an openstacksdk connection.
"""
