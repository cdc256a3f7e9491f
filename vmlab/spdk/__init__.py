"""SPDK's vhost target, as vmlab drives it.

=============  ===========================================================================
module         what it does
=============  ===========================================================================
``cpumask``    SPDK's cpumask syntax, and checking one against the host
``rpc``        JSON-RPC to a target: SPDK's own client behind a typed adapter
``plan``       one disk: its backend (malloc, aio, uring, rbd) and the RPC calls that make
               it a vhost-user-blk controller and remove it again
``target``     one target process (started by vmlab, or the user's) and the disks on it
``targets``    the run's targets: shared by its cases, restarted after a crash
``find``       where this host's SPDK is (VMLAB_SPDK, PATH, the build-spdk prefix)
=============  ===========================================================================

The storage server that puts it together for a case is :mod:`vmlab.storage.spdk`.
"""
