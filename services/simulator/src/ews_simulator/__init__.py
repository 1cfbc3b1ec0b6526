"""Device simulator: pymodbus servers serving every profile's twin with realistic dynamics."""

from .site import Fault, SimulatedSite, SimulatorError

__all__ = ["Fault", "SimulatedSite", "SimulatorError"]
