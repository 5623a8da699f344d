"""What the tests of CLIP's downstream tasks (zero_shot, retrieval, embed) share: one tiny random
HF CLIPModel saved with save_pretrained and converted by `tp convert --from hf` in a subprocess
(once per test session), real images (scikit-image's and Fashion-MNIST's), and the reference
embeddings from the HF model itself."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from clip_models import TEXT, hf_clip, save_hf_clip  # noqa: E402

FASHION = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                   "sneaker", "bag", "ankle boot")
SKIMAGE = {"astronaut": "an astronaut in a white suit", "coffee": "a cup of coffee on a saucer",
           "chelsea": "a tabby cat", "camera": "a man with a camera on a tripod"}
_CACHE: dict[str, dict[str, Path]] = {}


def clip_checkpoint(tmp_path_factory: Any) -> dict[str, Path]:
    """{hf, tp}: the HF folder and its tp checkpoint (`tp convert --from hf`, through the
    command line in this process), made once per session."""
    key = str(tmp_path_factory.getbasetemp())
    if key not in _CACHE:
        root = tmp_path_factory.mktemp("clip-tasks")
        src = save_hf_clip(root / "hf", hf_clip(seed=1))
        code, printed = tp("convert", str(src), "--from", "hf", "--out", str(root / "tp"))
        assert code == 0, printed
        _CACHE[key] = {"hf": src, "tp": root / "tp"}
    return _CACHE[key]


def fashion(n: int) -> tuple[list[np.ndarray], list[str]]:
    """The first n test images of Fashion-MNIST (28x28 grey) and their class names."""
    def idx(name: str) -> np.ndarray:
        data = gzip.decompress((FASHION / name).read_bytes())
        dims = data[3]
        shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
        return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)

    images = idx("t10k-images-idx3-ubyte.gz")[:n]
    labels = idx("t10k-labels-idx1-ubyte.gz")[:n]
    return list(images), [FASHION_CLASSES[int(y)] for y in labels]


def skimage_pictures() -> dict[str, np.ndarray]:
    from skimage import data

    return {name: getattr(data, name)() for name in SKIMAGE}


def save_png(path: Path, pixels: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def hf_model(folder: Path) -> Any:
    from transformers import CLIPModel

    return CLIPModel.from_pretrained(str(folder)).eval()


def hf_image_embeds(folder: Path, paths: list[Path]) -> torch.Tensor:
    """(N, P) CLIP's get_image_features of the files through the folder's CLIPProcessor,
    normalised."""
    from PIL import Image
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(folder))
    pixels = processor(images=[Image.open(p).convert("RGB") for p in paths],
                       return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = hf_model(folder).get_image_features(pixel_values=pixels)
    feats = out if isinstance(out, torch.Tensor) else out.pooler_output
    return torch.nn.functional.normalize(feats, dim=-1)


def hf_text_embeds(folder: Path, texts: list[str]) -> torch.Tensor:
    """(N, P) CLIP's get_text_features of the texts (padded; cut to the model's length keeping
    <|endoftext|>), normalised."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(folder))
    inputs = processor(text=texts, padding=True, truncation=True,
                       max_length=TEXT["max_position_embeddings"], return_tensors="pt")
    with torch.no_grad():
        out = hf_model(folder).get_text_features(input_ids=inputs["input_ids"],
                                                 attention_mask=inputs["attention_mask"])
    feats = out if isinstance(out, torch.Tensor) else out.pooler_output
    return torch.nn.functional.normalize(feats, dim=-1)


def hf_scale(folder: Path) -> float:
    return float(hf_model(folder).logit_scale.detach().exp())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def tp(*args: str) -> tuple[int, str]:
    """`tp ARGS` in this process (the CLI as a user types it): (exit code, stdout + stderr)."""
    import contextlib
    import io

    from tpcli.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue() + err.getvalue()


def infer(*args: str) -> tuple[int, str]:
    """`tp infer ARGS` in this process: (exit code, stdout + stderr)."""
    return tp("infer", *args)
