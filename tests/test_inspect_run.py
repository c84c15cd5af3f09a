"""scripts/inspect_run.py on a real (tiny) run: what it prints, the PNGs it draws, and how it turns down bad input.
The script's main() runs in this process (one Lightning import for the whole file); one test runs it as a
subprocess."""

import io
import math
import runpy
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from attnlab import terminal
from attnlab.inspection import CHECKPOINT_FILE, CONFIG_FILE, circuits, load_run, run_example

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "inspect_run.py"
main = runpy.run_path(str(SCRIPT))["main"]  # the script's own main(argv)


def inspect(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def row(out: str, label: str) -> list[str]:
    """The cells of the example table's row `label` (input, target, predicted)."""
    return next(line for line in out.splitlines() if line.split()[:1] == [label]).split()[1:]


def assert_png(path: Path, min_size: tuple[int, int]) -> Image.Image:
    assert path.is_file(), path
    with Image.open(path) as image:
        image.verify()  # a complete, uncorrupted PNG
    image = Image.open(path)
    assert image.format == "PNG"
    assert image.width >= min_size[0] and image.height >= min_size[1], image.size
    assert image.width <= 4000 and image.height <= 4000, image.size
    assert len(image.convert("RGB").getcolors(1 << 20)) > 50  # a picture, not a blank canvas
    return image


def test_probe_example(tiny_run, capsys):
    code, out, err = inspect(capsys, tiny_run, "--color", "never")
    assert code == 0, err
    run = load_run(tiny_run)
    names = run.task.token_names()
    inputs, targets, mask = run.probe
    assert row(out, "input") == [names[t] for t in inputs[0].tolist()]
    assert row(out, "target") == [names[t] if m else "·" for t, m in zip(targets[0].tolist(), mask[0].tolist())]
    for layer in range(2):
        for head in range(2):
            assert f"layer {layer} head {head}" in out
    assert "layer 0 target" in out and "layer 1 target" not in out  # reverse has a target for layer 0 only
    assert "\x1b[" not in out  # not a terminal: plain shade characters, no escape codes
    assert any(shade in out for shade in "░▒▓█")

    image = assert_png(tiny_run / "inspect" / "attention-probe.png", (700, 450))
    assert image.width > image.height  # 2 layers x (2 heads + target): wider than tall


def test_user_input_teacher_forced(tiny_run, capsys):
    code, out, err = inspect(capsys, tiny_run, "--input", "3, 1 0 2", "--color", "always")
    assert code == 0, err
    # reverse with x = 3 1 0 2: the model reads x then y = 2 0 1 3 shifted by one, and is scored on y.
    assert row(out, "input") == "3 1 0 2 2 0 1".split()
    assert row(out, "target") == "· · · 2 0 1 3".split()
    run = load_run(tiny_run)
    logits, _ = run.model(torch.tensor([[3, 1, 0, 2, 2, 0, 1]]))
    assert row(out, "predicted") == ["·"] * 3 + [str(t) for t in logits[0, 3:].argmax(-1).tolist()]
    assert "\x1b[48;5;" in out  # --color always: 256-colour backgrounds
    assert_png(tiny_run / "inspect" / "attention-3_1_0_2.png", (700, 450))


def test_attention_and_circuits_are_the_models(tiny_run):
    """The maps shown are the checkpoint's, and the QK/OV circuits drawn by --weights reproduce layer 0 exactly."""
    run = load_run(tiny_run)
    state = torch.load(tiny_run / CHECKPOINT_FILE, weights_only=True)["state_dict"]
    assert torch.equal(run.model.blocks[1].attention.W_V, state["model.blocks.1.attention.W_V"])

    example = run_example(run, run.probe)
    tokens = run.probe[0]  # [1, pos]
    attention = run.model.blocks[0].attention
    x = run.model.embedding(tokens) + run.model.positions[: tokens.shape[1]]  # [1, pos, dim]: layer 0's input
    c = circuits(attention)
    causal = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).triu(1)
    output = 0
    for head in range(attention.heads):
        scores = (x[0] @ c["QK"][head] @ x[0].T / math.sqrt(attention.d_head)).masked_fill(causal, -math.inf)
        weights = scores.softmax(-1)  # [query, key]
        torch.testing.assert_close(weights, example.attention[0][head])
        output = output + weights @ x[0] @ c["OV"][head]  # what the head writes: A x W_V W_O
    torch.testing.assert_close(output, attention(x)[0][0].detach())


def test_run_trained_on_a_gpu_opens_on_the_cpu(tiny_run, tmp_path):
    run_dir = tmp_path / "gpu_run"
    shutil.copytree(tiny_run, run_dir)
    config = run_dir / CONFIG_FILE
    config.write_text(config.read_text().replace("accelerator: cpu", "accelerator: gpu"))
    assert "accelerator: gpu" in config.read_text()
    run = load_run(run_dir)
    assert run.step == 24 and next(run.model.parameters()).device.type == "cpu"


def test_weights_pngs(tiny_run, tmp_path, capsys):
    code, out, err = inspect(capsys, tiny_run, "--weights", "--out", tmp_path)
    assert code == 0, err
    assert_png(tmp_path / "attention-probe.png", (700, 450))
    for layer in range(2):
        # heads as rows: W_Q W_K W_V W_O; QK OV (layer 0 also token QK, position QK, token OV)
        assert_png(tmp_path / f"weights-layer{layer}.png", (700, 400))
        assert_png(tmp_path / f"circuits-layer{layer}.png", (500, 400))
        assert str(tmp_path / f"circuits-layer{layer}.png") in out
    assert Image.open(tmp_path / "circuits-layer0.png").width > Image.open(tmp_path / "circuits-layer1.png").width


@pytest.mark.parametrize(
    "case, message",
    [
        ("--input=3 1 0 X", "--input: 'X' is not a token of task reverse (tokens: 0 1 2 3 4 5 6 7 8 9)"),
        ("--input=3 1 0 10", "--input: '10' is not a token of task reverse"),
        ("--input=3 1 0", "--input: task reverse takes 4 tokens, got 3"),
        ("--input=3 1 0 2 1", "--input: task reverse takes 4 tokens, got 5"),
        ("missing", "is not a directory"),
        ("empty", "is not a run directory: it has no .hydra/config.yaml"),
        ("parent", "it holds runs: pass one of them"),
        ("no checkpoint", "has no checkpoints/last.ckpt"),
        ("truncated checkpoint", "checkpoints/last.ckpt: cannot load it into the model"),
        ("damaged config", ".hydra/config.yaml: not a config this version of attnlab can build"),
    ],
)
def test_bad_input(tiny_run, tmp_path, capsys, case, message):
    run_dir, args = tiny_run, [case] if case.startswith("--") else []
    if case == "missing":
        run_dir = tmp_path / "nowhere"
    elif case == "empty":
        run_dir = tmp_path
    elif case == "parent":
        shutil.copytree(tiny_run / ".hydra", tmp_path / "run" / ".hydra")
        run_dir = tmp_path
    elif case == "damaged config":
        run_dir = tmp_path / "run"
        shutil.copytree(tiny_run / ".hydra", run_dir / CONFIG_FILE.parent)
        (run_dir / CHECKPOINT_FILE).parent.mkdir()
        (run_dir / CHECKPOINT_FILE).write_bytes((tiny_run / CHECKPOINT_FILE).read_bytes())
        (run_dir / CONFIG_FILE).write_text((run_dir / CONFIG_FILE).read_text().split("model:")[0])  # no model
    elif case.endswith("checkpoint"):
        run_dir = tmp_path / "run"
        shutil.copytree(tiny_run / ".hydra", run_dir / CONFIG_FILE.parent)
        if case == "truncated checkpoint":
            (run_dir / CHECKPOINT_FILE).parent.mkdir()
            (run_dir / CHECKPOINT_FILE).write_bytes((tiny_run / CHECKPOINT_FILE).read_bytes()[:2000])
    before = sorted(p for p in tmp_path.rglob("*"))
    code, out, err = inspect(capsys, run_dir, *args, "--out", tmp_path / "pictures")
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err  # one line
    assert message in err
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written


def test_script_subprocess(tmp_path, script_runs):
    """The script as a process of its own (forked from the session's server that has made torch's imports,
    tests/script_runs.py): exit status 2 and one line on stderr for a directory that is not a run."""
    (result,) = script_runs.run(SCRIPT, [[str(tmp_path)]], tmp_path, timeout=60)
    assert result.returncode == 2
    assert result.stderr == f"error: RUN_DIR: {tmp_path} is not a run directory: it has no .hydra/config.yaml\n"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_styles(tiny_run, monkeypatch):
    """Colour on a terminal unless NO_COLOR; shade characters in a pipe; plain ASCII where unicode cannot be encoded."""
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    assert terminal.choose_style(Terminal()) == "color"
    assert terminal.choose_style(Terminal(), "never") == "shade"
    monkeypatch.setenv("NO_COLOR", "1")
    assert terminal.choose_style(Terminal()) == "shade"
    ascii_pipe = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    assert terminal.choose_style(ascii_pipe) == "ascii"

    run = load_run(tiny_run)
    example = run_example(run, run.probe)
    text = terminal.attention_maps(run.task.token_names(), example, "ascii", columns=80)
    text.encode("ascii")  # raises if any character is not ASCII
    assert all(len(line) <= 80 for line in text.splitlines()[:-1])  # panels wrap to the width (not the legend)
    assert "layer 1 head 1" in text and "@" in text  # the first query attends only to itself: weight 1


# A variable-length copy run (data lengths 2..6) validated up to 12: --input takes any length from copy's shortest (1)
# to 12, in the training format (x, the separator, y).
VARIABLE_RUN = ["device=cpu", "data=copy", "data.seq_len=6", "data.min_len=2", "data.val_lengths=[12]",
                "data.batch_size=16", "data.val_size=16", "model.dim=16", "trainer.max_steps=4",
                "trainer.val_every_n_steps=4", "trainer.stop_at=null", "logging=off"]


@pytest.fixture(scope="module")
def variable_run(tmp_path_factory) -> Path:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from attnlab.config import checked_arguments
    from attnlab.train import run

    run_dir = tmp_path_factory.mktemp("variable_run")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=checked_arguments(VARIABLE_RUN))  # as scripts/train.py
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    run(cfg, run_dir)
    return run_dir


@pytest.mark.parametrize("x", ["3", "3 1 4", "3 1 4 1 5 9 2 6 5 3 5 8"], ids=["shortest", "shorter", "longest"])
def test_variable_length_input(variable_run, tmp_path, capsys, x):
    """Any length from the task's shortest to the model's longest (data.val_lengths past data.seq_len), built as
    training builds it: x | y, scored on y, teacher-forced; the model's own attention on it."""
    code, out, err = inspect(capsys, variable_run, "--input", x, "--color", "never", "--out", tmp_path)
    assert code == 0, err
    words, n = x.split(), len(x.split())
    assert row(out, "input") == words + ["|"] + words[:-1]
    assert row(out, "target") == ["·"] * n + words
    run = load_run(variable_run)
    tokens = torch.tensor([[int(w) for w in words] + [run.task.separator] + [int(w) for w in words[:-1]]])
    logits, attention = run.model(tokens, need_weights=True)
    assert row(out, "predicted") == ["·"] * n + [str(t) for t in logits[0, n:].argmax(-1).tolist()]
    torch.testing.assert_close(run_example(run, run.task.example(tokens[:, :n])).attention[0], attention[0][0])
    assert_png(tmp_path / f"attention-{x.replace(' ', '_')}.png", (300, 200))


def test_variable_length_probe_has_no_pads(variable_run, capsys):
    """The probe (the first validation example, padded to the longest in its set) is shown at its real length."""
    code, out, err = inspect(capsys, variable_run, "--color", "never", "--out", variable_run / "pictures")
    assert code == 0, err
    run = load_run(variable_run)
    assert "_" not in row(out, "input") and row(out, "input").count("|") == 1
    assert run.probe[0].shape[1] == len(row(out, "input")) < run.task.length


@pytest.mark.parametrize("x, message", [
    ("3 1 4 1 5 9 2 6 5 3 5 8 9", "--input: task copy takes at most 12 tokens here (the model's longest input, for "
                                  "the longest of data.seq_len and data.val_lengths), got 13"),
    ("", "--input: no tokens given (tokens of task copy: 0 1 2 3 4 5 6 7 8 9 | _)"),
    ("3 | 4", "--input: copy takes data tokens 0 to 9 as x (the separator and pads are the task's to place)"),
])
def test_variable_length_input_refused(variable_run, tmp_path, capsys, x, message):
    """Longer than the model's longest length, or with the separator typed in: one line, exit 2, nothing written."""
    before = sorted(variable_run.rglob("*"))
    code, out, err = inspect(capsys, variable_run, "--input", x, "--out", tmp_path / "pictures")
    assert code == 2 and err == f"error: {message}\n"
    assert sorted(variable_run.rglob("*")) == before and not (tmp_path / "pictures").exists()


def test_longest_input_is_the_models_positions():
    """The bound is the model's positions, whatever a task's --input is: x for reverse (its stream 2n wide, with the
    separator), the model's input as is for induction; a fixed-length run validated at other lengths takes them too."""
    from attnlab.config import ConfigError
    from attnlab.inspection import parse_example
    from attnlab.tasks import TASKS

    for task, most in [(TASKS["reverse"](8, 10, min_len=4), 16), (TASKS["induction"](8, 10, min_len=4), 31),
                       (TASKS["reverse"](8, 10), 16)]:
        longest = parse_example(task, " ".join(["1"] * most), [16])[0]  # [1, pos]
        assert longest.shape[1] == task.positions(16)  # every position the model has, and no more
        with pytest.raises(ConfigError, match=f"takes at most {most} tokens here .* got {most + 1}$"):
            parse_example(task, " ".join(["1"] * (most + 1)), [16])
    assert parse_example(TASKS["reverse"](8, 10), "3 1 4", [16])[0].tolist() == [[3, 1, 4, 4, 1]]  # fixed format
