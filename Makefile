# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DATA := data/synthetic
# Small enough for a laptop CPU; scripts/synthesize.py makes thousands when asked.
DEMO_SPLITS := --labeled 80 --unlabeled 200 --validation 20 --test 20 --seed 0
MODELS := models
# The network size: `cpu` is configs/cpu.json (ResNet-18, 64-channel pyramid, 192 px crops), the choice for a
# machine without a GPU; `thesis` is the thesis's ResNet-50 at 320 px (Table 11), for a GPU.
DEMO_NETWORK ?= cpu
ifeq ($(DEMO_NETWORK),cpu)
SIZE_CONFIG := ,'configs/cpu.json'
endif
# 80 labeled studies = 160 views = 40 steps an epoch: 30 epochs = 1200 steps, under a warm-up + cosine learning
# rate (configs/cosine_schedule.json: it ends at 0 at the last step, so the demo's budget is a whole schedule; to
# train longer, start over rather than resume). Validation on 20 studies every 5 epochs picks model.pt. From a
# fresh clone on generator-version-2 data: test AP50 0.43 / mean F1 0.63 in 17 minutes on 2 cores with native
# bf16, where the earlier recipe (40 labeled, 10 validation, constant rate, 600 steps) scored AP50 0.19 / mean
# F1 0.22 (docs/BENCHMARKS.md, Training time).
DEMO_EPOCHS ?= 30
DEMO_VAL_INTERVAL ?= 5
# 12 epochs over 160 views: as many view passes as the 25 epochs over 80 views it used to train
CHEST_EPOCHS ?= 12
BUNDLE := $(PY) -m monai.bundle run training \
	--config_file "['configs/train.json'$(SIZE_CONFIG),'configs/cosine_schedule.json']" \
	--logging_file configs/logging.conf
EVALUATE := $(PY) -m monai.bundle run evaluating \
	--config_file "['configs/train.json'$(SIZE_CONFIG),'configs/evaluate.json']" --logging_file configs/logging.conf
INFER := $(PY) -m monai.bundle run inferring --config_file "['configs/inference.json'$(SIZE_CONFIG)]" \
	--logging_file configs/logging.conf
# studies of the test split the demo runs whole-body inference on
DEMO_INFER_STUDIES ?= 4
# test studies drawn as ground truth beside prediction at the end of the demo
DEMO_OVERLAY := runs/ground_truth_vs_prediction.png
# MONAI Label lives in its own environment (requirements-label.txt): it needs pydicom 2, the bundle pydicom 3
LABEL_VENV := .venv-label
LABEL_HOST ?= 127.0.0.1
LABEL_PORT ?= 8000
# the server's datastore writes labels beside the images, so it gets a copy of the synthetic studies
LABEL_STUDIES ?= runs/label_studies

.PHONY: venv demo data train evaluate infer label label-server benchmark-ssl test lint clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -c constraints.txt -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

$(LABEL_VENV)/.installed: requirements-label.txt
	$(PYTHON) -m venv $(LABEL_VENV)
	$(LABEL_VENV)/bin/pip install -r requirements-label.txt
	touch $@

label: $(LABEL_VENV)/.installed

$(DATA)/datalist.json: | $(VENV)/.installed
	$(PY) scripts/synthesize.py --out $(DATA) $(DEMO_SPLITS)

data: $(DATA)/datalist.json

$(MODELS)/chest_detector.pt: | $(DATA)/datalist.json
	$(PY) scripts/train_chest_detector.py --dataset_dir $(DATA) --epochs $(CHEST_EPOCHS) --output $@

train: $(VENV)/.installed $(DATA)/datalist.json $(MODELS)/chest_detector.pt
	$(BUNDLE) --dataset_dir $(DATA) --ckpt_dir $(MODELS) --epochs $(DEMO_EPOCHS) \
		--val_interval $(DEMO_VAL_INTERVAL) --tracking mlflow --output_dir runs

evaluate: $(VENV)/.installed
	$(EVALUATE) --dataset_dir $(DATA) --ckpt_dir $(MODELS) --tracking mlflow --output_dir runs

infer: $(VENV)/.installed
	$(INFER) --dataset_dir $(DATA) --ckpt_dir $(MODELS) --output_dir runs/inference --max_studies $(DEMO_INFER_STUDIES)

$(LABEL_STUDIES): | $(DATA)/datalist.json
	mkdir -p $(dir $@) && cp -r $(DATA)/studies $@

# the server serves the demo's model, so it gets the same network size (cpu.json is a flat override file);
# the server runs in $(LABEL_VENV) (its launcher calls `python` from PATH) and hands requests to $(VENV)
label-server: $(VENV)/.installed $(LABEL_VENV)/.installed $(MODELS)/chest_detector.pt | $(LABEL_STUDIES)
	PATH="$(CURDIR)/$(LABEL_VENV)/bin:$$PATH" monailabel start_server --app monailabel_app \
		--studies $(LABEL_STUDIES) --host $(LABEL_HOST) --port $(LABEL_PORT) \
		--conf ckpt_dir $(CURDIR)/$(MODELS) --conf bundle_python $(CURDIR)/$(PY) \
		$(if $(SIZE_CONFIG),--conf overrides $(CURDIR)/configs/cpu.json)

# thesis Table 4 and Figs. 19-20 on synthetic data: the whole study, 3 seeds at 1600 steps, is many hours on 2
# cores; resumable, and --seeds/--sweeps/--variants run it in parts (docs/BENCHMARKS.md)
benchmark-ssl: $(VENV)/.installed
	$(PY) scripts/benchmark_ssl.py --profile cpu

demo: $(VENV)/.installed $(DATA)/datalist.json
	$(PY) scripts/check_data.py --datalist $(DATA)/datalist.json --dataset_dir $(DATA)
	$(PY) scripts/contact_sheet.py --dataset_dir $(DATA) --out $(DATA)/contact_sheet.png
	$(MAKE) train
	$(MAKE) evaluate
	$(MAKE) infer
	$(PY) scripts/compare_predictions.py --config_file configs/inference.json $(if $(SIZE_CONFIG),configs/cpu.json) \
		--dataset_dir $(DATA) --ckpt_dir $(MODELS) --studies $(DEMO_INFER_STUDIES) --out $(DEMO_OVERLAY)
	@echo "synthetic dataset: $(DATA) (datalist.json, studies/*.dcm, labels/*.json); contact sheet: $(DATA)/contact_sheet.png"
	@echo "chest detector: $(MODELS)/chest_detector.pt; MaligNet: $(MODELS)/model.pt (best validation mean F1 at its own threshold, stored in model.json), $(MODELS)/latest_checkpoint_epoch=*.pt (resume)"
	@echo "evaluation on the test split: runs/evaluation/ (metrics.md, metrics.json, per_image.csv, confusion_matrix.png, froc.png)"
	@echo "whole-body inference: runs/inference/<study>/ (report.json, overlay.png, *_instances.nii.gz, seg_*.dcm)"
	@echo "MLflow runs (training losses, val_mean_f1, test metrics, hyper-parameters, model.pt): runs/mlruns.db -- view with"
	@echo "  $(VENV)/bin/mlflow ui --backend-store-uri sqlite:///runs/mlruns.db --host 127.0.0.1"
	@echo
	@$(PY) scripts/summarize_evaluation.py runs/evaluation/metrics.json --overlay $(DEMO_OVERLAY)

lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# The suite runs in TEST_WORKERS processes (pytest-xdist), each test file whole in one of them (its module
# fixtures are built once), every process and the trainings it starts on one thread: two one-thread workers
# on two cores finish sooner than one two-thread process, as most of the suite is small convolutions.
TEST_WORKERS ?= 2
test: $(VENV)/.installed $(LABEL_VENV)/.installed lint
	OMP_NUM_THREADS=1 $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

clean:
	rm -rf $(VENV) $(LABEL_VENV) $(DATA) $(MODELS) runs
