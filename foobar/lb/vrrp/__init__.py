"""VRRP: the floating addresses a pair of balancers share (see speaker.py)."""
