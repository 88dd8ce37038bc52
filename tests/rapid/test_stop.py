"""Stopping RAPID's endpoint while a SLAM start waits for its AS.

RAPID lets a start wait minutes for the new VM's AS (`as_wait_s`, ~200 s in
RAPID). The server's stop waited for its requests in flight, and the VMM's
stop, which would have ended that wait, came only after it: an agent told
to stop (SIGTERM) stayed up for the rest of the wait (seen: still running
60 s after SIGTERM). Now the VMM stops first, and its stop ends every wait
for an AS at once; the start answers ERROR, as a start whose AS never came.
"""

from __future__ import annotations

import threading
import time

from pinfold.rapid.endpoint import stop_serving
from pinfold.rapid.protocol import ERROR, Op
from tests.rapid.peers import start_vm
from tests.rapid.rig import FAST, make_rig

AS_WAIT_S = 120.0


def test_a_stop_ends_a_start_that_waits_for_its_as(tmp_path, i7, peers):
    ds, slam = peers
    rig = make_rig(tmp_path, i7, ds, slam, settings=FAST.model_copy(update={"as_wait_s": AS_WAIT_S}))
    assert rig.vmm.registered.wait(10)
    answer: list[tuple[object, ...]] = []
    slam_side = threading.Thread(target=lambda: answer.append(start_vm(rig.port, 44)))
    slam_side.start()
    # the VM is made and registered with the DS: the start now waits for its AS
    ds.wait_for(lambda got: any(m[0] == Op.VM_REGISTER_DS and m[4] == 44 for m in got))
    started = time.monotonic()
    stop_serving(rig.server, rig.vmm)
    took = time.monotonic() - started
    slam_side.join(timeout=30)
    rig.state.close()
    rig.agent.store.close()
    assert took < AS_WAIT_S / 4, f"the stop waited {took:.1f} s for a start's AS"
    assert answer == [(ERROR,)]
