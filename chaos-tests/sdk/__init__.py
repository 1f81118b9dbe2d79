"""Process-level chaos tests through the official SDK (a package, so its conftest does not take the
module name `conftest` that coordinator/tests/sdk imports from when both are collected together)."""
