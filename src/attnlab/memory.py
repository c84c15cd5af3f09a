"""How much memory a run needs at least, from its config, before anything is allocated; and how much this machine
has. attnlab.config.check_memory refuses a run that cannot fit: a typo such as data.batch_size=100000000 would
otherwise grow until the kernel's OOM killer ends it (exit 137, no message), and whatever else runs beside it.

The estimate is a floor: the tensors that must exist together at the peak of a training step or of a validation,
in float32 (token ids in int64), and no allocator slack, so a config it refuses cannot fit, and whatever fits is
never refused. Imported before torch (bad input is refused in a second): nothing heavy here."""

import re
from dataclasses import dataclass
from pathlib import Path

FLOAT, TOKEN = 4, 8  # bytes: float32 activations and weights, int64 token ids
# Resident memory of a process that has imported torch and Lightning before it allocates anything of a run's:
# ~400 MB here (python -c "import resource, lightning.pytorch; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)");
# counted at less, as a floor.
PROCESS = 300 * 2**20
VALIDATION_CHUNK = 1024  # validation examples per forward (attnlab.data.VALIDATION_BATCH, alignment.CHUNK)


@dataclass
class Need:
    """Bytes at least, by what they are for; each part named by the key that sizes it most."""

    batch: int  # a training batch's tokens and the activations its backward keeps      (data.batch_size)
    validation: int  # the validation set, kept the whole run, and one chunk's forward  (data.val_size)
    model: int  # weights, gradients and AdamW's two moments                           (model.dim)

    @property
    def total(self) -> int:
        return PROCESS + self.batch + self.validation + self.model

    def largest(self) -> str:
        parts = {"data.batch_size": self.batch, "data.val_size": self.validation, "model.dim": self.model}
        return max(parts, key=parts.get)


def parameters(vocab: int, length: int, dim: int, layers: int, positions: str, mlp: bool, norm: bool) -> int:
    """The model's parameter count (attnlab.model.AttentionModel)."""
    block = 4 * dim * dim  # W_Q, W_K, W_V, W_O
    if mlp:
        block += 8 * dim * dim + 5 * dim  # dim -> 4 dim -> dim, with biases
    if norm:
        block += 2 * dim * (2 if mlp else 1)
    count = vocab * dim + layers * block + dim * vocab + vocab  # embedding, blocks, readout
    return count + (length * dim if positions == "learned" else 0) + (2 * dim if norm else 0)


def estimate(cfg, task) -> Need:
    """The floor of a run's memory for the composed config `cfg` and its task (attnlab.tasks.make_task)."""
    m, data = cfg.model, cfg.data
    vocab, length, dim, heads, layers = task.vocab, task.length, m.dim, m.heads, m.layers
    batch, val = int(data.batch_size), int(data.val_size)
    processes = int(cfg.device.devices) if cfg.device.get("strategy", "auto") != "auto" and str(cfg.device.devices).isdigit() else 1
    tokens = 2 * TOKEN + 1  # inputs, targets, mask  [batch, pos]
    # What backward needs of a step, per example: the embedding's output, per layer query, key, value, the heads'
    # output and its projection [pos, dim] (and the MLP's hidden layer and activation [pos, 4 dim]); the attention
    # weights [head, query, key] where they are materialised (loss.attention reads them); logits and their softmax.
    per_layer = 5 * length * dim + (8 * length * dim if m.mlp else 0)
    if cfg.loss.get("attention", 0):
        per_layer += heads * length * length
    kept = length * dim + layers * per_layer + 2 * length * vocab
    # The validation sets, all kept the whole run (the training distribution's, and one per data.val_lengths, at
    # that length's positions), and the largest chunk's forward, one chunk at a time: the activations of a layer at
    # a time, each layer's attention weights [chunk, head, query, key] (kept for alignment), and the logits.
    # On a GPU (device=gpu, or auto where CUDA is there) activations, weights and optimiser live in its memory: only
    # the tokens and the validation sets are counted, in this machine's.
    device = str(cfg.device.accelerator)
    on_host = device == "cpu" or (device == "auto" and not Path("/dev/nvidiactl").exists())
    lengths = [length] + [task.positions(n) for n in (data.get("val_lengths") or [])]
    chunk = min(val, VALIDATION_CHUNK)
    forward = max(chunk * FLOAT * (2 * n * dim + layers * heads * n * n + n * vocab) for n in lengths)
    validation = sum(val * n * tokens for n in lengths) + (forward if on_host else 0)
    n = parameters(vocab, length, dim, layers, m.positions, m.mlp, m.norm)
    train = batch * length * tokens + (batch * kept * FLOAT if on_host else 0)
    return Need(batch=train * processes, validation=validation, model=(4 * n * FLOAT if on_host else 0) * processes)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _cgroup_room() -> int | None:
    """What this process's memory cgroup has left (its limit less its working set: usage without the file cache
    the kernel can drop), or None without a limit. cgroup v2, else v1."""
    for limit, usage, stat, cache in (
        ("memory.max", "memory.current", "memory.stat", "inactive_file"),
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes", "memory/memory.stat", "total_inactive_file"),
    ):
        base = Path("/sys/fs/cgroup")
        limit_text, usage_text = _read(base / limit), _read(base / usage)
        if limit_text is None or usage_text is None:
            continue
        if not limit_text.strip().isdigit() or int(limit_text) >= 2**60:  # "max", or v1's unlimited
            return None
        found = re.search(rf"^{cache} (\d+)$", _read(base / stat) or "", re.M)
        working = int(usage_text) - (int(found.group(1)) if found else 0)
        return max(0, int(limit_text) - working)
    return None


def available() -> tuple[int, str] | None:
    """(bytes this machine can still give a process, where that figure comes from), or None where neither the
    kernel's MemAvailable nor a cgroup limit can be read (not Linux): then nothing is refused."""
    found = []
    meminfo = re.search(r"^MemAvailable:\s+(\d+) kB$", _read(Path("/proc/meminfo")) or "", re.M)
    if meminfo:
        found.append((int(meminfo.group(1)) * 1024, "MemAvailable"))
    room = _cgroup_room()
    if room is not None:
        found.append((room, "the memory cgroup's limit less its use"))
    return min(found) if found else None


def size(n: int) -> str:
    """2.1 GB, 340 MB, 12 kB (powers of 1024, as free and top count)."""
    for unit, scale in (("TB", 2**40), ("GB", 2**30), ("MB", 2**20)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n / 1024:.3g} kB"
