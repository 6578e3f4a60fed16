"""Algorithms shared by several methods, each written once and tested once (tests/test_common.py)."""
