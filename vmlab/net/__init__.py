"""Lab networks: bridges, taps, macvtap and namespaces."""
