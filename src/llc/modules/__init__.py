"""Your own torch module as a model of all chains at once: its export to a graph (graph, chain_graph),
the hand-written gradient of stacks of linear layers (stacked_*), and what its files add to run ids."""
