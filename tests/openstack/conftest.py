"""The OpenStack lab fixture for the tests of pinfold.openstack (tests/openstack/lab.py says what it is)."""

from tests.openstack.lab import cloud_lab  # noqa: F401  (fixture)
