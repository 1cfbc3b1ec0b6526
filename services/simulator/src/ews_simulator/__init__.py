"""Device simulator: a pymodbus TCP server serving every profile's twin with realistic load curves."""

from .site import SimulatedSite, SimulatorError

__all__ = ["SimulatedSite", "SimulatorError"]
