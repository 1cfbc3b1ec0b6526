"""Root conftest: real-server fixtures (nats-server, redis-server, chDB) for every test package."""

pytest_plugins = ["ews_runtime.testing"]
