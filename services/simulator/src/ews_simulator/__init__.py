"""Device simulator: a pymodbus TCP server serving every profile's twin with realistic load curves"""
