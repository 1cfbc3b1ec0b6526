"""Shared contracts: what crosses a service boundary (events, subjects, streams, site file, profiles)."""
