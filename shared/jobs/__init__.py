"""Jobs: configuration, rules, storage, versions, lifecycle, enablement and health."""
