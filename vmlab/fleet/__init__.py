"""A fleet of hypervisors: one spec on every host of an Ansible inventory, merged into one run.

``run`` drives ``playbooks/bench.yml`` through ansible-runner, ``merge`` folds the run
directories that come back into one run with a ``host`` dimension, and ``cli`` is
``vmlab fleet``. Throwaway SSH hosts in network namespaces, for the fleet's tests and
benchmark, are test infrastructure: ``tests/integration/testhosts.py``.
"""
