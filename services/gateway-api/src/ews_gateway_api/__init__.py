"""Gateway API: the Litestar JSON API and web UI, guarded by role, sessions in Redis"""
