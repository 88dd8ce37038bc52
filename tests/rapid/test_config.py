"""RAPID's configuration.xml: every key of PROTOCOL.md section 7 read and
mapped; a missing key RAPID's VMM needs, or a malformed value, is an error
naming the file and the key; the keys RAPID has a default for may be left out
(the Java VMM silently gave up on the rest of the file)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pinfold.rapid.config import OPENSTACK_KEYS, RapidConfigError, read_rapid_config

#: the VMM section of RAPID's shipped file, libvirt mode, with this host's address
SHIPPED = {
    "vmmPort": "9000",
    "vmmMaxConnection": "100",
    "vmmIpAddress": "10.0.0.5",
    "openStackSupport": "0",
    "defaultFlavorId": "8ff03907",
    "type2_1024_20FlavorId": "d97def8c",
    "type4_1024_20FlavorId": "b8c86381",
    "linuxNormalVmImageId": "4c5cdd9c",
    "linuxHelperVmImageId": "4c5cdd9c",
    "androidNormalVmImageId": "18e0b1a9",
    "androidHelperVmImageId": "18e0b1a9",
    "authAddress": "http://0.0.0.0:5000/v3",
    "openStackUserId": "userId",
    "openStackPasswd": "admin",
    "projectId1": "0a1b",
    "projectId2": "2c3d",
    "networkId": "5e6f",
    "publicKey": "rapid_vms",
    "offloadingSecurity": "Offloading",
    "normalVmImagePath": "/home/rapid/vm_images/RAPID_VM_template.img",
    "helperVmImagePath1": "/home/rapid/vm_images/RAPID_Helper1.img",
    "helperVmImagePath2": "/home/rapid/vm_images/RAPID_Helper2.img",
    "vmImageFolder": "/home/rapid/vm_images",
    "gpuCores": "3072",
    "availableType": "1000000000",
    "nvidiaSmiPath": "/opt/nvidia/bin/nvidia-smi",
    "gpuDeviceNum": "1",
    "dataPath": "/home/rapid/vmm_data",
    "ipShellPath": "/home/rapid/rapid_vmm_ds/getIp.sh",
    "vmShellPath": "/home/rapid/rapid_vmm_ds/getVm.sh",
}
DS = {"dsPort": "9011", "dsIpAddress": "10.0.0.2"}
REQUIRED = (
    "vmmPort", "vmmMaxConnection", "vmmIpAddress", "gpuCores", "availableType", "gpuDeviceNum", "dataPath",
    "normalVmImagePath", "helperVmImagePath1", "helperVmImagePath2", "vmImageFolder", "ipShellPath",
)  # fmt: skip


def write(tmp_path: Path, vmm: dict[str, str], ds: dict[str, str] | None = None) -> Path:
    def elements(values: dict[str, str]) -> str:
        return "".join(f"<{key}>{value}</{key}>" for key, value in values.items())

    section = f"<DS>{elements(ds)}</DS>" if ds is not None else ""
    path = tmp_path / "configuration.xml"
    path.write_text(f'<?xml version="1.0"?><RAPID_VMM_DS><VMM>{elements(vmm)}</VMM>{section}</RAPID_VMM_DS>')
    return path


def without(*keys: str) -> dict[str, str]:
    return {key: value for key, value in SHIPPED.items() if key not in keys}


def test_every_key_is_read_and_mapped(tmp_path):
    config = read_rapid_config(write(tmp_path, SHIPPED, DS))
    assert (config.vmm_port, config.max_connections, config.vmm_ip) == (9000, 100, "10.0.0.5")
    assert (config.ds_ip, config.ds_port) == ("10.0.0.2", 9011)
    assert (config.gpu_cores, config.available_type, config.gpu_device) == (3072, "1000000000", 1)
    assert config.nvidia_smi == "/opt/nvidia/bin/nvidia-smi"
    assert config.normal_image == Path("/home/rapid/vm_images/RAPID_VM_template.img")
    assert config.helper_images[1] == Path("/home/rapid/vm_images/RAPID_Helper2.img")
    assert config.ip_script == Path("/home/rapid/rapid_vmm_ds/getIp.sh")
    assert config.vm_script == Path("/home/rapid/rapid_vmm_ds/getVm.sh")
    assert config.data_path == Path("/home/rapid/vmm_data")
    assert config.image_dirs == (Path("/home/rapid/vm_images"),)
    assert config.openstack == {key: SHIPPED[key] for key in OPENSTACK_KEYS}


def test_keys_with_a_rapid_default_may_be_left_out(tmp_path):
    """The <DS> section (absent from the VMM's shipped file), nvidiaSmiPath,
    vmShellPath, openStackSupport (absent: libvirt) and the OpenStack keys."""
    path = write(tmp_path, without("nvidiaSmiPath", "vmShellPath", "openStackSupport", *OPENSTACK_KEYS))
    config = read_rapid_config(path)
    assert (config.ds_ip, config.ds_port) == ("127.0.0.1", 9001)
    assert (config.nvidia_smi, config.vm_script) == ("/usr/bin/nvidia-smi", None)
    assert config.openstack == dict.fromkeys(OPENSTACK_KEYS, "")


@pytest.mark.parametrize("key", REQUIRED)
def test_a_missing_key_that_rapid_needs_is_named_with_the_file(tmp_path, key):
    path = write(tmp_path, without(key), DS)
    with pytest.raises(RapidConfigError, match=rf"^{re.escape(str(path))}: {key}: missing"):
        read_rapid_config(path)


def test_images_and_the_ip_script_may_be_left_empty(tmp_path):
    """RAPID's libvirt keys: needed there, optional here (the agent boots
    VMs without a base image, and finds addresses without the script)."""
    empty = dict.fromkeys(("normalVmImagePath", "helperVmImagePath1", "helperVmImagePath2", "vmImageFolder",
                           "ipShellPath"), "")  # fmt: skip
    config = read_rapid_config(write(tmp_path, {**SHIPPED, **empty}))
    assert (config.normal_image, config.helper_images, config.image_folder, config.ip_script) == (
        None,
        (None, None),
        None,
        None,
    )
    assert config.image_dirs == ()


def test_openstack_support_takes_the_openstack_keys_and_not_libvirts(tmp_path):
    """openStackSupport 1: RAPID's OpenStack keys become the cloud's settings,
    and the libvirt keys (read only in libvirt mode, as RAPID) may be left out."""
    libvirt = (
        "normalVmImagePath",
        "helperVmImagePath1",
        "helperVmImagePath2",
        "vmImageFolder",
        "ipShellPath",
    )
    config = read_rapid_config(write(tmp_path, {**without(*libvirt), "openStackSupport": "1"}))
    assert config.openstack_support
    cloud = config.cloud_settings
    assert (cloud.auth_url, cloud.user_id, cloud.project_id, cloud.domain_id) == (
        "http://0.0.0.0:5000/v3",
        "userId",
        "0a1b",
        "2c3d",
    )
    assert (cloud.network, cloud.key_name, cloud.security_group) == ("5e6f", "rapid_vms", "Offloading")
    assert cloud.flavors["4_1024_20"] == "b8c86381"
    assert (config.normal_image, config.ip_script, config.image_dirs) == (None, None, ())
    assert not read_rapid_config(write(tmp_path, SHIPPED)).openstack_support


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"vmmIpAddress": "0.0.0.0"}, "vmmIpAddress: 0.0.0.0 is announced"),
        ({"vmmIpAddress": "not-an-ip"}, "vmmIpAddress: 'not-an-ip' is not an IP address"),
        ({"vmmIpAddress": ""}, "vmmIpAddress: '' is not an IP address"),
        (
            {"openStackSupport": "1", "openStackPasswd": "", "projectId1": ""},
            "openStackSupport is 1, but the OpenStack keys lack openStackPasswd, projectId1",
        ),
        ({"availableType": "10"}, "availableType: ten digits expected"),
        ({"vmmPort": ""}, "vmmPort: a whole number expected, not ''"),
        ({"vmmPort": "70000"}, "vmmPort: 70000 is outside"),
        ({"gpuDeviceNum": "first"}, "gpuDeviceNum: a whole number"),
        ({"gpuCores": "-1"}, "gpuCores: -1 is outside"),
        ({"dataPath": ""}, "dataPath: empty"),
        ({"ipShellPath": "getIp.sh"}, "ipShellPath: an absolute path expected"),
    ],
)
def test_bad_values_are_named(tmp_path, values, problem):
    path = write(tmp_path, {**SHIPPED, **values})
    with pytest.raises(RapidConfigError, match=f"^{re.escape(str(path))}: {re.escape(problem)}"):
        read_rapid_config(path)


@pytest.mark.parametrize(
    ("values", "problem"),
    [({"dsPort": "ninety"}, "dsPort: a whole number"), ({"dsIpAddress": ""}, "dsIpAddress: empty")],
)
def test_bad_ds_values_are_named(tmp_path, values, problem):
    path = write(tmp_path, SHIPPED, {**DS, **values})
    with pytest.raises(RapidConfigError, match=f"^{re.escape(str(path))}: {re.escape(problem)}"):
        read_rapid_config(path)


def test_a_file_that_is_not_xml_is_refused(tmp_path):
    path = tmp_path / "configuration.xml"
    path.write_text("<RAPID_VMM_DS><VMM>")
    with pytest.raises(RapidConfigError, match=r"configuration\.xml"):
        read_rapid_config(path)


def test_the_images_of_rapids_vms_by_mode_and_os_type(tmp_path):
    """libvirt: the base image paths; OpenStack: the Glance images of the VM's
    kind and osType (1 Android, else Linux; helpers Android's, as RAPID), the
    other OS's when one is empty."""
    libvirt = read_rapid_config(write(tmp_path, SHIPPED))
    assert libvirt.user_image(1) == "/home/rapid/vm_images/RAPID_VM_template.img"
    assert libvirt.helper_image(2) == "/home/rapid/vm_images/RAPID_Helper2.img"
    images = {"linuxNormalVmImageId": "linux", "androidNormalVmImageId": "android",
              "linuxHelperVmImageId": "linux-helper", "androidHelperVmImageId": "android-helper"}  # fmt: skip
    cloud = {**SHIPPED, "openStackSupport": "1", **images}
    openstack = read_rapid_config(write(tmp_path, cloud))
    assert (openstack.user_image(0), openstack.user_image(1), openstack.user_image(7)) == (
        "linux",
        "android",
        "linux",
    )
    assert openstack.helper_image(1) == openstack.helper_image(2) == "android-helper"
    only_linux = read_rapid_config(
        write(tmp_path, {**cloud, "androidNormalVmImageId": "", "androidHelperVmImageId": ""})
    )
    assert (only_linux.user_image(1), only_linux.helper_image(1)) == ("linux", "linux-helper")
    none = read_rapid_config(
        write(tmp_path, {**cloud, **dict.fromkeys(("linuxNormalVmImageId", "androidNormalVmImageId"), "")})
    )
    assert none.user_image(0) == ""
