// A labelled heatmap as an HTML table: the labels are text in the page (selectable, read by screen readers and
// tests), each value a <td class="cell"> coloured from a 256-colour scale. Built once per shape; a new step only
// recolours the cells, so moving the step slider over 16 runs touches no layout.

const tooltip = document.createElement('div');
tooltip.className = 'tooltip';
tooltip.hidden = true;

/** Colour of `value` on a 256-entry scale over [lo, hi]; null (a masked cell) is left blank. */
export function colourOf(scale, value, lo, hi) {
  if (value === null || Number.isNaN(value)) return '';
  const t = (value - lo) / (hi - lo || 1);
  return scale[Math.max(0, Math.min(255, Math.round(t * 255)))];
}

/**
 * A heatmap of rows x cols. rowLabels/colLabels: arrays of strings or of {text, note} (note shown muted after the
 * text: the token a query should predict). describe(row, col) -> the hover text of a cell.
 * Returns {element, update(values, colour, outlined)}: values [row][col], colour(value) -> CSS colour,
 * outlined: a Set of "row,col" keys to outline (the target's cells), or null.
 */
export function heatmap({caption, rowLabels, colLabels, corner, describe}) {
  const figure = el('figure', 'heatmap');
  const title = el('figcaption', '', caption);
  const table = el('table');
  const head = el('tr');
  head.append(el('th', 'corner', corner || ''));
  for (const label of colLabels) head.append(labelCell('col', label));
  const body = el('tbody');
  const cells = [];
  for (const label of rowLabels) {
    const tr = el('tr');
    tr.append(labelCell('row', label));
    const row = [];
    for (let c = 0; c < colLabels.length; c++) {
      const td = el('td', 'cell');
      tr.append(td);
      row.push(td);
    }
    body.append(tr);
    cells.push(row);
  }
  table.append(el('thead', '', [head]), body);
  figure.append(title, table);

  let current = null;
  table.addEventListener('mousemove', (event) => {
    const td = event.target.closest('td.cell');
    if (!td || !current) return void (tooltip.hidden = true);
    const row = td.parentElement.rowIndex - 1;  // the header row comes first
    const col = td.cellIndex - 1;  // the row label comes first
    tooltip.textContent = describe(row, col, current[row][col]);
    tooltip.hidden = false;
    // Beside the pointer, on its left near the right edge (the grid of the last run reaches it).
    const right = event.clientX + 14 + tooltip.offsetWidth > window.innerWidth;
    tooltip.style.left = `${right ? event.clientX - 14 - tooltip.offsetWidth : event.clientX + 14}px`;
    tooltip.style.top = `${event.clientY + 14}px`;
  });
  table.addEventListener('mouseleave', () => void (tooltip.hidden = true));
  if (!tooltip.isConnected) document.body.append(tooltip);

  function update(values, colour, outlined, newCaption) {
    current = values;
    if (newCaption !== undefined) title.textContent = newCaption;
    for (let r = 0; r < cells.length; r++) {
      for (let c = 0; c < cells[r].length; c++) {
        const td = cells[r][c];
        td.style.backgroundColor = colour(values[r][c]);
        td.classList.toggle('masked', values[r][c] === null);
        td.classList.toggle('target', outlined !== null && outlined.has(`${r},${c}`));
      }
    }
  }
  return {element: figure, update};
}

/** A colour bar with its ends and middle as text. */
export function legend(scale, caption, ticks) {
  const stops = scale.filter((_, i) => i % 16 === 0 || i === 255);
  const bar = el('div', 'bar');
  bar.style.background = `linear-gradient(to right, ${stops.join(', ')})`;
  const labels = el('div', 'ticks', ticks.map((t) => el('span', '', t)));
  return el('div', 'legend', [el('span', 'legend-caption', caption), el('div', 'legend-scale', [bar, labels])]);
}

function labelCell(kind, label) {
  const th = el('th', kind);
  th.scope = kind;
  const {text, note} = typeof label === 'string' ? {text: label, note: null} : label;
  th.append(el('span', 'token', text));
  if (note !== null && note !== undefined) th.append(el('span', 'note', note));
  return th;
}

/** document.createElement with a class and children (a string, or an array of nodes). */
export function el(tag, className = '', children = null) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (typeof children === 'string') node.textContent = children;
  else if (children) node.append(...children);
  return node;
}
