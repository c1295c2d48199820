"""The unit of work, below both the sweep flow that maps cells and the backends that run them: a cell,
how it ended (its record), running it, and finding its experiment."""
