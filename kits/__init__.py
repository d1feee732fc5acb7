"""What a kit is (its manifest) and what every part of a kit speaks (the contract)."""
