"""Glue for pinfold's loopback OpenStack lab (scripts/openstack-up)."""
