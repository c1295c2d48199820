"""One run: train w* (erm), sample (samplers), diagnose (diagnostics, health), draw (plots), and
`llc.estimate` for your own model (estimate)."""
