"""Device simulators on pseudo-terminals, so drivers run unchanged without hardware."""
