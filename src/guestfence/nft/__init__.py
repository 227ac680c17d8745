"""nftables backends: rulesets as libnftables JSON data, applied in one transaction."""
