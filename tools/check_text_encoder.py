"""One-off check of the Flax text encoders against PyTorch/transformers (a tool, not a test).

Run it with jaxrec's Python; it runs the reference half with a second Python that has torch
and transformers (e.g. a throwaway venv: pip install torch==2.13.0 transformers safetensors):
  python tools/check_text_encoder.py --torch_python=$REFVENV/bin/python \
      [--models=minilm,mpnet] [--golden=tests/encoders/golden_minilm.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

SENTENCES = [
    "A cat is sitting on the mat.",
    "Moisturizing face cream with SPF 30 for dry skin.",
    "The stock market fell sharply today.",
    "",
    "Title: OPI Nail Lacquer, Simmer and Shimmer, 0.5-Fluid Ounce. Categories: OPI | Makeup | "
    "Nails | Nail Polish. Keywords: nail lacquer simmer and shimmer.",
    "Crème brûlée, café au lait ☕ and 日本語 text.",
    " ".join(["a very long product description that goes on"] * 30),  # > 128 tokens: truncated
    "running shoes",
]
GOLDEN_COUNT, GOLDEN_DIMS = 3, 8
BUCKET_RANGE = 600


def reference(model_dir: str, kind: str, max_length: int, out: str) -> None:
  """Torch half: transformers BertModel/MPNetModel + mean pooling + normalize -> npz."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  cls = transformers.BertModel if kind == "minilm" else transformers.MPNetModel
  model = cls.from_pretrained(model_dir, attn_implementation="eager").eval().float()
  tok = transformers.AutoTokenizer.from_pretrained(model_dir)
  batch = tok(SENTENCES, padding=True, truncation=True, max_length=max_length,
              return_tensors="pt")
  with torch.no_grad():
    hidden = model(input_ids=batch["input_ids"],
                   attention_mask=batch["attention_mask"]).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    normed = torch.nn.functional.normalize(pooled, p=2, dim=1)
  extra = {}
  if kind == "mpnet":
    rel = torch.arange(-BUCKET_RANGE, BUCKET_RANGE + 1)
    extra["buckets"] = model.encoder.relative_position_bucket(rel).numpy()
  np.savez(out, pooled=pooled.numpy(), normed=normed.numpy(),
           input_ids=batch["input_ids"].numpy(), mask=batch["attention_mask"].numpy(),
           torch=np.array(torch.__version__), transformers=np.array(transformers.__version__),
           **extra)


def compare(args) -> None:
  """JAX half: encode the same sentences, run the torch half, report differences."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jaxrec.encoders import mpnet  # pylint: disable=g-import-not-at-top
  from jaxrec.encoders import text  # pylint: disable=g-import-not-at-top
  for name in args.models.split(","):
    enc = text.load_text_encoder(name, max_length=args.max_length)
    with tempfile.TemporaryDirectory() as tmp:
      out = os.path.join(tmp, "ref.npz")
      subprocess.run([args.torch_python, os.path.abspath(__file__), "--reference",
                      f"--model_dir={enc.model_dir}", f"--kind={name}",
                      f"--max_length={args.max_length}", f"--out={out}"], check=True)
      ref = dict(np.load(out))
    ours = enc.encode(SENTENCES, batch_size=4, progress=False)
    pooled = dataclasses.replace(enc, normalize=False).encode(SENTENCES, batch_size=4,
                                                              progress=False)
    ids = enc.tokenize(SENTENCES)
    ref_ids = [list(r[m.astype(bool)]) for r, m in zip(ref["input_ids"], ref["mask"])]
    print(f"== {name} ({enc.model_dir}); torch {ref['torch']}, transformers "
          f"{ref['transformers']}")
    print(f"  tokens identical: {ids == ref_ids}; lengths {[len(i) for i in ids]}")
    print(f"  max |normalized - torch|: {np.abs(ours - ref['normed']).max():.3g}")
    print(f"  max |mean pooled - torch|: {np.abs(pooled - ref['pooled']).max():.3g}")
    print(f"  norms: {np.round(np.linalg.norm(ours, axis=1), 7).tolist()}")
    if "buckets" in ref:
      rel = jnp.arange(-BUCKET_RANGE, BUCKET_RANGE + 1)
      same = np.array_equal(np.asarray(mpnet.relative_position_bucket(rel)), ref["buckets"])
      print(f"  relative_position_bucket identical on [-{BUCKET_RANGE}, {BUCKET_RANGE}]: {same}")
    if name == "minilm" and args.golden:
      rows = [{"text": SENTENCES[i],
               "first_dims": [round(float(x), 6) for x in ref["normed"][i, :GOLDEN_DIMS]],
               "norm": round(float(np.linalg.norm(ref["normed"][i])), 6),
               "pooled_norm": round(float(np.linalg.norm(ref["pooled"][i])), 6)}
              for i in range(GOLDEN_COUNT)]
      golden = {"model": "sentence-transformers/all-MiniLM-L6-v2",
                "max_length": args.max_length,
                "source": f"transformers {ref['transformers']} BertModel + mean pooling + "
                          f"normalize, torch {ref['torch']} CPU float32",
                "sentences": rows}
      with open(args.golden, "w") as f:
        json.dump(golden, f, indent=2, ensure_ascii=False)
        f.write("\n")
      print(f"  wrote {args.golden}")


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--torch_python", default=None,
                      help="a python with torch + transformers (e.g. a throwaway venv: "
                           "pip install torch==2.13.0 transformers safetensors tokenizers)")
  parser.add_argument("--models", default="minilm,mpnet")
  parser.add_argument("--max_length", type=int, default=128)
  parser.add_argument("--golden", default=None, help="write the MiniLM golden json here")
  parser.add_argument("--reference", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--model_dir", help=argparse.SUPPRESS)
  parser.add_argument("--kind", help=argparse.SUPPRESS)
  parser.add_argument("--out", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.reference:
    reference(args.model_dir, args.kind, args.max_length, args.out)
  elif not args.torch_python:
    parser.error("--torch_python is required: the reference runs in an interpreter that "
                 "has torch and transformers.")
  else:
    compare(args)


if __name__ == "__main__":
  sys.exit(main())
