// The Attention tab. TensorBoard loads this module in an iframe (/data/plugin_entry.html?name=attnlab) and calls
// render(); fetch('./runs') reaches /data/plugin/attnlab/runs. Everything the page needs comes from the plugin's
// own routes (the iframe's content security policy blocks anything else).
//
// Page: run picker | one step slider for the runs shown | the probe's length (data.val_lengths) | colour legend,
// then per run a grid of layers x heads, each head's attention on the probe example with its tokens as labels, and
// on demand its QK/OV circuits.

import {colourOf, el, heatmap, legend} from './heatmap.js';

const MAX_SHOWN = 16;  // runs shown at first; the others can be ticked in the picker
const RELOAD_MS = 30_000;  // as TensorBoard's own auto-reload

const state = {
  runs: [],  // from ./runs: {run, label, overrides, layers, heads, steps, alignment, lengths}
  shown: new Set(),
  steps: [],  // union of the shown runs' logged steps, ascending: the slider's stops
  length: null,  // the probe shown: null the training distribution's, N the one of data length N (data.val_lengths)
  circuits: false,
  scales: null,  // {attention: [256 CSS colours], signed: [...]}
  views: new Map(),  // run -> its section, and per probe length its heatmaps, built once each
  cache: new Map(),  // "route length run step" -> promise of the JSON answer
  drawn: 0,  // the latest draw asked for; answers for older ones are dropped
};

async function getJSON(path) {
  const response = await fetch(path);
  if (!response.ok) throw new Error(`${path}: ${response.status} ${await response.text()}`);
  return response.json();
}

/**
 * The route's answers for [run, step] pairs, from the cache or in one request for all those missing (a move of
 * the step slider asks for every run shown at once). route: 'frames' or 'circuits'; length: of the probe (null:
 * the training distribution's).
 */
function cached(route, pairs, length) {
  const key = ([run, step]) => `${route} ${length ?? ''} ${run} ${step}`;
  const missing = pairs.filter((pair) => !state.cache.has(key(pair)));
  if (missing.length) {
    const query = new URLSearchParams();
    if (length !== null) query.append('length', length);
    for (const [run, step] of missing) {
      query.append('run', run);
      query.append('step', step);
    }
    const answer = getJSON(`./${route}?${query}`);
    missing.forEach((pair, i) => state.cache.set(key(pair), answer.then((all) => all[route][i])));
    answer.catch(() => missing.forEach((pair) => state.cache.delete(key(pair))));  // asked again next time
  }
  return Promise.all(pairs.map((pair) => state.cache.get(key(pair))));
}

export async function render() {
  const style = el('link');
  style.rel = 'stylesheet';
  style.href = './style.css';
  document.head.append(style);
  const status = el('p', 'status', 'Loading the runs…');
  document.body.append(status);
  let runs;
  [state.scales, {runs}] = await Promise.all([getJSON('./colormaps'), getJSON('./runs')]);
  state.runs = runs;
  if (!runs.length) {
    status.textContent = 'No run here has Attention frames (they are written with the images, every ' +
        'logging.images_every_n_steps steps).';
    return;
  }
  status.remove();
  runs.slice(0, MAX_SHOWN).forEach((r) => state.shown.add(r.run));
  document.body.append(controls(), el('main', 'runs'));
  updateSteps(true);
  setInterval(reload, RELOAD_MS);
}

function controls() {
  const picker = el('fieldset', 'picker');
  fillPicker(picker);
  const slider = el('input');
  slider.type = 'range';
  slider.id = 'step';
  slider.min = 0;
  slider.step = 1;
  slider.setAttribute('aria-label', 'step');
  slider.addEventListener('input', () => draw());
  const stepLabel = el('output', 'step-value');
  stepLabel.htmlFor = 'step';
  const signed = legend(state.scales.signed, 'circuits (each map on its own ± scale, in its title)',
                        ['−max', '0', '+max']);
  signed.hidden = true;
  const circuits = el('input');
  circuits.type = 'checkbox';
  circuits.id = 'circuits';
  circuits.addEventListener('change', () => {
    state.circuits = circuits.checked;
    signed.hidden = !circuits.checked;
    draw();
  });
  const circuitsLabel = el('label', 'circuits-choice', [circuits, el('span', '', 'QK / OV circuits')]);
  const lengths = el('select');
  lengths.id = 'length';
  lengths.addEventListener('change', () => {
    state.length = lengths.value === '' ? null : Number(lengths.value);
    draw();
  });
  const lengthChoice = el('label', 'length-choice', [el('span', '', 'Probe'), lengths]);
  fillLengths(lengthChoice);
  const stepper = el('div', 'stepper', [el('label', '', 'Step'), slider, stepLabel, lengthChoice, circuitsLabel]);
  const legends = el('div', 'legends', [
    legend(state.scales.attention, 'attention weight', ['0', '0.5', '1']),
    signed,
    el('span', 'target-key', 'outlined: the target pattern\'s cells'),
  ]);
  return el('header', '', [picker, stepper, legends]);
}

/** The run picker's choices, one per run, and the overrides all runs share. */
function fillPicker(picker) {
  picker.replaceChildren(el('legend', '', 'Runs'));
  for (const r of state.runs) {
    const box = el('input');
    box.type = 'checkbox';
    box.checked = state.shown.has(r.run);
    box.value = r.run;
    box.addEventListener('change', () => {
      box.checked ? state.shown.add(r.run) : state.shown.delete(r.run);
      updateSteps(false);
    });
    const best = bestAlignment(r.alignment);
    const label = el('label', 'run-choice', [box, el('span', '', r.label)]);
    if (best !== null) label.append(el('span', 'run-best', `alignment ${best.toFixed(2)}`));
    label.title = [r.run, ...r.overrides].join('\n');
    picker.append(label);
  }
  const shared = sharedOverrides();
  if (shared.length) picker.append(el('p', 'shared', `All: ${shared.join(' ')}`));
}

/**
 * The probe selector's choices: the training distribution's probe, then every data length a run has a probe at
 * (data.val_lengths), ascending. Hidden where no run has one; a choice no run has any more falls back to the first.
 */
function fillLengths(choice) {
  const select = choice.querySelector('select');
  const lengths = [...new Set(state.runs.flatMap((r) => r.lengths || []))].sort((a, b) => a - b);
  const option = (value, text) => {
    const o = el('option', '', text);
    o.value = value;
    return o;
  };
  select.replaceChildren(option('', 'training distribution'), ...lengths.map((n) => option(`${n}`, `length ${n}`)));
  if (state.length !== null && !lengths.includes(state.length)) state.length = null;
  select.value = state.length === null ? '' : `${state.length}`;
  choice.hidden = !lengths.length;
}

/**
 * New frames of the runs still training, and new runs, every RELOAD_MS (TensorBoard's own reload does not reach
 * the tab's iframe). The slider stays on the last step if it was there.
 */
async function reload() {
  let runs;
  try {
    ({runs} = await getJSON('./runs'));
  } catch {
    return;  // the server is gone or busy: try again next time
  }
  const atEnd = Number(document.getElementById('step').value) === state.steps.length - 1;
  const known = new Set(state.runs.map((r) => r.run));
  for (const r of runs) if (!known.has(r.run) && state.shown.size < MAX_SHOWN) state.shown.add(r.run);
  state.runs = runs;
  fillPicker(document.querySelector('.picker'));
  fillLengths(document.querySelector('.length-choice'));
  for (const r of runs) {
    const view = state.views.get(r.run);
    if (view) view.label.textContent = r.label;  // a new run can change what tells the runs apart
  }
  updateSteps(atEnd);
}

/** As align/best, of the last frame: per layer with a target its best head, then the weakest such layer. */
function bestAlignment(alignment) {
  const perLayer = alignment.map((heads) => heads.filter((a) => a !== null))
      .filter((heads) => heads.length).map((heads) => Math.max(...heads));
  return perLayer.length ? Math.min(...perLayer) : null;
}

function sharedOverrides() {
  if (state.runs.length < 2) return [];
  return state.runs[0].overrides.filter((o) => state.runs.every((r) => r.overrides.includes(o)));
}

/** The slider's stops: every step any shown run logged. keepEnd: start at the last one. */
function updateSteps(keepEnd) {
  const slider = document.getElementById('step');
  const old = state.steps[Number(slider.value)];
  const steps = new Set();
  for (const r of state.runs) if (state.shown.has(r.run)) r.steps.forEach((s) => steps.add(s));
  state.steps = [...steps].sort((a, b) => a - b);
  slider.max = Math.max(0, state.steps.length - 1);
  const at = keepEnd || old === undefined ? state.steps.length - 1 : nearestIndex(state.steps, old);
  slider.value = Math.max(0, at);
  slider.disabled = state.steps.length < 2;
  draw();
}

/** Index of the last of `steps` at or before `step` (the first one if none is). */
function nearestIndex(steps, step) {
  let i = 0;
  while (i + 1 < steps.length && steps[i + 1] <= step) i++;
  return i;
}

async function draw() {
  const drawing = ++state.drawn;
  const step = state.steps[Number(document.getElementById('step').value)];
  document.querySelector('.step-value').textContent = step === undefined ? '' : `${step}`;
  const main = document.querySelector('main.runs');
  const length = state.length;
  const shown = state.runs.filter((r) => state.shown.has(r.run));
  // Side by side at the same length: the runs that have a probe of it (all of them for the training distribution's).
  const having = shown.filter((r) => length === null || (r.lengths || []).includes(length));
  // Each run's own frame at or before the shared step.
  const pairs = having.map((r) => [r.run, r.steps[nearestIndex(r.steps, step)]]);
  try {
    const [frames, circuits] = await Promise.all([
      cached('frames', pairs, length),
      state.circuits ? cached('circuits', pairs, length) : pairs.map(() => null),
    ]);
    if (drawing !== state.drawn) return;  // the slider has moved on
    having.forEach((r, i) => drawRun(r, frames[i], circuits[i], length));
    shown.filter((r) => !having.includes(r)).forEach((r) => drawMissing(r, length));
  } catch (error) {
    showError(error);
    return;
  }
  if (drawing !== state.drawn) return;
  // Sections in the picker's order, the unticked ones hidden (kept: ticking a run again costs nothing). Moved
  // only when new: moving a section lays the page out again.
  let previous = null;
  for (const r of state.runs) {
    const view = state.views.get(r.run);
    if (!view) continue;
    const hidden = !state.shown.has(r.run);
    if (view.section.hidden !== hidden) view.section.hidden = hidden;
    if (view.section.parentElement !== main) {
      main.insertBefore(view.section, previous ? previous.nextSibling : main.firstChild);
    }
    previous = view.section;
  }
  document.body.dataset.step = `${step}`;  // for tests: the step whose frames are on the page, and the probe's length
  document.body.dataset.length = length === null ? 'training' : `${length}`;
}

function showError(error) {
  const main = document.querySelector('main.runs');
  main.prepend(el('p', 'error', String(error.message || error)));
}

function drawRun(r, frame, circuits, length) {
  const view = state.views.get(r.run) || buildRun(r);
  const part = showPart(view, length) || buildPart(view, frame, length);
  view.stepNote.textContent = `step ${frame.step}` + (length === null ? '' : ` · length ${length}`);
  view.missing.hidden = true;
  const scale = state.scales.attention;
  const colour = (v) => colourOf(scale, v, 0, 1);
  frame.attention.forEach((heads, layer) => heads.forEach((values, head) => {
    const align = frame.alignment[layer][head];
    const kind = frame.kind ? frame.kind[layer][head] : null;  // [its best kind, the score], on this example
    const caption = `layer ${layer} · head ${head}` + (align === null ? '' : ` · alignment ${align.toFixed(2)}`)
      + (kind === null ? '' : ` · ${kind[0]} ${kind[1].toFixed(2)}`);
    const target = part.targets[layer];  // one set of cells for any head, or (per-head targets) one per head
    part.heads[layer][head].update(values, colour, Array.isArray(target) ? (target[head] || null) : target, caption);
  }));
  part.circuits.hidden = !circuits;
  if (circuits) drawCircuits(part, circuits);
}

/** A run without a probe of the length chosen (its data.val_lengths lack it): a line saying so, no maps. */
function drawMissing(r, length) {
  const view = state.views.get(r.run) || buildRun(r);
  showPart(view, length);
  view.stepNote.textContent = '';
  view.missing.textContent = `No probe of length ${length}: not among this run's data.val_lengths.`;
  view.missing.hidden = false;
}

/** Shows the run's maps of the probe of `length`, hiding the others; that part, or undefined if not built yet. */
function showPart(view, length) {
  for (const [key, part] of view.parts) part.element.hidden = key !== length;
  return view.parts.get(length);
}

function tokenName(frame, id) {
  return id === null ? '·' : frame.vocab[id];
}

function buildRun(r) {
  const stepNote = el('span', 'step-note');
  const label = el('span', 'run-label', r.label);
  const heading = el('h2', '', [label, stepNote]);
  heading.title = r.run;
  const missing = el('p', 'missing');
  missing.hidden = true;
  const section = el('section', 'run', [heading, missing]);
  section.dataset.run = r.run;
  const view = {section, label, stepNote, missing, parts: new Map()};
  state.views.set(r.run, view);
  return view;
}

/** The heatmaps of one probe (its tokens and shape: one per length), built at its first frame. */
function buildPart(view, frame, length) {
  const tokens = frame.tokens.map((id) => tokenName(frame, id));
  const predicts = frame.predict.map((id) => (id === null ? null : tokenName(frame, id)));
  const rowLabels = tokens.map((t, q) => ({text: t, note: predicts[q] === null ? null : `→ ${predicts[q]}`}));
  const describe = (q, k, w) => `query ${q} “${tokens[q]}”` +
      (predicts[q] === null ? '' : ` (predicts “${predicts[q]}”)`) +
      ` · key ${k} “${tokens[k]}” · weight ${w === null ? 'masked' : w.toFixed(3)}`;
  const grid = el('div', 'grid');
  grid.style.gridTemplateColumns = `repeat(${frame.attention[0].length}, max-content)`;
  const heads = frame.attention.map((layerHeads, layer) => layerHeads.map((_, head) => {
    const map = heatmap({caption: `layer ${layer} · head ${head}`, rowLabels, colLabels: tokens,
                         corner: 'query ╲ key', describe});
    map.element.dataset.layer = layer;
    map.element.dataset.head = head;
    grid.append(map.element);
    return map;
  }));
  const cellSet = (cells) => new Set(cells.map(([q, k]) => `${q},${k}`));
  const targets = frame.targets.map((cells) => (cells === null ? null
      : Array.isArray(cells) ? cellSet(cells) : cells.heads.map(cellSet)));
  const circuits = el('div', 'circuits');
  circuits.hidden = true;
  const element = el('div', 'probe', [grid, circuits]);
  element.dataset.length = length === null ? 'training' : `${length}`;
  view.section.append(element);
  const part = {element, heads, targets, circuits, circuitMaps: null};
  view.parts.set(length, part);
  return part;
}

const CIRCUITS = [
  // [name in the route's answer, caption, row labels, column labels, what a row/column is]
  ['qk_tokens', 'QK tokens', 'vocab', 'vocab', ['query token', 'key token']],
  ['qk_positions', 'QK positions', 'positions', 'positions', ['query position', 'key position']],
  ['ov', 'OV', 'vocab', 'vocab', ['attended token', 'raised logit']],
];

function drawCircuits(part, answer) {
  const positions = Array.from({length: answer.positions}, (_, i) => `${i}`);
  const axes = {vocab: answer.vocab, positions};
  if (!part.circuitMaps) {
    part.circuits.append(el('h3', '', 'Circuits through the embeddings (direct path; norms left out)'));
    part.circuitMaps = answer.layers.map((heads, layer) => heads.map((_, head) => {
      const row = el('div', 'circuit-row', [el('span', 'circuit-head', `layer ${layer} · head ${head}`)]);
      part.circuits.append(row);
      return CIRCUITS.map(([name, caption, rows, cols, [rowName, colName]]) => {
        const map = heatmap({
          caption, rowLabels: axes[rows], colLabels: axes[cols], corner: `${rowName} ╲ ${colName}`,
          describe: (i, j, v) => `${rowName} “${axes[rows][i]}” · ${colName} “${axes[cols][j]}” · ` +
              (v === null ? 'masked (future key)' : v.toFixed(3)),
        });
        map.element.dataset.circuit = name;
        row.append(map.element);
        return map;
      });
    }));
  }
  answer.layers.forEach((heads, layer) => heads.forEach((maps, head) => {
    CIRCUITS.forEach(([name, caption], i) => {
      const {values, scale} = maps[name];
      const colour = (v) => colourOf(state.scales.signed, v, -scale, scale);
      part.circuitMaps[layer][head][i].update(values, colour, null, `${caption} · ±${scale.toPrecision(3)}`);
    });
  }));
}
