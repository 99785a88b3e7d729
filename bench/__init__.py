"""Benchmarks and the soak test of the Agent Execution Service (docs/performance.md)."""

from __future__ import annotations
