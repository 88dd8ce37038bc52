"""RAPID's opcodes and the layouts of the messages this VMM sends (PROTOCOL.md 3.2-3.6).

Each `*_request` writes one message into a codec `Writer`; each `*_reply`
reads an answer from a `Reader`. Field order and widths are those of the Java
peers; the golden vectors of `tests/rapid` check them byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from pinfold.rapid.codec import Reader, Writer

__all__ = ["CATEGORY_HELPER", "CATEGORY_NORMAL", "ERROR", "MAC_TYPE", "OK", "DsRegistration", "Op"]

OK = 1
ERROR = 0
MAC_TYPE = 4  # constant in the Java VMM
CATEGORY_NORMAL = 0
CATEGORY_HELPER = 1


class Op(IntEnum):
    AS_RM_REGISTER_VMM = 38
    AS_RM_NOTIFY_VMM = 39
    DS_MIGRATION_VM_AS = 57
    SLAM_START_VM_VMM = 60
    VMM_REGISTER_SLAM = 61
    SLAM_GET_VMCPU_VMM = 62
    SLAM_GET_VMINFO_VMM = 63
    SLAM_CHANGE_VMFLV_VMM = 64
    SLAM_CONFIRM_VMFLV_VMM = 65
    SLAM_GET_VMMEM_VMM = 66
    SLAM_GET_VMDISK_VMM = 67
    VMM_REGISTER_DS = 70
    VMM_NOTIFY_DS = 71
    VM_REGISTER_DS = 72
    VM_NOTIFY_DS = 73
    HELPER_NOTIFY_DS = 74
    DS_VM_DEREGISTER_VMM = 75


@dataclass(frozen=True)
class DsRegistration:
    vmm_id: int
    slam_ip: str
    slam_port: int


def vmm_register_ds_request(
    out: Writer, vmm_ip: str, cpu_load: int, cpu_cores: int, free_mem_mb: int, gpu_util: int, gpu_cores: int,
    available_type: str,
) -> None:  # fmt: skip
    out.write_byte(Op.VMM_REGISTER_DS)
    out.write_utf(vmm_ip)
    out.write_int(MAC_TYPE)
    out.write_int(cpu_load)
    out.write_int(cpu_cores)
    out.write_long(free_mem_mb)
    out.write_int(gpu_util)
    out.write_int(gpu_cores)
    out.write_utf(available_type)


def vmm_register_ds_reply(reply: Reader) -> DsRegistration | None:
    if reply.read_byte() != OK:
        return None
    return DsRegistration(reply.read_long(), reply.read_utf(), reply.read_int())


def vmm_notify_ds_request(out: Writer, vmm_id: int, cpu_load: int, free_mem_mb: int, gpu_util: int) -> None:
    out.write_byte(Op.VMM_NOTIFY_DS)
    out.write_long(vmm_id)
    out.write_int(cpu_load)
    out.write_long(free_mem_mb)
    out.write_int(gpu_util)


def vm_register_ds_request(out: Writer, vmm_id: int, category: int, user_id: int, status: int) -> None:
    out.write_byte(Op.VM_REGISTER_DS)
    out.write_long(vmm_id)
    out.write_int(category)
    out.write_int(0)  # type: always 0
    out.write_long(user_id)
    out.write_int(status)


def vm_register_ds_reply(reply: Reader) -> int:
    """The DS answers the new vmid alone, with no status byte."""
    return reply.read_long()


def vm_notify_ds_request(out: Writer, vmid: int, status: int) -> None:
    out.write_byte(Op.VM_NOTIFY_DS)
    out.write_long(vmid)
    out.write_int(status)


def helper_notify_ds_request(out: Writer, vmid: int, ip: str) -> None:
    out.write_byte(Op.HELPER_NOTIFY_DS)
    out.write_long(vmid)
    out.write_utf(ip)


def vmm_register_slam_request(out: Writer, vmm_ip: str, vmm_port: int) -> None:
    out.write_byte(Op.VMM_REGISTER_SLAM)
    out.write_utf(vmm_ip)
    out.write_int(vmm_port)


def status_reply(reply: Reader) -> bool:
    return bool(reply.read_byte() == OK)


def migration_request(out: Writer, user_id: int) -> None:
    """DS_MIGRATION_VM_AS to the AS: its protocol puts the opcode outside block data."""
    out.write_raw_byte(Op.DS_MIGRATION_VM_AS)
    out.write_long(user_id)
