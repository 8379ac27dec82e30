"""Bundles as files: what each bundle is (specs), the configs, metadata and cards rendered from it, and releases."""
