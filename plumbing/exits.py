"""Exit codes that mean something to whoever supervises a part."""

# The exit code that asks a supervisor to start a part again: the agent after a `reboot` command,
# the firmware's unix board on reset(). deploy/popkit-agent.service restarts on any exit;
# `popkit demo` restarts on this one.
RESTART_EXIT = 75  # EX_TEMPFAIL
