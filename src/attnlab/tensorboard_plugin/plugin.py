"""The Attention tab's backend: static files, and JSON routes reading the frames (summary.py) back through
TensorBoard's data provider (the multiplexer is None under TensorBoard's default Rust data server).

Routes, under /data/plugin/attnlab/ (the page's fetch("./runs") reaches them):
    runs                     every run with frames: its label (the overrides that tell it apart), steps, shape,
                             the last frame's alignment [layer][head], the data lengths it has a probe at
                             (data.val_lengths; [] without)
    frames?run=R&step=S...   those frames' attention [layer][head][query][key], alignment and labels (one pair
                             per run shown: a move of the step slider is one request); &length=N: of the probe
                             of data length N instead of the training distribution's
    circuits?run=R&step=S... each head's QK and OV circuits through the embeddings, computed here from the weights
                             (&length=N: the positions of that probe)
    colormaps                the two colour scales as 256 CSS colours (matplotlib's, as the Images tab's)
    index.js, *.js, *.css    the page

A run without frames is simply not listed; asked for by name, it is a 404 with the reason, not a server error.
"""

import json
import math
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
from tensorboard import errors, plugin_util
from tensorboard.backend import http_util
from tensorboard.data import provider
from tensorboard.plugins import base_plugin
from werkzeug import wrappers

from attnlab import tags

STATIC = Path(__file__).parent / "static"
CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css"}
# At most this many frames per tag are read; TensorBoard keeps 100 per tag unless `--samples_per_plugin attnlab=N`.
DOWNSAMPLE = 100_000
# The colour scales of the Images tab (attnlab.viz): attention weights in [0, 1], signed values around 0.
COLORMAPS = {"attention": "viridis", "signed": "RdBu_r"}
OVERRIDES = Path(".hydra") / "overrides.yaml"  # Hydra writes a run's command-line overrides there
# (run, tag) series kept decoded; one is read again once its run has newer frames. 16 runs of 100 frames of the
# six tags a view reads stay below 100 series.
CACHED_SERIES = 512


def rounded(values: np.ndarray, digits: int = 4):
    """Nested lists of floats for JSON to `digits` significant digits of the largest (float16 has about 3), NaN as
    null (JSON has no NaN)."""
    values = values.astype(np.float64)
    largest = np.nanmax(np.abs(values), initial=0.0)
    decimals = digits - 1 - math.floor(math.log10(largest)) if largest > 0 else 0
    values = np.round(values, decimals)
    return np.where(np.isnan(values), None, values).tolist()


def run_labels(overrides: dict[str, list[str]]) -> dict[str, str]:
    """Each run named by the overrides that tell it apart from the others ("model.heads=2"); with nothing to compare
    (a single run) by all of its overrides; by its run name where that leaves nothing."""
    shared = set.intersection(*(set(o) for o in overrides.values())) if len(overrides) > 1 else set()
    return {run: " ".join(o for o in items if o not in shared) or run for run, items in overrides.items()}


def circuits(weights: np.ndarray, embedding: np.ndarray, positions: np.ndarray, unembedding: np.ndarray,
             heads: int, causal: bool) -> list[list[dict]]:
    """Per layer, per head, the direct-path circuits (LayerNorms and earlier layers left out), from
    weights [layer, 4, dim, dim] (W_Q, W_K, W_V, W_O; x @ W), embedding E and unembedding U [vocab, dim], positions
    P [query, dim]:
        qk_tokens     E·W_Q·W_Kᵀ·Eᵀ/√d  [query token, key token]: the score a query token gives a key token
        qk_positions  P·W_Q·W_Kᵀ·Pᵀ/√d  [query pos, key pos]: the score from positions alone (future keys NaN)
        ov            E·W_V·W_O·Uᵀ      [attended token, logit]: what attending to a token raises in the output"""
    weights, embedding, positions, unembedding = (a.astype(np.float32) for a in (weights, embedding, positions,
                                                                                 unembedding))
    d = weights.shape[-1] // heads
    future = np.triu(np.ones((len(positions), len(positions)), dtype=bool), 1)
    out = []
    for W_Q, W_K, W_V, W_O in weights:
        layer = []
        for head in range(heads):
            h = slice(head * d, (head + 1) * d)  # the head's columns of W_Q/W_K/W_V, rows of W_O
            qk_positions = (positions @ W_Q[:, h]) @ (positions @ W_K[:, h]).T / math.sqrt(d)
            if causal:
                qk_positions[future] = np.nan
            layer.append({
                "qk_tokens": (embedding @ W_Q[:, h]) @ (embedding @ W_K[:, h]).T / math.sqrt(d),
                "qk_positions": qk_positions,
                "ov": embedding @ W_V[:, h] @ W_O[h] @ unembedding.T,
            })
        out.append(layer)
    return out


class AttentionPlugin(base_plugin.TBPlugin):
    plugin_name = tags.PLUGIN

    def __init__(self, context: base_plugin.TBContext):
        self.data = context.data_provider
        self.logdir = context.logdir  # for the runs' .hydra/overrides.yaml; None or a URL: runs keep their names
        self.static = {f"/{p.name}": p for p in STATIC.iterdir() if p.suffix in CONTENT_TYPES}
        self.cache: OrderedDict[tuple[str, str], tuple[tuple, dict[int, np.ndarray]]] = OrderedDict()
        self.lock = threading.Lock()  # TensorBoard answers requests on several threads

    def get_plugin_apps(self):
        apps = {"/runs": self.runs_route, "/frames": self.frames_route, "/circuits": self.circuits_route,
                "/colormaps": self.colormaps_route}
        return {**apps, **{path: self.static_route for path in self.static}}

    def is_active(self) -> bool:
        # TensorBoard enables the tab when its data provider lists frames of this plugin's name; asked here only
        # when it lists none: then there is nothing to show.
        return False

    def frontend_metadata(self):
        return base_plugin.FrontendMetadata(es_module_path="/index.js", tab_name="Attention")

    @wrappers.Request.application
    def static_route(self, request):
        path = self.static[request.path[request.path.rindex("/"):]]
        return http_util.Respond(request, path.read_bytes(), CONTENT_TYPES[path.suffix])

    def series(self, request, runs: list[str] | None, tag_names: list[str]) -> dict[str, dict[str, dict]]:
        """{run: {tag: {step: array}}} for the runs named (all with None) and the tags asked. The data provider has
        no read of one step: each read decodes a tag's every frame. So a series is decoded once and kept while
        TensorBoard lists it unchanged (its last step and wall time): moving the slider reads nothing again."""
        ctx, experiment = plugin_util.context(request.environ), plugin_util.experiment_id(request.environ)
        wanted = provider.RunTagFilter(runs, tag_names)
        listed = self.data.list_tensors(ctx, experiment_id=experiment, plugin_name=tags.PLUGIN, run_tag_filter=wanted)
        versions = {(run, tag): (series.max_step, series.max_wall_time)
                    for run, by_tag in listed.items() for tag, series in by_tag.items()}
        out, stale = {}, set()
        with self.lock:
            for key, version in versions.items():
                kept = self.cache.get(key)
                if kept is not None and kept[0] == version:
                    self.cache.move_to_end(key)
                    out.setdefault(key[0], {})[key[1]] = kept[1]
                else:
                    stale.add(key)
        if stale:
            found = self.data.read_tensors(
                ctx, experiment_id=experiment, plugin_name=tags.PLUGIN, downsample=DOWNSAMPLE,
                run_tag_filter=provider.RunTagFilter(sorted({r for r, _ in stale}), sorted({t for _, t in stale})),
            )
            with self.lock:
                for run, tag in stale:
                    frames = {datum.step: datum.numpy for datum in found.get(run, {}).get(tag, [])}
                    self.cache[(run, tag)] = (versions[(run, tag)], frames)
                    out.setdefault(run, {})[tag] = frames
                while len(self.cache) > CACHED_SERIES:
                    self.cache.popitem(last=False)
        return out

    def overrides(self, run: str) -> list[str]:
        if not self.logdir or "://" in self.logdir:
            return []
        path = Path(self.logdir) / run / OVERRIDES
        if not path.is_file():
            return []
        import yaml  # PyYAML comes with Hydra: imported here, where a run has Hydra's files

        try:
            items = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            return []
        return [str(item) for item in items] if isinstance(items, list) else []

    def lengths(self, request) -> dict[str, list[int]]:
        """{run: the data lengths it has a probe at, ascending} from the tags TensorBoard lists (nothing decoded)."""
        ctx, experiment = plugin_util.context(request.environ), plugin_util.experiment_id(request.environ)
        listed = self.data.list_tensors(ctx, experiment_id=experiment, plugin_name=tags.PLUGIN,
                                        run_tag_filter=provider.RunTagFilter(None, None))
        return {run: sorted(n for tag in by_tag if (n := tags.frame_length(tag)) is not None
                            and tag == tags.frame_at(tags.FRAME_ALIGNMENT, n))
                for run, by_tag in listed.items()}

    @wrappers.Request.application
    def runs_route(self, request):
        found = self.series(request, None, [tags.FRAME_ALIGNMENT])
        lengths = self.lengths(request)
        alignments = {run: data[tags.FRAME_ALIGNMENT] for run, data in found.items() if data.get(tags.FRAME_ALIGNMENT)}
        overrides = {run: self.overrides(run) for run in alignments}
        labels = run_labels(overrides)
        answer = []
        for run in sorted(alignments):
            steps = sorted(alignments[run])
            last = alignments[run][steps[-1]]  # [layer, head]
            answer.append({"run": run, "label": labels[run], "overrides": overrides[run], "layers": last.shape[0],
                           "heads": last.shape[1], "steps": steps, "alignment": rounded(last),
                           "lengths": lengths.get(run, [])})
        return http_util.Respond(request, {"runs": answer}, "application/json")

    @staticmethod
    def length(request) -> int | None:
        """The length=N asked (the probe of data length N), or None: the training distribution's probe."""
        length = request.args.get("length", "")
        if length and not length.isdigit():
            raise errors.InvalidArgumentError(f"length must be a data length (an integer), got {length!r}")
        return int(length) if length else None

    def frames_at(self, request, wanted: list[str], length: int | None = None
                  ) -> list[tuple[str, int, dict[str, np.ndarray]]]:
        """(run, step, {tag: array}) for each run=R&step=S pair asked, in one read of the data provider (a step of
        the slider asks for every run shown at once). The tags of tags.FRAME_PER_PROBE among `wanted` are read at
        `length` (tags.frame_at) and keyed by their own name."""
        runs, steps = request.args.getlist("run"), request.args.getlist("step")
        if not runs or len(runs) != len(steps) or not all(s.lstrip("-").isdigit() for s in steps):
            raise errors.InvalidArgumentError("give run=<name>&step=<integer> pairs")
        read = {tag: tags.frame_at(tag, length) if tag in tags.FRAME_PER_PROBE else tag for tag in wanted}
        found = self.series(request, sorted(set(runs)), sorted(set(read.values())))
        frames = []
        for run, step in zip(runs, map(int, steps)):
            data = found.get(run, {})
            if length is not None and read[wanted[0]] not in data:  # wanted[0]: a tag of the probe
                raise errors.NotFoundError(f"run {run!r} has no Attention frames of length {length} (data.val_lengths)")
            if not data:
                raise errors.NotFoundError(f"run {run!r} has no Attention frames (logging.images_every_n_steps=0?)")
            arrays = {}
            for tag, name in read.items():
                if step not in data.get(name, {}):
                    raise errors.NotFoundError(f"run {run!r} has no {name} at step {step}")
                arrays[tag] = data[name][step]
            frames.append((run, step, arrays))
        return frames

    @wrappers.Request.application
    def frames_route(self, request):
        answer = []
        length = self.length(request)
        wanted = [tags.FRAME_ATTENTION, tags.FRAME_ALIGNMENT, tags.FRAME_PROBE]
        for run, step, frame in self.frames_at(request, wanted, length):
            labels = json.loads(frame[tags.FRAME_PROBE].item())
            answer.append({"run": run, "step": step, "length": length,
                           "attention": rounded(frame[tags.FRAME_ATTENTION]),
                           "alignment": rounded(frame[tags.FRAME_ALIGNMENT]), **labels})
        return http_util.Respond(request, {"frames": answer}, "application/json")

    @wrappers.Request.application
    def circuits_route(self, request):
        # The probe's labels, positions and alignment (for the heads' count) at the length asked; the weights the
        # frame's own.
        wanted = [tags.FRAME_ALIGNMENT, tags.FRAME_PROBE, tags.FRAME_POSITIONS, tags.FRAME_WEIGHTS,
                  tags.FRAME_EMBEDDING, tags.FRAME_UNEMBEDDING]
        length = self.length(request)
        answer = []
        for run, step, frame in self.frames_at(request, wanted, length):
            labels = json.loads(frame[tags.FRAME_PROBE].item())
            heads = frame[tags.FRAME_ALIGNMENT].shape[1]
            per_head = circuits(frame[tags.FRAME_WEIGHTS], frame[tags.FRAME_EMBEDDING], frame[tags.FRAME_POSITIONS],
                                frame[tags.FRAME_UNEMBEDDING], heads, labels["causal"])
            layers = [[{name: {"values": rounded(m), "scale": float(np.nanmax(np.abs(m)))} for name, m in h.items()}
                       for h in layer] for layer in per_head]
            answer.append({"run": run, "step": step, "vocab": labels["vocab"],
                           "positions": len(frame[tags.FRAME_POSITIONS]), "layers": layers})
        return http_util.Respond(request, {"circuits": answer}, "application/json")

    @wrappers.Request.application
    def colormaps_route(self, request):
        # Imported here, not at start-up: TensorBoard imports this module whether the tab is used or not.
        from matplotlib import colormaps, colors

        answer = {use: [colors.to_hex(c) for c in colormaps[name](np.linspace(0, 1, 256))]
                  for use, name in COLORMAPS.items()}
        return http_util.Respond(request, answer, "application/json")
