# Shortcuts; the scripts are the source of truth (the README's commands call them).
.PHONY: setup test demo lint bench
setup:
	bash scripts/setup
test:
	bash scripts/test
demo:
	bash scripts/demo
lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy
bench:
	.venv/bin/stream-ae bench
