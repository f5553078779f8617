"""Cortex-M microcontrollers: board presets, firmware build, and the host harness."""
