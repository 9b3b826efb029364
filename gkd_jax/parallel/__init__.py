"""Devices: the mesh and partition rules (FSDP, tensor parallel), multi-host start-up, and
libtpu kept quiet on a host without a TPU (backends.py)."""
