"""Nested hypervisors: run a spec's cases inside an L1 host vmlab builds and boots.

* :mod:`.plan` — which L1 hosts a spec needs, what goes into each (pure);
* :mod:`.image` — the L1 image (a cached rootfs with the L1 kernel and packages) and the
  payload disk that carries this vmlab, its Python libraries and the L2 guest image;
* :mod:`.boot` — L1's QEMU argv and its boot;
* :mod:`.run` — the nested bench: boot each L1, run the inner spec there, bring the runs back
  into one host run.
"""
