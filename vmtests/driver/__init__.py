"""vmtests driver: the nixosTest API on systemd-nspawn containers (see docs/vmtests.md)."""
