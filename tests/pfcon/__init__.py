"""Tests of pfcon, against real pfioh and pman servers."""
