"""Git write stage: change sets, commits and pushes, and pull requests on a Git host."""
