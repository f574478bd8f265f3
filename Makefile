# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DATA := data/synthetic
# Small enough for a laptop CPU; scripts/synthesize.py makes thousands when asked.
DEMO_SPLITS := --labeled 40 --unlabeled 200 --validation 10 --test 20 --seed 0

.PHONY: venv demo data test lint clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -c constraints.txt -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

$(DATA)/datalist.json: | $(VENV)/.installed
	$(PY) scripts/synthesize.py --out $(DATA) $(DEMO_SPLITS)

data: $(DATA)/datalist.json

demo: $(VENV)/.installed $(DATA)/datalist.json
	$(PY) scripts/check_data.py --datalist $(DATA)/datalist.json --dataset_dir $(DATA)
	$(PY) scripts/contact_sheet.py --dataset_dir $(DATA) --out $(DATA)/contact_sheet.png
	@echo "synthetic dataset: $(DATA) (datalist.json, studies/*.dcm, labels/*.json); contact sheet: $(DATA)/contact_sheet.png"

lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: $(VENV)/.installed lint
	$(PY) -m pytest

clean:
	rm -rf $(VENV) $(DATA)
