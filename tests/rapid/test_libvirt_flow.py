"""A full RAPID flow on real libvirt: SLAM_START creates a real QEMU guest
(TCG) through the agent, its AS registers, the AS asks for suspension, the
SLAM's next start resumes it, the DS deregisters it; the DS-side messages are
checked at each step and the guest's state on the hypervisor too. Needs root
and libvirt (CI has both). The guest has no network: its address comes from
RAPID's ipShellPath script, as on hosts where libvirt knows no lease."""

from __future__ import annotations

import threading

from pinfold.agent.drivers import GuestState
from pinfold.agent.service import Agent, AgentSettings
from pinfold.agent.store import Store
from pinfold.rapid.config import RapidConfig
from pinfold.rapid.protocol import OK, Op
from pinfold.topology import Topology
from tests.agent.conftest import guest_initramfs, guest_kernel, libvirt_or_skip  # noqa: F401  (fixtures)
from tests.rapid.peers import FakeDS, FakeSLAM, as_register, no_reply, start_vm
from tests.rapid.rig import guest_vmm

NAMES = ("rapid-user-42", "rapid-helper-1", "rapid-helper-2")


def test_start_register_suspend_resume_deregister_on_libvirt(tmp_path, guest_kernel, guest_initramfs):  # noqa: F811
    libvirt_or_skip("qemu:///system")
    from pinfold.agent.drivers.libvirt import LibvirtDriver

    driver = LibvirtDriver("qemu:///system")
    for name in NAMES:
        if name in {g.name for g in driver.guests()}:
            driver.delete(name)  # left by an interrupted run
    script = tmp_path / "getIp.sh"
    script.write_text('case "$1" in rapid-user-42) echo 10.0.0.42 ;; *) echo 10.0.0.$$ ;; esac\n')
    slam = FakeSLAM()
    ds = FakeDS(slam.port)
    settings = AgentSettings(domain_type="qemu", kernel=guest_kernel, initrd=guest_initramfs,
                             cmdline="console=ttyS0", serial_dir=tmp_path)  # fmt: skip
    agent = Agent.open(Topology.discover(), driver, Store(tmp_path / "agent.db"), settings)
    config = RapidConfig(vmm_port=0, vmm_ip="127.0.0.1", ds_port=ds.port, ip_script=script)
    vmm, server = guest_vmm(agent, config, as_wait_s=60)
    state = vmm.state
    try:
        assert vmm.registered.wait(60)
        answer: list[object] = []
        request = threading.Thread(target=lambda: answer.append(start_vm(server.port, 42, memory_mb=128)))
        request.start()
        ds.wait_for(lambda got: any(m[0] == Op.VM_REGISTER_DS and m[4] == 42 for m in got), timeout_s=60)
        assert driver.info("rapid-user-42").state is GuestState.RUNNING
        assert as_register(server.port, "10.0.0.42") == (OK, 42)
        request.join(timeout=60)
        assert answer == [(OK, 42, "10.0.0.42")]
        vmid = next(m[6] for m in ds.of(Op.VM_REGISTER_DS) if m[4] == 42)

        no_reply(server.port, Op.AS_RM_NOTIFY_VMM, ("long", 42), ("int", 1))
        ds.wait_for(lambda got: (Op.VM_NOTIFY_DS, vmid, 2) in got)
        assert driver.info("rapid-user-42").state is GuestState.PAUSED

        answer.clear()
        request = threading.Thread(target=lambda: answer.append(start_vm(server.port, 42, memory_mb=128)))
        request.start()
        ds.wait_for(lambda got: (Op.VM_NOTIFY_DS, vmid, 3) in got)
        assert driver.info("rapid-user-42").state is GuestState.RUNNING
        assert as_register(server.port, "10.0.0.42") == (OK, 42)
        request.join(timeout=60)
        assert answer == [(OK, 42, "10.0.0.42")]

        no_reply(server.port, Op.DS_VM_DEREGISTER_VMM, ("long", 42))
        assert "rapid-user-42" not in {g.name for g in driver.guests()}
        assert state.vm(42) is None
        assert not [m for m in ds.of(Op.VM_NOTIFY_DS) if m[2] == 4]  # the DS asked: nothing told back
    finally:
        server.stop()
        vmm.stop()
        for name in NAMES:
            if name in agent.vms:
                agent.delete(name)
        state.close()
        agent.store.close()
        driver.close()
        ds.stop()
        slam.stop()
