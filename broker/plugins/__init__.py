"""Plugins: hook bundles loaded and unloaded at runtime (see `base` and `manager`)."""
