"""A fleet of hypervisors: one spec on every host of an Ansible inventory, merged into one run.

``run`` drives ``playbooks/bench.yml`` through ansible-runner, ``merge`` folds the run
directories that come back into one run with a ``host`` dimension, ``cli`` is ``vmlab fleet``,
and ``testhosts`` makes throwaway SSH hosts in network namespaces for tests and benchmarks.
"""
