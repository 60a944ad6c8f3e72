"""The `mixq` command line."""
