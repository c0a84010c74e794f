# Convenience targets; the README's commands are the scripts they call.
.PHONY: setup demo test bench lint
setup:
	bash scripts/setup.sh
demo:
	bash scripts/demo.sh
test:
	bash scripts/test.sh
bench:
	bash bench/run
lint:
	.venv/bin/ruff check edgebox tests bench
	cd ansible && ../.venv/bin/ansible-lint --offline
