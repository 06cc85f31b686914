# The two commands of the README: `make demo` (the main job, end to end) and `make test`.
.PHONY: bootstrap demo test test-unit lint typecheck bench down

bootstrap:
	./scripts/bootstrap.sh

demo: bootstrap
	.venv/bin/radstream demo

test: bootstrap
	.venv/bin/pytest -q --basetemp=.pytest-tmp

test-unit: bootstrap
	.venv/bin/pytest -q -m unit --basetemp=.pytest-tmp

lint: bootstrap
	.venv/bin/ruff check .

typecheck: bootstrap
	./scripts/typecheck.sh

down:
	.venv/bin/radstream dev down
