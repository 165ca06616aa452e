"""Sweep specs: the text format of a sweep's runs, parsed into `RunSpec`s (used by `jaxrec.sweep`).

Spec format (a text file, e.g. gin_configs/sweeps/baselines_smoke.txt), one run per line:

  # comment (a '#' outside quotes starts one)
  NAME: FILE.gin [FILE.gin ...] [--gin.BINDING=VALUE ...] [--seeds=0,1] [--seed_binding=B]
  --gin_file=FILE.gin --gin.BINDING=VALUE --seeds=0,1,2 --seed_binding=BINDING

A line starting with `--` holds options shared by every run of the file (wherever
it stands). Gin files of a run come first, then the shared ones, then the command
line's (later files override earlier ones); bindings: the shared ones, then the
run's, then the command line's (later bindings win; bindings beat files). VALUEs are
gin literals written as in a gin file (`--gin.DatasetConfig.name="beauty"`); spaces
are allowed inside quotes and brackets (`--gin.EvalConfig.ks=(1, 10)`). With seeds,
each seed is its own run folder and `--seed_binding` (comma-separated names, e.g.
`baselines_job.evaluate_baselines.seed` or a macro `SEED`) receives it. A line ending in
a backslash continues on the next.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import pathlib
import re
import shlex
from typing import List, Optional, Sequence, Tuple

from jaxrec.data.errors import DataError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_RUN_LINE = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9_.\-]*)\s*:(.*)\Z", re.S)
_SPEC_FIX = ("write `NAME: FILE.gin ... --gin.BINDING=VALUE` (see the header of "
             "gin_configs/sweeps/baselines_smoke.txt).")


class SpecError(DataError):
  """A sweep spec (file, line or flag) is wrong; the message says where and the fix."""


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One run of a sweep.

  Attributes:
    name: the run folder's name (letters, digits, `_.-`).
    gin_files: in order; later ones override earlier ones.
    bindings: "NAME=VALUE" with VALUE a gin literal, in order (later ones win).
    seeds: one run folder per seed (`seed_<s>`); () = one run, no seed binding.
    seed_bindings: the bindings (or macros) that receive the seed.
  """
  name: str
  gin_files: Tuple[str, ...] = ()
  bindings: Tuple[str, ...] = ()
  seeds: Tuple[int, ...] = ()
  seed_bindings: Tuple[str, ...] = ()




def split_line(line: str, where: str = "<spec>") -> List[str]:
  """Splits a spec line at whitespace outside quotes and brackets; drops a # comment.

  Quotes are kept (a binding's value is a gin literal); a token that is quoted as
  a whole (a file name with spaces) is unquoted by `parse_tokens`.
  """
  tokens, current, quote, depth, escaped = [], "", None, 0, False
  for c in line:
    if quote:
      quote = None if c == quote and not escaped else quote
      escaped = c == "\\" and not escaped
    elif c == "#":
      break
    elif c.isspace() and depth <= 0:
      tokens, current = tokens + [current] * bool(current), ""
      continue
    else:
      quote = c if c in "'\"" else None
      depth += (c in "([{") - (c in ")]}")
    current += c
  if quote or depth > 0:
    raise SpecError(f"unclosed {'quote' if quote else 'bracket'} in {line.strip()!r}",
                    path=where, fix="close it; values are gin literals, e.g. "
                    "--gin.X=\"a b\" or --gin.evaluation.EvalConfig.ks=(1, 10).")
  return tokens + [current] * bool(current)


def parse_binding(text: str, where: str = "<spec>") -> str:
  """"NAME=VALUE" or "NAME = VALUE" -> "NAME=VALUE" (VALUE kept as written)."""
  name, eq, value = text.partition("=")
  name, value = name.strip(), value.strip()
  if not eq or not name or not value or " " in name:
    raise SpecError(f"bad binding {text!r}", path=where,
                    fix="write --gin.NAME=VALUE, e.g. --gin.evaluation.EvalConfig.num_bootstrap=10.")
  return f"{name}={value}"


def parse_seeds(text: str, where: str = "<spec>") -> Tuple[int, ...]:
  """"0,1,2" -> (0, 1, 2)."""
  try:
    seeds = tuple(int(s) for s in text.split(",") if s.strip())
  except ValueError:
    raise SpecError(f"bad seeds {text!r}", path=where,
                    fix="write integers separated by commas, e.g. --seeds=0,1,2.") from None
  if len(set(seeds)) != len(seeds):
    raise SpecError(f"repeated seed in {text!r}", path=where, fix="list each seed once.")
  return seeds


def parse_seed_bindings(text: str, where: str = "<spec>") -> Tuple[str, ...]:
  """"A,B" -> ("A", "B"): the bindings (or macros) that receive a run's seed."""
  names = tuple(n.strip() for n in text.split(",") if n.strip())
  if not names or not all(re.fullmatch(r"[A-Za-z_][\w.]*(/[\w.]+)*", n) for n in names):
    raise SpecError(f"bad seed binding {text!r}", path=where,
                    fix="name bindings or macros, e.g. "
                        "--seed_binding=baselines_job.evaluate_baselines.seed or --seed_binding=SEED.")
  return names


def parse_tokens(tokens: Sequence[str], where: str = "<spec>") -> dict:
  """A run's (or the shared) tokens -> {gin_files, bindings, seeds, seed_bindings}.

  seeds / seed_bindings are None when the tokens do not set them.
  """
  out = dict(gin_files=[], bindings=[], seeds=None, seed_bindings=None)
  for token in tokens:
    if token.startswith("--gin."):
      out["bindings"].append(parse_binding(token[len("--gin."):], where))
    elif token.startswith("--gin_file="):
      out["gin_files"].append(_unquote(token[len("--gin_file="):]))
    elif token.startswith("--seeds="):
      out["seeds"] = parse_seeds(token[len("--seeds="):], where)
    elif token.startswith("--seed_binding="):
      out["seed_bindings"] = parse_seed_bindings(token[len("--seed_binding="):], where)
    elif token.startswith("-"):
      raise SpecError(f"unknown option {token!r}", path=where,
                      fix="use --gin.NAME=VALUE, --gin_file=F, --seeds=0,1 or "
                          "--seed_binding=NAME; gin files need no option.")
    else:
      out["gin_files"].append(_unquote(token))
  return out


def _unquote(token: str) -> str:
  if len(token) >= 2 and token[0] == token[-1] and token[0] in "'\"":
    return shlex.split(token)[0]
  return token


def parse_spec(text: str, source: str = "<spec>") -> List[RunSpec]:
  """Parses a sweep spec (format: this module's docstring) into its runs.

  Args:
    text: the spec.
    source: its file name, for error messages.

  Returns:
    The runs in file order, with the shared options applied.

  Raises:
    SpecError: a malformed line (named by file:line), a repeated name, no runs.
  """
  runs, shared, lines = [], [], _logical_lines(text)
  for number, line in lines:
    where = f"{source}:{number}"
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
      continue
    if stripped.startswith("--"):
      shared.append(parse_tokens(split_line(stripped, where), where))
      continue
    match = _RUN_LINE.match(line)
    if not match:
      raise SpecError(f"cannot read {stripped!r}", path=source, line=number, fix=_SPEC_FIX)
    parsed = parse_tokens(split_line(match.group(2), where), where)
    runs.append((where, match.group(1), parsed))
  if not runs:
    raise SpecError("the spec names no runs", path=source, fix=_SPEC_FIX)
  common = dict(gin_files=[], bindings=[], seeds=None, seed_bindings=None)
  for parsed in shared:
    common["gin_files"] += parsed["gin_files"]
    common["bindings"] += parsed["bindings"]
    common["seeds"] = _first(parsed["seeds"], common["seeds"])
    common["seed_bindings"] = _first(parsed["seed_bindings"], common["seed_bindings"])
  out = []
  for where, name, parsed in runs:
    if not parsed["gin_files"] + common["gin_files"]:
      raise SpecError(f"run {name!r} has no gin file", path=where,
                      fix="name its job's gin file, e.g. gin_configs/runs/baselines.gin.")
    out.append(RunSpec(
        name=name, gin_files=tuple(parsed["gin_files"] + common["gin_files"]),
        bindings=tuple(common["bindings"] + parsed["bindings"]),
        seeds=_first(parsed["seeds"], common["seeds"], ()),
        seed_bindings=_first(parsed["seed_bindings"], common["seed_bindings"], ())))
  check_runs(out, source)
  return out


def _first(*values):
  return next((v for v in values if v is not None), None)


def _logical_lines(text: str) -> List[Tuple[int, str]]:
  """(1-based number of the first line, text), joining lines that end in a backslash.

  A comment line never continues (a backslash that ends it is part of the comment).
  """
  out, pending, start = [], [], None
  for number, line in enumerate(text.splitlines(), 1):
    start = number if start is None else start
    if line.rstrip().endswith("\\") and not line.lstrip().startswith("#"):
      pending.append(line.rstrip()[:-1])
      continue
    out.append((start, " ".join(pending + [line])))
    pending, start = [], None
  if pending:
    out.append((start, " ".join(pending)))
  return out


def read_spec(path: str) -> List[RunSpec]:
  """`parse_spec` of a file."""
  if not os.path.isfile(path):
    raise SpecError("sweep spec not found", path=path,
                    fix="pass an existing file, e.g. "
                        "--spec=gin_configs/sweeps/baselines_smoke.txt.")
  with open(path) as f:
    return parse_spec(f.read(), source=path)


def runs_from_gin_files(patterns: Sequence[str]) -> List[RunSpec]:
  """One run per gin file (glob patterns expanded, sorted), named by the file's stem."""
  out = []
  for pattern in patterns:
    paths = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
    if not paths or not all(os.path.isfile(p) for p in paths):
      raise SpecError(f"no gin file matches {pattern!r}", path="--runs",
                      fix="pass existing gin files or a glob such as "
                          "'gin_configs/ablations/cemg/*.gin'.")
    out += [RunSpec(name=pathlib.Path(p).stem, gin_files=(p,)) for p in paths]
  return out


def with_common(runs: Sequence[RunSpec], gin_files: Sequence[str] = (),
                bindings: Sequence[str] = (), seeds: Optional[Sequence[int]] = None,
                seed_bindings: Optional[Sequence[str]] = None) -> List[RunSpec]:
  """Appends gin files and bindings to every run; seeds / seed_bindings, if given, replace theirs.
  """
  bindings = tuple(parse_binding(b, "--gin") for b in bindings)
  return [dataclasses.replace(
      r, gin_files=r.gin_files + tuple(gin_files), bindings=r.bindings + bindings,
      seeds=r.seeds if seeds is None else tuple(seeds),
      seed_bindings=r.seed_bindings if seed_bindings is None else tuple(seed_bindings))
          for r in runs]


def check_runs(runs: Sequence[RunSpec], source: Optional[str] = None) -> None:
  """Raises SpecError for bad or repeated names and seeds without a seed binding."""
  seen = set()
  for r in runs:
    if not _NAME.fullmatch(r.name):
      raise SpecError(f"bad run name {r.name!r}", path=source,
                      fix="use letters, digits, '_', '.' and '-' (it names the run folder).")
    if r.name in seen:
      raise SpecError(f"two runs are named {r.name!r}", path=source,
                      fix="give every run its own name (with --runs, the gin files' stems).")
    seen.add(r.name)
    if r.seeds and not r.seed_bindings:
      raise SpecError(f"run {r.name!r} has seeds {list(r.seeds)} but no seed binding",
                      path=source, fix="add --seed_binding=NAME (e.g. "
                      "baselines_job.evaluate_baselines.seed, or a macro SEED the gin files use).")
