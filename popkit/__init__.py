"""The command line and the tools: demo, provisioning, firmware build and flash, the broker helper, kit
install. Nothing below it (kits/, fleet/, agent/, simulators/, plumbing/) imports it."""
