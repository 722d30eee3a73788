"""``python -m gitops_rollout`` runs the command line."""

from gitops_rollout.cli import run

if __name__ == "__main__":
    run()
