"""RAPID's configuration.xml: every key read, mapped, and a clear error for a
missing or malformed value (the Java VMM silently gave up on the rest)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pinfold.rapid.config import RapidConfigError, read_rapid_config

SHIPPED = """<?xml version="1.0" encoding="UTF-8"?>
<RAPID_VMM_DS>
  <VMM>
    <vmmPort>9000</vmmPort>
    <vmmMaxConnection>100</vmmMaxConnection>
    <vmmIpAddress>{ip}</vmmIpAddress>
    <openStackSupport>{openstack}</openStackSupport>
    <defaultFlavorId>8ff03907</defaultFlavorId>
    <normalVmImagePath>/home/rapid/vm_images/RAPID_VM_template.img</normalVmImagePath>
    <helperVmImagePath1>/home/rapid/vm_images/RAPID_Helper1.img</helperVmImagePath1>
    <helperVmImagePath2>/home/rapid/vm_images/RAPID_Helper2.img</helperVmImagePath2>
    <vmImageFolder>/home/rapid/vm_images</vmImageFolder>
    <gpuCores>3072</gpuCores>
    <availableType>{available}</availableType>
    <nvidiaSmiPath>/usr/bin/nvidia-smi</nvidiaSmiPath>
    <gpuDeviceNum>0</gpuDeviceNum>
    <dataPath>/home/rapid/vmm_data</dataPath>
    <ipShellPath>/home/rapid/rapid_vmm_ds/getIp.sh</ipShellPath>
    <vmShellPath>/home/rapid/rapid_vmm_ds/getVm.sh</vmShellPath>
  </VMM>
  <DS>
    <dsPort>{ds_port}</dsPort>
    <dsIpAddress>10.0.0.2</dsIpAddress>
  </DS>
</RAPID_VMM_DS>
"""


def write(tmp_path: Path, **values: str) -> Path:
    fields = {"ip": "10.0.0.5", "openstack": "0", "available": "1000000000", "ds_port": "9001", **values}
    path = tmp_path / "configuration.xml"
    path.write_text(SHIPPED.format(**fields))
    return path


def test_every_key_is_read_and_mapped(tmp_path):
    config = read_rapid_config(write(tmp_path))
    assert (config.vmm_port, config.max_connections, config.vmm_ip) == (9000, 100, "10.0.0.5")
    assert (config.ds_ip, config.ds_port) == ("10.0.0.2", 9001)
    assert (config.gpu_cores, config.available_type, config.gpu_device) == (3072, "1000000000", 0)
    assert config.normal_image == Path("/home/rapid/vm_images/RAPID_VM_template.img")
    assert config.helper_images[1] == Path("/home/rapid/vm_images/RAPID_Helper2.img")
    assert config.ip_script == Path("/home/rapid/rapid_vmm_ds/getIp.sh")
    assert config.image_dirs == (Path("/home/rapid/vm_images"),)


def test_the_ds_section_may_be_absent(tmp_path):
    path = tmp_path / "configuration.xml"
    path.write_text("<RAPID_VMM_DS><VMM><vmmIpAddress>10.0.0.5</vmmIpAddress></VMM></RAPID_VMM_DS>")
    config = read_rapid_config(path)
    assert (config.ds_ip, config.ds_port, config.vmm_port) == ("127.0.0.1", 9001, 9000)


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"ip": "0.0.0.0"}, "vmmIpAddress: 0.0.0.0 is announced"),
        ({"ip": "not-an-ip"}, "vmmIpAddress"),
        ({"openstack": "1"}, "openStackSupport"),
        ({"available": "10"}, "availableType"),
        ({"ds_port": "ninety"}, "dsPort: a whole number"),
        ({"ds_port": "70000"}, "dsPort: 70000 is outside"),
    ],
)
def test_bad_values_are_named(tmp_path, values, problem):
    with pytest.raises(RapidConfigError, match=problem):
        read_rapid_config(write(tmp_path, **values))


def test_a_file_that_is_not_xml_is_refused(tmp_path):
    path = tmp_path / "configuration.xml"
    path.write_text("<RAPID_VMM_DS><VMM>")
    with pytest.raises(RapidConfigError, match=r"configuration\.xml"):
        read_rapid_config(path)
