"""A trained run as an object, for notebooks and scripts: its config, task, model at a kept checkpoint, and its
activations by TransformerLens's hook names (docs/notebook.md lists the API).

    run = attnlab.load_run("outputs/2026-11-24/06-25-07")             # its last checkpoint; step=N for a kept one
    inputs, targets, mask = run.example("3 1 4 1 5 9 2 6")              # the task's example for these tokens
    logits, cache = run.run_with_cache(inputs)
    cache["blocks.0.attn.hook_pattern"]                                  # [batch, head, query, key]
    example = run_example(run, parse_example(run.task, "3 1 4 1 5 9 2 6"))   # what scripts/inspect_run.py prints
"""

import contextlib
import copy
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import Tensor

from attnlab import alignment, checkpoints
from attnlab.attention import SelfAttention
from attnlab.config import ConfigError
from attnlab.hooks import ActivationCache, HookPoint, named_hook_points, resolve
from attnlab.model import AttentionModel
from attnlab.resume import CHECKPOINT, CONFIG, check_run_dir
from attnlab.tasks import LOADER_FIELDS, Batch, Task, make_task

CONFIG_FILE = CONFIG  # in a run directory, as attnlab.resume spells them
CHECKPOINT_FILE = CHECKPOINT


@dataclass
class Run:
    dir: Path
    cfg: DictConfig
    task: Task
    model: AttentionModel  # in eval mode, on the CPU
    step: int  # the optimiser step the checkpoint was saved at
    probe: Batch  # the example TensorBoard's attention images show (the first validation example)
    validation: Batch | None = None  # the run's whole validation set: (inputs, targets, mask), each [example, pos]
    steps: list[int] = field(default_factory=list)  # the steps kept in checkpoints/step=N.ckpt (checkpoint=log|every)

    @property
    def hook_names(self) -> list[str]:
        """Every hook point of the model by its TransformerLens name (attnlab.hooks), block by block."""
        return list(named_hook_points(self.model))

    def tokens(self, tokens) -> Tensor:
        """A batch of token ids [batch, pos] from ids ([pos] or [batch, pos], a tensor or list) or the task's
        token names ("3 1 4"), checked against the model's vocabulary and length."""
        if isinstance(tokens, str):
            tokens = self.task.encode(tokens)
        tokens = torch.as_tensor(tokens)
        if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            raise ConfigError(f"tokens: token ids must be integers, got a {tokens.dtype} tensor")
        tokens = tokens.long()
        if tokens.dim() == 1:
            tokens = tokens.unsqueeze(0)
        if tokens.dim() != 2 or tokens.shape[1] == 0:
            raise ConfigError(f"tokens: [pos] or [batch, pos] ids, got shape {list(tokens.shape)}")
        vocab, length = self.task.vocab, self.model.positions.shape[0]
        if (bad := (tokens < 0) | (tokens >= vocab)).any():
            raise ConfigError(
                f"tokens: {tokens[bad][0].item()} is outside the vocabulary of task {self.task.name} (ids 0-{vocab - 1})"
            )
        if tokens.shape[1] > length:
            raise ConfigError(f"tokens: {tokens.shape[1]} positions, the model has {length} (data.seq_len and the task's layout)")
        return tokens

    def example(self, text: str) -> Batch:
        """A user's example by token names -> (inputs, targets, mask), each [1, pos], as the task makes it (for copy,
        reverse and sort give x: the task builds the stream x y the model reads)."""
        return parse_example(self.task, text, list(self.cfg.data.get("val_lengths") or []))

    @contextlib.contextmanager
    def hooks(self, fwd_hooks=()):
        """Within the block, each (name, fn) of fwd_hooks is on its hook point: fn(activation, hook) -> a
        replacement or None. Names as in hook_names, or TransformerLens's short form ("pattern", 0)."""
        points = named_hook_points(self.model)
        added = []
        try:
            for name, fn in fwd_hooks:
                point = points[resolve(name, points)]
                point.hooks.append(fn)
                added.append((point, fn))
            yield
        finally:
            for point, fn in added:
                point.hooks.remove(fn)

    @torch.no_grad()
    def run_with_hooks(self, tokens, fwd_hooks=()) -> Tensor:
        """logits [batch, pos, vocab] with fwd_hooks on: ablate or patch a head. Runs the explicit attention path
        (need_weights=True), where every hook point, hook_pattern and hook_z among them, is reached."""
        tokens = self.tokens(tokens)
        with self.hooks(fwd_hooks):
            logits, _ = self.model(tokens, need_weights=True)
        return logits

    @torch.no_grad()
    def run_with_cache(self, tokens, names=None) -> tuple[Tensor, ActivationCache]:
        """(logits [batch, pos, vocab], cache): every hook point's activation (or those in `names`), by
        TransformerLens's hook names: docs/notebook.md lists them with their shapes."""
        points = named_hook_points(self.model)
        wanted = list(points) if names is None else [resolve(n, points) for n in names]
        cache = ActivationCache()

        def keep(activation: Tensor, point: HookPoint) -> None:
            cache[point.name] = activation.detach().clone()

        logits = self.run_with_hooks(tokens, [(name, keep) for name in wanted])
        return logits, cache

    def head_scores(self, tokens=None) -> list[dict[str, Tensor]]:
        """Per layer {kind: score per head [head]}: each head as a previous-token, duplicate-token, induction,
        first-token and self head (attnlab.heads) on `tokens` (default: the validation set, as logged)."""
        tokens = self.validation[0] if tokens is None else self.tokens(tokens)
        return alignment.measure(self.model, self.task, tokens).kinds

    def at(self, step: int | None) -> "Run":
        """The same run with the weights of another kept step (None: the last checkpoint); config and task shared."""
        path = checkpoints.path(self.dir, step, self.steps)
        model = copy.deepcopy(self.model)
        step = load_weights(model, path)
        return Run(self.dir, self.cfg, self.task, model.eval(), step, self.probe, self.validation, self.steps)

    def to_transformer_lens(self):
        """TransformerLens's own model with this run's weights (the `tl` extra: pip install -e '.[tl]')."""
        from attnlab.tl import to_transformer_lens

        return to_transformer_lens(self)


def run_config(run_dir: Path) -> DictConfig:
    """A run directory's composed config, set to the CPU: inspection runs there wherever the run trained (a run from
    a GPU machine opens on a laptop)."""
    try:
        cfg = OmegaConf.load(run_dir / CONFIG_FILE)
        cfg.device.accelerator = "cpu"
    except (OmegaConfBaseException, yaml.YAMLError) as error:  # an edited or damaged config.yaml
        raise damaged(run_dir, error) from None
    return cfg


def damaged(run_dir: Path, error: Exception) -> ConfigError:
    first_line = str(error).strip().splitlines()[0]
    return ConfigError(f"{run_dir / CONFIG_FILE}: not a config this version of attnlab can build: {first_line}")


def run_task(run_dir: str | Path) -> Task:
    """The task of a run directory, from its config alone (torch, no Lightning): what a user's tokens are checked
    against before the model is built. Raises ConfigError as load_run does."""
    run_dir = check_run_dir(run_dir)
    try:
        return make_task(run_config(run_dir).data)
    except OmegaConfBaseException as error:
        raise damaged(run_dir, error) from None


def load_run(run_dir: str | Path, step: int | None = None) -> Run:
    """The model of a run directory (outputs/<date>/<time>/, or one job of a sweep) as it was at its last checkpoint,
    or at `step`, one of the steps its checkpoint schedule kept (run.steps). Raises ConfigError naming what is wrong
    (a sweep's directory: attnlab.load_sweep reads its jobs)."""
    run_dir = check_run_dir(run_dir)
    steps = checkpoints.kept_steps(run_dir)
    path = checkpoints.path(run_dir, step, steps)
    cfg = run_config(run_dir)

    # Imported here, after the cheap checks above: attnlab.train imports Lightning (seconds).
    from attnlab.train import build

    try:
        task, module, data = build(cfg)
    except OmegaConfBaseException as error:  # keys missing from an edited config.yaml
        raise damaged(run_dir, error) from None
    saved_step = load_weights(module.model, path)
    probe = data.probe()
    return Run(run_dir, cfg, task, module.model.eval(), saved_step, probe, data.validation, steps)


def load_weights(model: AttentionModel, path: Path) -> int:
    """The checkpoint's model weights into `model`; returns the step it was saved at."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        prefix = "model."
        model.load_state_dict({k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)})
    except (RuntimeError, KeyError, EOFError, pickle.UnpicklingError) as error:
        # A truncated file, or weights that do not fit the model the config describes.
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"{path}: cannot load it into the model of {CONFIG_FILE}: {first_line}") from None
    return int(checkpoint.get("global_step", -1))


def parse_example(task: Task, text: str, val_lengths: list[int] = ()) -> Batch:
    """A user's tokens, by name, separated by spaces or commas -> the task's example for them (Task.example).
    For the x -> y tasks (copy, reverse, sort) the user gives x only; the task builds the stream [x, y] (with the
    separator of a variable-length run). A run whose examples have lengths of their own (data.min_len) or that is
    validated at other lengths (`val_lengths`, its data.val_lengths) takes any example from the task's shortest to
    the longest the model has positions for (Task.example_positions); any other run exactly its one length."""
    names = task.token_names()
    index = {}
    for i, name in enumerate(names):  # a name that is an input token and an output class (RASP tasks): the input
        index.setdefault(name, i)
    words = text.replace(",", " ").split()
    unknown = [word for word in words if word not in index]
    if unknown:
        raise ConfigError(f"--input: {unknown[0]!r} is not a token of task {task.name} (tokens: {_listing(names)})")
    if not words:
        raise ConfigError(f"--input: no tokens given (tokens of task {task.name}: {_listing(names)})")
    if task.has_length and (task.variable or val_lengths):
        # Any example the model has positions for (the least length is Task.example's to check).
        positions = task.positions(max([task.seq_len, *val_lengths]))
        most = max(k for k in range(1, positions + 1) if task.example_positions(k) <= positions)
        if len(words) > most:
            raise ConfigError(f"--input: task {task.name} takes at most {most} tokens here (the model's longest input, "
                              f"for the longest of data.seq_len and data.val_lengths), got {len(words)}")
    elif len(words) != task.example_length:
        raise ConfigError(f"--input: task {task.name} takes {task.example_length} tokens, got {len(words)}")
    try:
        return task.example(torch.tensor([[index[word] for word in words]]))
    except ConfigError as error:  # tokens the task does not take there (say a tied majority)
        raise ConfigError(f"--input: {error}") from None


def _listing(names: list[str], most: int = 20) -> str:
    return " ".join(names) if len(names) <= most else " ".join(names[:10] + ["…"] + names[-3:])


@dataclass
class Example:
    """One example through the model. Position p of `inputs` predicts `targets[p]`; only positions with `mask` are
    scored (the answer)."""

    inputs: Tensor  # [pos]
    targets: Tensor  # [pos]
    mask: Tensor  # [pos] bool; all False where the task does not know the answer for a given input
    predictions: Tensor  # [pos] the model's argmax, teacher-forced (each from the true tokens before it)
    attention: list[Tensor]  # per layer [head, query, key]
    # Per layer [query, key] (any head's), [head, query, key] (per-head targets: Task.head_targets), or None where
    # the task has no known pattern.
    target_attention: list[Tensor | None]
    # Per layer [head]: share of attention on the target cells (attnlab.alignment); with per-head targets each
    # head's on its own (NaN for a head without one).
    alignment: list[Tensor | None]

    @property
    def answer_known(self) -> bool:
        return bool(self.mask.any())

    @property
    def right(self) -> int:
        return int(((self.predictions == self.targets) & self.mask).sum())


@torch.no_grad()
def run_example(run: Run, example: Batch) -> Example:
    inputs, targets, mask = example  # [1, pos] each
    logits, attention = run.model(inputs, need_weights=True)  # [1, pos, vocab], per layer [1, head, query, key]
    targets_attention = [run.task.layer_targets(inputs, layer) for layer in range(len(attention))]
    return Example(
        inputs[0],
        targets[0],
        mask[0],
        logits[0].argmax(-1),
        [weights[0] for weights in attention],
        [None if target is None else target[0] for target in targets_attention],
        [None if t is None else own_alignment(w, t) for w, t in zip(attention, targets_attention)],
    )


def own_alignment(attention: Tensor, target: Tensor) -> Tensor:
    """Per head [head]: its alignment with the layer's target, or (per-head targets) with its own (NaN past the
    target's heads)."""
    if target.dim() == 3:
        return alignment.alignment(attention, target)
    matrix = alignment.alignment(attention, target)  # [selector, head]
    own = torch.full((attention.shape[1],), torch.nan)
    k = min(matrix.shape)
    own[:k] = matrix.diagonal()[:k]
    return own


def head_weights(attention: SelfAttention) -> dict[str, list[Tensor]]:
    """Each head's slice of W_Q, W_K, W_V ([dim, d_head]: the head's output columns) and W_O ([d_head, dim]: the rows
    that read the head's output), as the layer uses them: query = x @ W_Q, output = concat(heads) @ W_O."""
    d = attention.d_head
    heads = range(attention.heads)
    return {
        "W_Q": [attention.W_Q[:, h * d : (h + 1) * d].detach() for h in heads],
        "W_K": [attention.W_K[:, h * d : (h + 1) * d].detach() for h in heads],
        "W_V": [attention.W_V[:, h * d : (h + 1) * d].detach() for h in heads],
        "W_O": [attention.W_O[h * d : (h + 1) * d, :].detach() for h in heads],
    }


def circuits(attention: SelfAttention) -> dict[str, list[Tensor]]:
    """Per head, the two products that say what the head does (Elhage et al. 2021), both [dim, dim]:
    QK = W_Q_h W_K_hᵀ: the score of query x_q on key x_k is x_q QK x_kᵀ / sqrt(d_head) (which keys a query looks at);
    OV = W_V_h W_O_h: what the head adds to the residual stream for each key vector it attends to."""
    w = head_weights(attention)
    return {
        "QK": [q @ k.T for q, k in zip(w["W_Q"], w["W_K"])],
        "OV": [v @ o for v, o in zip(w["W_V"], w["W_O"])],
    }


def direct_circuits(model: AttentionModel, layer: int = 0) -> dict[str, list[Tensor]]:
    """Layer `layer`'s circuits read through the embeddings (exact for layer 0 without LayerNorm; for later layers
    only the direct path from the embeddings, ignoring what earlier layers add):
    token QK  E QK Eᵀ  [vocab (query token), vocab (key token)]
    position QK  P QK Pᵀ  [query position, key position] (all zero with model.positions=none)
    token OV  E OV W_Uᵀ  [vocab (attended token), vocab (logit it raises)]"""
    embedding = model.embedding.weight.detach()  # [vocab, dim]
    positions = model.positions.detach()  # [pos, dim]
    unembedding = model.readout.weight.detach()  # [vocab, dim]
    c = circuits(model.blocks[layer].attention)
    return {
        "token QK": [embedding @ qk @ embedding.T for qk in c["QK"]],
        "position QK": [positions @ qk @ positions.T for qk in c["QK"]],
        "token OV": [embedding @ ov @ unembedding.T for ov in c["OV"]],
    }


def describe(run: Run) -> str:
    """One line: which task, which model, which step."""
    data = ", ".join(f"{k}={v}" for k, v in run.cfg.data.items() if k not in LOADER_FIELDS)  # the task's own fields
    m = run.cfg.model
    return f"task {run.task.name} ({data}) · {m.layers} layer(s) × {m.heads} head(s), dim {m.dim} · step {run.step}"


class Sweep(list):
    """One record per job of a sweep: {"run_dir", "status", the swept keys' values, the final metrics}. `.frame()`
    is the same as a pandas DataFrame (where pandas is installed)."""

    def frame(self):
        try:
            import pandas
        except ImportError:
            raise ImportError("Sweep.frame() needs pandas (pip install pandas); the records are the list itself") from None
        return pandas.DataFrame(list(self))

    def runs(self, **where) -> list[Run]:
        """load_run of each finished job whose swept keys have the given values (keys with '.' as '__':
        sweep.runs(model__heads=2))."""
        wanted = {k.replace("__", "."): v for k, v in where.items()}
        return [load_run(r["run_dir"]) for r in self if r["status"] == "ok" and all(r.get(k) == v for k, v in wanted.items())]


def load_sweep(sweep_dir: str | Path) -> Sweep:
    """A sweep's jobs (outputs/multirun/<date>/<time>), as summary.csv tabulates them: one record each with the config
    keys that differ between jobs, the final metrics (metrics.json) and the run directory."""
    from attnlab import summary

    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ConfigError(f"SWEEP_DIR: {sweep_dir} is not a directory")
    jobs = summary.read_jobs(sweep_dir)
    if not jobs:
        hint = " (it is one run: attnlab.load_run reads it)" if (sweep_dir / CONFIG_FILE).is_file() else ""
        raise ConfigError(f"SWEEP_DIR: {sweep_dir} holds no jobs of a sweep (no <job>/{CONFIG_FILE}){hint}")
    axes = summary.swept_keys(jobs)
    return Sweep(
        {"run_dir": job["run_dir"], "status": job["status"], **{k: job["params"].get(k) for k in axes}, **job["metrics"]}
        for job in jobs
    )
