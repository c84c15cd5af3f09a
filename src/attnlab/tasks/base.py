"""What every toy task provides. A task owns its rules: how examples are made, which positions are scored, which
attention pattern solves it. Batches are whole tensors made from a seeded torch.Generator (no per-example loop).

Lengths. `data.seq_len` is the longest data length a run trains on. With `data.min_len` null every example has
exactly that length (and no padding: the model masks nothing). With `data.min_len` set each example draws its own
data length uniformly in [min_len, seq_len] and is padded on the right with the task's pad token (`padding`), which
the model never attends to and which is never scored; position 0 always holds a real token. A task's data length n
(the x of copy, the noise region of selective copy, ...) is not the number of positions the model sees:
`positions(n)` is, and every tensor of a batch drawn at data length n, or padded up to it, is that wide.
"""

import functools
from numbers import Integral

import torch
from torch import Tensor

from attnlab.config import ConfigError, integer

# (inputs [batch, pos] long, targets [batch, pos] long, loss mask [batch, pos] bool)
Batch = tuple[Tensor, Tensor, Tensor]

MAX_LENGTH = 1024  # the longest data length any task makes (training or evaluation)


class Task:
    """Subclasses set `name`, `causal` and `shortest`, and implement `sample` and `positions` (and `vocab`, `pad`,
    `token_names` where they add tokens)."""

    name: str
    causal: bool  # whether the model must not look ahead (next-token tasks)
    shortest: int = 1  # the smallest data length the task makes (an instance may raise it from its own fields)
    has_length: bool = True  # whether examples have a data length at all (data.min_len, data.val_lengths)

    def __init__(self, seq_len: int, vocab_size: int, min_len: int | None = None):
        self.seq_len = integer(seq_len, "data.seq_len", minimum=2, maximum=MAX_LENGTH)
        self.vocab_size = integer(vocab_size, "data.vocab_size", minimum=2, maximum=100_000)
        self.min_len = self.checked_min_len(min_len)

    def checked_min_len(self, min_len) -> int | None:
        """data.min_len: null, or an int in [shortest, seq_len]. Tasks whose `shortest` depends on their own fields
        call this once those are checked (and pass no min_len to Task.__init__)."""
        if min_len is None:
            return None
        integral = isinstance(min_len, Integral) and not isinstance(min_len, bool)
        if not integral or not self.shortest <= min_len <= self.seq_len:
            raise ConfigError(f"data.min_len must be null (every example data.seq_len long) or an integer in "
                              f"[{self.shortest}, {self.seq_len}] ({self.name}'s shortest length to data.seq_len), "
                              f"got {min_len!r}")
        return int(min_len)

    @property
    def variable(self) -> bool:
        """Whether examples have lengths of their own (data.min_len set)."""
        return self.min_len is not None

    @property
    def longest(self) -> int:
        """The longest data length the task can make (for evaluation past data.seq_len)."""
        return MAX_LENGTH

    def check_length(self, length, field: str) -> int:
        """`length` as a data length this task makes, or a ConfigError naming `field`."""
        return integer(length, field, minimum=self.shortest, maximum=self.longest)

    @property
    def pad(self) -> int:
        """The id of the token that fills the right end of a shorter example."""
        raise NotImplementedError

    @property
    def padding(self) -> int | None:
        """The token the model must never attend to (and never score): the pad in a variable-length run, None in a
        fixed-length one, where nothing is masked."""
        return self.pad if self.variable else None

    def positions(self, n: int) -> int:
        """Positions the model sees for an example of data length n (the width of its tensors)."""
        raise NotImplementedError

    @property
    def length(self) -> int:
        """Positions the model sees in training: those of the longest training example."""
        return self.positions(self.seq_len)

    @property
    def vocab(self) -> int:
        """Token ids the model sees (data tokens plus any special tokens the task adds)."""
        return self.vocab_size

    def draw_lengths(self, n: int, generator: torch.Generator, length: int | None = None) -> tuple[Tensor, int]:
        """Each example's data length [n, 1] and the data length the batch is padded to. `length` given: all of
        them that long. Otherwise the training distribution: seq_len, or (data.min_len set) uniform in
        [min_len, seq_len], drawn from the generator first; a fixed-length run draws nothing here, so its batches
        are the same random numbers whatever the lengths code does."""
        if length is not None:
            k = self.check_length(length, "length")
            return torch.full((n, 1), k), k
        if not self.variable:
            return torch.full((n, 1), self.seq_len), self.seq_len
        return torch.randint(self.min_len, self.seq_len + 1, (n, 1), generator=generator), self.seq_len

    def sample(self, n: int, generator: torch.Generator, length: int | None = None) -> Batch:
        """n fresh examples: from the training distribution (`self.length` wide), or all of data length `length`
        (`self.positions(length)` wide)."""
        raise NotImplementedError

    def validation_set(self, n: int, generator: torch.Generator, length: int | None = None) -> Batch:
        """The held-out examples, as `sample` makes them; tasks with a fixed example space (say modular addition)
        override this."""
        return self.sample(n, generator, length)

    @property
    def example_length(self) -> int:
        """How many tokens a user gives for one example of their own (scripts/inspect_run.py --input) in a
        fixed-length run: by default the model's whole input."""
        return self.length

    def example(self, tokens: Tensor) -> Batch:
        """The example for a user's tokens [batch, k], as `sample` makes examples. By default the tokens are the
        model's input as is (any width) and the answer is unknown (mask all False); tasks that can work out the
        answer for any input override this: they take the data (k from `shortest` to `longest`) and build the
        stream at that length (and may raise ConfigError for tokens they do not take)."""
        return tokens, torch.zeros_like(tokens), torch.zeros_like(tokens, dtype=torch.bool)

    def example_positions(self, k: int) -> int:
        """Positions the model sees for a user's example of k tokens (`example`): k where the tokens are the model's
        input as is; tasks that take the data override this with positions(k)."""
        return k

    def target_attention(self, inputs: Tensor, layer: int) -> Tensor | None:
        """The attention pattern known to solve the task at this layer, [batch, query, key] with query and key as
        wide as `inputs`, or None where no fixed pattern is known (for this layer, or for the task at all). Built per
        example at its own length, worked out from the inputs.

        A query row that has a target sums to 1 over the keys it should attend to (never a future key in a causal
        task, never a pad); a row whose attention does not matter to the mechanism (say a reading-phase position,
        or a pad) is all zero. Alignment (attnlab.alignment) averages over the rows with a target only."""
        return None

    def head_targets(self, inputs: Tensor, layer: int) -> Tensor | None:
        """Target patterns per head of this layer, [batch, head, query, key] (head h's pattern is [:, h]; heads past
        the second dimension have none), for tasks whose mechanism gives each head of a layer its own step (the RASP
        programs' selectors); None where the layer's target (target_attention) is any head's."""
        return None

    def layer_targets(self, inputs: Tensor, layer: int) -> Tensor | None:
        """What alignment, the target images and loss.attention use at this layer: head_targets' [batch, head,
        query, key] where the task has them, else target_attention's [batch, query, key] (any head), or None."""
        per_head = self.head_targets(inputs, layer)
        return per_head if per_head is not None else self.target_attention(inputs, layer)

    def token_names(self) -> list[str]:
        """How each token id is shown in TensorBoard and the terminal."""
        return [str(i) for i in range(self.vocab)]

    def encode(self, text: str) -> Tensor:
        """Tokens by name, separated by spaces or commas ("3 1 4") -> their ids [pos]; a ConfigError names a word
        that is not a token of the task."""
        names = self.token_names()
        index = {name: i for i, name in enumerate(names)}
        words = text.replace(",", " ").split()
        if unknown := [word for word in words if word not in index]:
            shown = " ".join(names) if len(names) <= 20 else " ".join(names[:10] + ["…"] + names[-3:])  # a long vocabulary shortened
            raise ConfigError(f"{unknown[0]!r} is not a token of task {self.name} (tokens: {shown})")
        return torch.tensor([index[word] for word in words])

    def decode(self, tokens: Tensor) -> str:
        """Token ids [pos] -> their names, separated by spaces."""
        names = self.token_names()
        return " ".join(names[t] for t in torch.as_tensor(tokens).reshape(-1).tolist())


def pointers(width: int, queries: Tensor, keys: Tensor, valid: Tensor) -> Tensor:
    """A target pattern in which query queries[b, i] puts all its weight on key keys[b, i], for the i where
    valid[b, i]; every other row stays zero.  queries/keys/valid: [batch, i] -> [batch, query, key]"""
    batch = torch.arange(queries.shape[0]).unsqueeze(1).expand_as(queries)
    target = torch.zeros(queries.shape[0], width, width)
    return target.index_put_((batch, queries, keys), valid.float(), accumulate=True)


@functools.lru_cache(maxsize=16)
def variable_layout(width: int) -> tuple[Tensor, Tensor]:
    """SequenceMap's variable-length stream `x | y _ _`, one row per data length n in 0 .. width: where each stream
    position reads from in the table [x_0 .. x_{width-1}, |, y_0 .. y_{width-1}, _]  [n, 2 * width + 1], and which
    query positions are scored (the separator and y but its last: they write y)  [n, 2 * width]. Made once per
    width: a batch then takes its rows with one lookup, where working them out per batch costs a dozen small
    tensor operations, each about as slow as drawing a whole fixed-length batch at these sizes."""
    n = torch.arange(width + 1).unsqueeze(1)  # [n, 1]
    p = torch.arange(2 * width + 1)  # stream positions
    index = torch.where(p < n, p, torch.where(p <= 2 * n, p + width - n, 2 * width + 1))
    query = p[:-1]
    return index, (query >= n) & (query < 2 * n)


class SequenceMap(Task):
    """Read x, then write y = f(x) in the same stream (minGPT's sort-demo format).

    Fixed length (data.min_len null), n = seq_len:

        x_0 .. x_{n-1} y_0 .. y_{n-1}                 position n-1+i predicts y_i

    Variable length: each x has its own n, so a separator `|` tells the model where x ends, then pads `_`:

        x_0 .. x_{n-1} | y_0 .. y_{n-1} _ _ _         position n+i (the separator, then y) predicts y_i

    fed causally with next-token targets; only the y part is scored (never what follows x: its length is not known
    before the separator). y_i is always a copy of one input token, x[source[i]]: the ideal head at the query that
    writes y_i puts all its weight on key source[i].
    """

    causal = True

    @property
    def separator(self) -> int:
        return self.vocab_size

    @property
    def pad(self) -> int:
        return self.vocab_size + 1

    @property
    def vocab(self) -> int:
        return self.vocab_size + 2 if self.variable else self.vocab_size

    def positions(self, n: int) -> int:
        return 2 * n if self.variable else 2 * n - 1

    def source(self, x: Tensor, lengths: Tensor) -> Tensor:
        """[batch, width] index into x of the token that y_i copies, for i < the example's length [batch, 1] (x may
        hold anything at and after its length; the index there is any valid one)."""
        raise NotImplementedError

    @property
    def example_length(self) -> int:
        return self.seq_len  # a user gives x; y is worked out

    def example_positions(self, k: int) -> int:
        return self.positions(k)

    def sample(self, n: int, generator: torch.Generator, length: int | None = None) -> Batch:
        lengths, width = self.draw_lengths(n, generator, length)
        return self.stream(torch.randint(self.vocab_size, (n, width), generator=generator), lengths)

    def example(self, x: Tensor) -> Batch:
        """x [batch, k] -> the stream at length k (as `sample` makes it)."""
        k = self.check_length(x.shape[1], "the example's length")
        if (x >= self.vocab_size).any():  # the separator or the pad, by name: a stream of two separators means nothing
            raise ConfigError(f"{self.name} takes data tokens 0 to {self.vocab_size - 1} as x (the separator and pads "
                              f"are the task's to place)")
        return self.stream(x, torch.full((x.shape[0], 1), k))

    def stream(self, x: Tensor, lengths: Tensor) -> Batch:
        """x [batch, width] of which each example keeps its first `lengths` [batch, 1] tokens -> the stream
        x (| in a variable-length run) y, right-padded, shifted into (inputs, next-token targets, mask on y)."""
        batch, width = x.shape
        y = x.gather(1, self.source(x, lengths))  # [batch, width], y_i for i < length
        if not self.variable:  # every example `width` long (lengths is all width): x then y
            stream = torch.cat([x, y], dim=1)
            mask = torch.zeros(batch, 2 * width - 1, dtype=torch.bool)
            mask[:, width - 1 :] = True
            return stream[:, :-1], stream[:, 1:], mask
        index, mask = variable_layout(width)
        table = torch.cat([x, torch.full((batch, 1), self.separator), y, torch.full((batch, 1), self.pad)], dim=1)
        stream = table.gather(1, index[lengths.squeeze(1)])  # [batch, 2 * width + 1]
        return stream[:, :-1], stream[:, 1:], mask[lengths.squeeze(1)]

    def answer_start(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        """Per example [batch, 1]: its data length n, and the query position that writes y_0."""
        if self.variable:
            n = (inputs == self.separator).long().argmax(dim=1, keepdim=True)
            return n, n
        n = torch.full((inputs.shape[0], 1), (inputs.shape[1] + 1) // 2)
        return n, n - 1

    def answer_index(self, inputs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per query position [batch, query]: i of the y_i it writes (clamped into range), whether it writes one,
        and each example's data length [batch, 1]."""
        n, start = self.answer_start(inputs)
        i = torch.arange(inputs.shape[1]).expand(inputs.shape[0], -1) - start
        return i.clamp(0, inputs.shape[1] - 1), (i >= 0) & (i < n), n

    @property
    def pointer_layer(self) -> int:
        """The layer whose head copies y_i from x. At one length a first layer can: the query that writes y_i sits
        at a fixed distance from its source. When lengths vary, that distance depends on the example's length,
        which no first-layer query knows (RASP's reverse computes the length first): a first layer finds it, or
        the token before each x_i, and the second layer points."""
        return 1 if self.variable else 0

    def target_attention(self, inputs: Tensor, layer: int) -> Tensor | None:
        """The query that writes y_i on its source key, at `pointer_layer`; rows of the reading phase and of pads
        have no target and stay zero."""
        if layer != self.pointer_layer:
            return None
        i, writes, n = self.answer_index(inputs)
        key = self.source(inputs, n).gather(1, i)  # [batch, query]
        query = torch.arange(inputs.shape[1]).expand_as(key)
        return pointers(inputs.shape[1], query, key, writes)

    def token_names(self) -> list[str]:
        return [str(i) for i in range(self.vocab_size)] + (["|", "_"] if self.variable else [])
