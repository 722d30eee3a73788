.PHONY: demo test setup help
help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'
setup:  ## create .venv and install Debian packages the tests need
	scripts/setup
demo: setup  ## run the demo on the bundled example repository
	.venv/bin/gitops-rollout demo
test:  ## ruff, mypy --strict, import-linter and pytest
	scripts/test
