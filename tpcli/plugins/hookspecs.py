"""Every hook tp calls. These docstrings are the plugin author's manual.

A plugin is a Python module (or object) with functions named after these hooks and decorated with
`tpcli.hookimpl`. Publish it under the entry-point group ``tp`` in your distribution's
``pyproject.toml``::

    [project.entry-points.tp]
    myplugin = "my_package.plugin"

Registration hooks receive a ``register`` callback: call it once per thing you provide. They must
be cheap: do not build models or read files in them. The things you register may be classes or
lazy ``"package.module:Attribute"`` strings, which tp imports only when the name is used.

The six verb hooks (``tp_preprocess``, ``tp_pretrain``, ``tp_finetune``, ``tp_infer``,
``tp_convert``, ``tp_zoo``) are ``firstresult`` and take one typed request from
``tpcli.plugins.requests``: the core ships default implementations (marked ``trylast``) and a plugin may
replace them by returning a non-None value, or wrap them with ``hookwrapper=True``. Observer
hooks (``tp_on_*``) are called on every plugin and their return values are ignored; loggers are
plugins built on them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:
    from tpcli.plugins.requests import (ConvertRequest, FinetuneRequest, InferRequest,
                                PreprocessRequest, PretrainRequest, ZooRequest)

hookspec = pluggy.HookspecMarker("tp")
hookimpl = pluggy.HookimplMarker("tp")


@hookspec
def tp_register_modules(register: Callable[[str, str, Any], None]) -> None:
    """Register model modules: ``register(kind, name, cls)``.

    ``kind`` is one of ``embedding``, ``encoder``, ``decoder``, ``target``, ``pooling``. ``name``
    is what a recipe writes (``word``, ``transformer``, ``mlm``): lower case, unique per kind
    across every installed plugin (a clash is an error naming both plugins). ``cls`` is an
    ``nn.Module`` subclass (or a lazy ``"pkg.mod:Class"`` string) with a class attribute
    ``Config``: a ``tpcli.model.module.ModuleConfig`` subclass (pydantic, extra keys forbidden)
    whose fields are the module's options, each with a default and a description. tp builds it
    as ``cls(config, ctx)`` where ``ctx`` is a ``tpcli.model.module.BuildContext``.

    Forward contracts, by kind (shapes: B batch, T time, H hidden, E ``ctx.embed_dim``: the
    embedding width, H unless ``model.embedding_size`` factorizes it as ALBERT does):

    - embedding: ``forward(inputs: dict[str, Tensor]) -> (B, T, E)``; it declares the batch
      keys it reads as ``self.inputs``, a tuple of ``tpcli.data.batch.BatchKey`` (name, dtype,
      per-example shape, padding, optional), e.g. ``input_ids`` ("T",) for ``word``,
      ``pixel_values`` (3, 224, 224) for ``patch``. tp checks that a recipe's data provides
      them and the contract test (``tpcli.testing.contract``) builds the module's test inputs
      from them. The outputs of the embeddings of a stack are summed in the recipe's order (and
      projected to H when E != H); an embedding whose ``forward`` also takes ``sequence`` gets
      the (B, T, E) sum of the embeddings listed before it, whose length it sizes itself by
      (``pos`` after ``patch``: T = 1 + patches, the class token included). An embedding that
      owns the vocabulary matrix exposes it as ``word_weight`` (V, E) so targets can tie to it.
      An embedding that makes a sequence of its own length (speech: convolutions subsample the
      frames) defines ``output_mask(inputs) -> (B, T) bool`` (True = real position), which the
      encoder and a decoder's cross-attention then use instead of the batch's attention_mask.
    - encoder: ``forward(x (B, T, H), mask (B, T) bool, True = real token) -> (B, T, H)``; one
      whose ``forward`` also takes ``queries`` (B, n) positions returns only those outputs
      (B, n, H), and tp passes each row's first real token when every target reads only that.
    - decoder: ``forward(x, mask, memory, memory_mask) -> (B, T, H)``.
    - pooling: ``forward(hidden (B, T, H), mask (B, T)) -> (B, H)``.
    - target: ``forward(features: tpcli.model.module.Features, batch) -> tpcli.model.module.TargetOutput``
      (a scalar loss plus metrics), ``predict(features, batch) -> Tensor`` (logits), and
      optionally ``tie_weights(get_weight)`` to share the word embedding, ``inputs`` (the
      label keys it reads, as BatchKeys) and ``contract_labels(batch) -> batch`` (labels with
      structure the contract test cannot draw at random); ``reads_first_token = True`` when it
      reads only each sequence's first real token (first pooling: the last layer may then skip
      the rest), or ``read_positions(batch) -> (B, T') bool`` (T' <= T) naming which of the
      first T' positions its loss reads, None for all (MLM: its masked tokens; NSP: the first),
      or ``tpcli.model.module.LastPositions((B, T'))`` for the last T' (MIM: masked patches):
      when every target names them, training computes the last layer at those only and the
      others' hidden states are zeros; ``reads_pooled_only = True`` when it reads each stream's
      pooled vector alone (CLIP's clr: a pooling with ``read_position(mask, B, T) -> (B,)``,
      first or last, then lets training compute each stream's last layer there only). Its
      Config derives from ``tpcli.model.module.TargetConfig`` (which adds the multi-task
      ``weight``).
    """


@hookspec
def tp_register_tokenizers(register: Callable[[str, Any], None]) -> None:
    """Register tokenizers: ``register(name, cls)``.

    A tokenizer is the preprocessing a checkpoint carries beside its weights; a recipe without
    text names none (``data.tokenizer`` is optional). ``cls`` implements
    ``tpcli.model.module.Tokenizer``: ``cls.Config`` (pydantic options, as for modules),
    ``cls(config, base_dir)`` where relative paths in the options resolve against ``base_dir``
    (the recipe folder), ``vocab_size``, ``special_ids`` (``pad``, ``cls``, ``sep``, ``mask``,
    ``unk`` where they exist; ``{}`` for an image tokenizer), ``fingerprint()`` (a stable hash of
    the vocabulary, stored in every dataset so a mismatch is caught), ``save(dir)`` and the
    classmethod ``from_saved(dir)`` (checkpoints store the tokenizer with ``save`` and rebuild it
    with ``from_saved``). A text tokenizer adds ``encode_batch(texts) -> list[list[int]]`` and
    ``decode(ids) -> str``, and may add ``encode_batch_arrays(texts) -> (ids, counts)`` (every
    text's ids back to back in one int array, and each text's count: ``tp preprocess`` then
    skips the lists of Python ints); an image tokenizer (BEiT's visual tokens, tp-vision's ``kmeans``)
    adds ``encode_images(pixels (B, C, H, W)) -> (B, N)``.
    """


@hookspec
def tp_register_processors(register: Callable[[str, Any], None]) -> None:
    """Register data processors: ``register(name, cls)``.

    A processor decides how a corpus is read at preprocess time and how training examples are
    built from the stored data at load time. ``cls`` implements ``tpcli.data.Processor``:
    ``Config`` (pydantic), ``cls(config)``, ``corpus_format`` and ``dataset``.
    ``corpus_format`` ``"sentences"`` (one sentence per line, blank line between documents),
    ``"documents"`` (one document per line) or ``"tsv"`` (one ``label<TAB>text[<TAB>text_b]``
    example per line, its fields the document's sequences): the core tokenizes the text into a
    token dataset (``tpcli.data.format``). ``"records"``: the processor reads its corpus itself
    (image folders, audio manifests) through ``fields()`` (stored arrays: name -> (dtype,
    shape), None for a size that varies), ``records(corpus, tokenizer, workers)`` (dicts of
    arrays) and optionally ``contents()`` (facts for meta.json), into an array dataset
    (``tpcli.data.arrays``: any dtype and shape per example).
    ``dataset(store, tokenizer, seed)`` (``store`` the dataset's reader; ``tokenizer`` None for
    a recipe without one) returns a map-style torch Dataset (subclass
    ``tpcli.data.dataset.ExampleDataset``) whose items are unpadded dicts of tensors and which
    declares its ``batch_keys()`` (``tpcli.data.batch.BatchKey``: name, dtype, per-example
    shape, pad value, the mask collate adds, the ``unit`` throughput counts: tokens, images,
    frames); ``collate`` pads and stacks by them. Masking and augmentation are done there,
    dynamically, from the seed, the epoch (``set_epoch``) and the index. An encoder-decoder
    processor may add ``seq2seq_layout(special_ids) -> (decoder start id, ids before a source,
    ids after it)`` so that generation and the ``text2text`` task lay inputs out as it trains.
    """


@hookspec
def tp_register_tasks(register: Callable[[str, Any], None]) -> None:
    """Register downstream tasks for `tp finetune` / `tp infer`: ``register(name, cls)``.

    ``cls`` implements ``tpcli.downstream.tasks.Task``: ``Config`` (pydantic, ``tpcli.downstream.tasks.TaskConfig``),
    ``metrics`` (names; the first selects the best checkpoint), ``cls(config, variant)`` (the
    part after a slash: ``--task glue/sst2`` is task ``glue``, variant ``sst2``), ``load``,
    ``fit`` / ``check`` / ``state`` / ``restore`` (the label list), ``target`` (the model's
    target section replacing the pre-training targets), ``head_sources``, ``encode``,
    ``batch_keys(rows, tokenizer)`` (the encoded rows' BatchKeys), ``decode`` and ``evaluate``;
    optionally ``train_dataset(examples, seed)`` for a training set augmented per (seed, epoch,
    index) (images), ``predict(model, examples, rows, tokenizer, device, batch_size, precision)``
    for a task that runs the model itself (generation, CLIP's towers), and ``write(predictions,
    out)`` for a task whose ``tp infer`` output is not one JSONL file (embeddings as .npy). A
    task's head is an ordinary registered target with a ``predict`` method. ``tp infer CHECKPOINT
    --task NAME`` runs a task on a checkpoint that was not fine-tuned for it (zero-shot use).
    """


@hookspec
def tp_register_converters(register: Callable[[str, Any], None]) -> None:
    """Register Hugging Face converters: ``register(name, converter)``.

    ``converter`` is a ``tpcli.convert.Converter``: a declarative key map (renames, QKV merges,
    transposes, reshapes, tied names; ``config_rules`` when the map depends on the config) between
    a tp model built from a recipe and a ``transformers`` architecture, plus the config
    translation both ways (``config_to_recipe``, ``recipe_to_config``), the data processor of a
    converted checkpoint and the HF output fields ``tp convert --check`` compares. Names are the
    HF ``model_type`` (``bert``, ``roberta``, ``xlm-roberta``, ...): ``tp convert --from hf``
    picks the converter by config.json's model_type, ``--to hf`` the first whose
    ``recipe_to_config`` accepts the model.
    """


@hookspec
def tp_register_commands(register: Callable[[str, Any], None]) -> None:
    """Register verbs of the `tp` command: ``register(name, command)``.

    ``command`` is a function written for Typer (its parameters are the verb's arguments and
    options, its docstring the help; it becomes ``tp NAME``) or a ``typer.Typer`` app (its
    commands become ``tp NAME SUB``), or a lazy "pkg.mod:attr" string of one. ``tp --help`` and
    ``tp plugins`` list it; it runs under tp's own handling: a ``TpError`` it raises is one
    paragraph and exit code 1, ``--debug`` shows the traceback, Ctrl-C exits 130. A name that is
    one of tp's own verbs is refused (tp's verb stays, a one-line warning names the plugin);
    two plugins registering one name are a clash, and running it names both.
    """


@hookspec
def tp_register_loggers(register: Callable[[str, Any], None]) -> None:
    """Register loggers a run can write to besides metrics.jsonl: ``register(name, cls)``.

    A recipe chooses them by name in ``pretrain.loggers`` / ``finetune.loggers`` (or
    ``--logger NAME`` on ``tp pretrain`` / ``tp finetune``); ``tp modules logger`` lists them.
    ``cls`` (or a lazy "pkg.mod:Class" string: a logger's package, TensorBoard or W&B, must not
    be imported when tp starts) may define the classmethod ``check()``, called before the run
    folder is written, which raises a ``TpError`` naming the install command when the logger
    cannot run (its package is missing). On rank 0 only, tp builds ``cls()`` for each training
    segment (a run, a resume, a fine-tuning seed) and calls the methods it defines, named and
    called as the observer hooks: ``tp_on_train_start(run)``, ``tp_on_log(step, metrics)``,
    ``tp_on_step(step, seconds)``, ``tp_on_checkpoint(step, path)``,
    ``tp_on_train_end(summary)``; then ``close()`` however the segment ended (finished,
    failed, interrupted). The first exception a logger raises (a full disk, a service gone) is
    reported in one line on stderr and the logger is disabled; training goes on.
    """


@hookspec
def tp_register_recipe_dirs(register: Callable[[str], None]) -> None:
    """Register folders that hold built-in recipes: ``register(path)``.

    Each sub-folder with a ``recipe.yaml`` becomes a recipe usable by name
    (``tp pretrain NAME``) and listed by ``tp recipes``.
    """


@hookspec
def tp_register_zoo_cards(register: Callable[[str], None]) -> None:
    """Register zoo cards: ``register(path)``, a folder of ``<name>.yaml`` cards or one card file.

    A card (``tpcli.zoo.card.Card``) names a published weight, its ``source`` URL and pinned
    ``revision``, its files with size and sha256, its format (``hf`` or ``tp``), license, paper
    and results; ``tp zoo list`` shows it and ``tp zoo pull NAME`` fetches it. A name or alias
    defined by two cards is an error naming both files.
    """


@hookspec
def tp_register_zoo_sources(register: Callable[[str, Any], None]) -> None:
    """Register zoo sources: ``register(scheme, cls)`` for the URL scheme of a card's ``source``.

    ``cls(card)`` implements ``tpcli.zoo.sources.Source``: ``resolve(revision) -> key`` (a commit
    where the source has them), ``describe(key, paths)`` (size and hash per file, as far as
    known), ``fetch(path, key, folder, advance, verify) -> local path`` (download, resuming a
    partial file; call ``verify(file, sha256_or_None)`` before the file becomes visible and delete
    it if that raises), ``cached(path, key, folder)`` and ``discard(local)``. The core registers
    ``hf`` and, through fsspec, ``https``, ``http``, ``s3``, ``gs`` and ``file``.
    """


@hookspec(firstresult=True)
def tp_preprocess(request: "PreprocessRequest") -> Any:
    """Run ``tp preprocess``: read ``request.corpus``, tokenize, write the dataset to
    ``request.out``; return a summary dict (counts, paths). The core's default implementation runs
    last; return non-None to replace it."""


@hookspec(firstresult=True)
def tp_pretrain(request: "PretrainRequest") -> Any:
    """Run ``tp pretrain``: train the recipe's model on ``request.data``, writing checkpoints to
    ``request.out``; return a summary dict (steps, final loss, checkpoint path). The core's
    default implementation runs last; return non-None to replace it."""


@hookspec(firstresult=True)
def tp_finetune(request: "FinetuneRequest") -> Any:
    """Run ``tp finetune`` (``request`` a ``tpcli.plugins.requests.FinetuneRequest``): train a task's
    head on a pre-trained model and return the results (dev metrics, mean and std over seeds).
    The core's default implementation runs last; return non-None to replace it."""


@hookspec(firstresult=True)
def tp_infer(request: "InferRequest") -> Any:
    """Run ``tp infer`` (``request`` a ``tpcli.plugins.requests.InferRequest``): write a fine-tuned
    checkpoint's predictions for an input file; return a summary."""


@hookspec(firstresult=True)
def tp_convert(request: "ConvertRequest") -> Any:
    """Run ``tp convert``: ``request.direction`` is ``"to_hf"`` (``request.source`` a tp run or
    checkpoint folder) or ``"from_hf"`` (a Hugging Face folder or Hub id); write the result to
    ``request.out`` atomically and, with ``request.check``, fail above ``request.tolerance``.
    Return a summary dict (converter, architecture, tensors, max_abs_diff). The core's default
    implementation runs last; return non-None to replace it."""


@hookspec(firstresult=True)
def tp_zoo(request: "ZooRequest") -> Any:
    """Run ``tp zoo`` (``request`` a ``tpcli.plugins.requests.ZooRequest``: ``action`` is list, info, pull,
    verify, rm, path or lock) and return its result (a list of rows for list, a dict otherwise).
    The core's default implementation runs last; return non-None to replace it."""


@hookspec
def tp_on_train_start(run: dict[str, Any]) -> None:
    """Called once before the first step of a segment (a new run or a resume), on rank 0 only.
    ``run`` holds ``out`` (run folder), ``steps`` (the last step), ``start_step`` (non-zero on
    resume), ``params`` (parameter count), ``recipe`` (the validated recipe as a dict),
    ``resolved`` (the recipe as it runs, every default filled in: ``tp recipes show``),
    ``progress`` (whether a live progress bar was asked for), ``strategy`` (single, ddp, fsdp or
    deepspeed) and ``world_size`` (processes)."""


@hookspec
def tp_on_log(step: int, metrics: dict[str, float]) -> None:
    """Called every ``pretrain.log_every`` steps with scalar metrics: ``loss``, each target's loss
    and metrics, ``lr``, ``grad_norm``, ``<unit>_per_s`` (``tokens_per_s``, ``images_per_s``:
    the unit the data's batch keys declare), ``steps_per_s``, ``mfu`` (at most 1),
    ``peak_tflops`` (the peak MFU is measured against, raised when a window beats it),
    ``elapsed_s``. Fine-tuning also calls it after each evaluation, with only
    ``eval.<dev set>.<metric>`` keys (``eval.dev.accuracy``): a logger tells the two apart by
    that prefix."""


@hookspec
def tp_on_step(step: int, seconds: float) -> None:
    """Called after every optimizer step (no metrics: reading them would sync the device):
    ``step`` just finished, ``seconds`` since this segment's training loop began (model and data
    set-up excluded). Progress bars advance here; a logger measures its pace from it."""


@hookspec
def tp_on_checkpoint(step: int, path: str) -> None:
    """Called after a checkpoint has been written (atomically) to ``path``."""


@hookspec
def tp_on_train_end(summary: dict[str, Any]) -> None:
    """Called once when training finishes (not when it is killed)."""
