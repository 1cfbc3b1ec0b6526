"""Poller: polls Modbus gateways and publishes ReadingTaken / DeviceStatusChanged on JetStream"""
