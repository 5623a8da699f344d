'''The project files `tp plugins new` writes around the modules: pyproject.toml, the plugin
module with its register hooks, README.md, tests/conftest.py and the example recipe
(templates: `__DIST__`, `__PKG__`, `__NAME__`, `__PLUGIN__` are replaced when written).
'''

PYPROJECT = '''[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "__DIST__"
version = "0.1.0"
description = "A tp plugin: __SUMMARY__"
readme = "README.md"
requires-python = ">=3.10"
dependencies = [__DEPS__]

# This table is what makes tp find the plugin: entry-point group `tp`, plugin `__PLUGIN__`.
[project.entry-points.tp]
__PLUGIN__ = "__PKG__.plugin"

[project.optional-dependencies]
test = ["pytest>=8"]

[tool.setuptools.packages.find]
include = ["__PKG__", "__PKG__.*"]
namespaces = false

[tool.pytest.ini_options]
testpaths = ["tests"]
pythonpath = ["."]  # the package imports from the source tree before `pip install`
'''

INIT = '''"""__DIST__: a tp plugin (see README.md)."""

__version__ = "0.1.0"
'''

PLUGIN_HEAD = '''"""The plugin object tp loads through the `tp` entry point (pyproject.toml).

Keep it cheap to import: it registers lazy "package.module:Attribute" strings, so torch and the
module code load only when a recipe names one of them.
"""

from __future__ import annotations

from typing import Callable

from tpcli import hookimpl
'''

# hook name, register call per kind
HOOKS = {
    "embedding": ("tp_register_modules", "register(\"embedding\", \"__NAME__\", \"__REF__\")"),
    "encoder": ("tp_register_modules", "register(\"encoder\", \"__NAME__\", \"__REF__\")"),
    "target": ("tp_register_modules", "register(\"target\", \"__NAME__\", \"__REF__\")"),
    "tokenizer": ("tp_register_tokenizers", "register(\"__NAME__\", \"__REF__\")"),
    "processor": ("tp_register_processors", "register(\"__NAME__\", \"__REF__\")"),
    "task": ("tp_register_tasks", "register(\"__NAME__\", \"__REF__\")"),
    "converter": ("tp_register_converters", "register(\"__NAME__\", \"__REF__\")"),
}

CONFTEST = '''\
"""tp's module contract over this distribution's modules (build, forward, backward, state
dict and Config round trips): the checks tp's built-ins pass, collected as
contract[CHECK-KIND-NAME]."""

from tpcli.testing.contract_plugin import pytest_collect_file  # noqa: F401
'''

VOCAB = "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz",
                    *[f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"], "the", "a", "of", "to",
                    "and", "in", "is", "it", ".", ",", "!", "?"]) + "\n"

CORPUS = """the cat sat on the mat and it is happy.
a dog is in the park, and the park is big!
to be or not to be, that is the question.
"""

README = '''# __DIST__

A [tp](https://github.com/) plugin. It registers:

__TABLE__

## Install and test

```bash
pip install -e '.[test]'     # into the environment where tp (tpcli) is installed
pytest -q                    # this package's tests + tp's module contract over its modules
tp plugins                   # lists __PLUGIN__ (__DIST__) and what it registered
tp modules                   # lists its modules with their options
```

`tests/conftest.py` holds one line that runs tp's module contract (build, forward, backward,
state dict and Config round trips) over every module this distribution registers.

## Use it in a recipe

`recipes/__RECIPE__/recipe.yaml` uses it (with tp's built-in `tp-text` and `tp-encoders`
modules for the rest):

```yaml
__RECIPE_YAML__```

```bash
tp recipes show recipes/__RECIPE__          # validated, every default filled in, parameter count
tp preprocess recipes/__RECIPE__ --corpus recipes/__RECIPE__/corpus.txt --out data
tp pretrain recipes/__RECIPE__ --data data --out run pretrain.steps=20
```
__EXTRA__
## Publish

```bash
pip install build twine
python -m build                 # dist/__PKG__-0.1.0.tar.gz and the wheel
twine upload dist/*             # PyPI; then anyone: pip install __DIST__
```

tp finds the plugin through the `[project.entry-points.tp]` table of pyproject.toml; nothing is
configured in tp itself. `TP_LOAD_PLUGINS=__PLUGIN__` loads it alone, `TP_LOAD_PLUGINS=` none.
'''

TASK_USE = '''
## Fine-tune with the task

```bash
printf 'pos\\tgood film\\nneg\\tbad film\\n' > train.tsv
printf 'pos\\tfine film\\n' > dev.tsv
tp finetune --init run --task __TASK__ --train train.tsv --dev dev.tsv --out ft
```
'''

CONVERTER_USE = '''
## Convert a checkpoint

```bash
tp convert HF_FOLDER --from hf --out tp-checkpoint   # config.json says model_type: __CONV__
```
'''
