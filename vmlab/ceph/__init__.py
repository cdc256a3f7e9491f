"""Ceph: a micro cluster for labs and tests, and RBD helpers."""
