"""Commands: executes CommandRequested on Modbus, serialized per gateway, verified by read-back"""
