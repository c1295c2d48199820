"""Modal as one package: the flow side's backend (client), the remote app (app), and the runs volume
its cells write to (volume)."""
