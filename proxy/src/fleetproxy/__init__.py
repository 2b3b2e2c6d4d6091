"""fleetproxy: an HAProxy-class TCP and HTTP load balancer, with VRRPv3 failover."""

__version__ = "0.1.0"
