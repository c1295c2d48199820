"""Starting a sweep from a shell: checks before any work (preflight), the local Prefect server
(local_server), the sweep itself (sweep), and the pull step of prefect.yaml's deployments (deployment)."""
