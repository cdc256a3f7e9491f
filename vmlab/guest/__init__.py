"""The guest side: the default image, SSH access, readiness."""
