"""Aggregator: turns readings into hourly/daily/monthly/yearly energy and cost in ClickHouse"""
