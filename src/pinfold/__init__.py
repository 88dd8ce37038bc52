"""pinfold: an IaaS control plane for VMs of several CPU oversubscription levels.

Packages: `topology` and `placement` form the pure placement core; the CLI
(`pinfold.cli`) is a thin shell around them.
"""

__version__ = "0.1.0"
