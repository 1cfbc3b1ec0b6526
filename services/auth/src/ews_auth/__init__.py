"""Auth: PIN/PUK roles, hashed codes, browser unlock (Logout vs Lock), guessing limits"""
