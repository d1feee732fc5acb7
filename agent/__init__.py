"""PopKit edge agent: runs on the kit's Raspberry Pi and drives its serial hardware."""
