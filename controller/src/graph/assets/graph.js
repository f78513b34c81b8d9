// The service graph page: fetches /api/graph, draws it with Cytoscape.js (callers on the
// left, the fleet in the middle, Services and egress on the right), refreshes it in place,
// and shows the figures of what is clicked. Served by `weir-controller graph`.
'use strict';

const state = { cy: null, data: null, selected: null, loads: 0, shape: '', refreshMs: 5000 };

const params = new URLSearchParams(location.search);
const windowSelect = document.getElementById('window');

function colour(errorRatio, refusedRatio) {
  const bad = Math.max(errorRatio, refusedRatio);
  if (bad >= 0.05) return '#c62828';
  if (bad >= 0.01) return '#ef8f00';
  return '#2e7d32';
}

// Width follows the rate on a log scale, so a 1 rps edge stays visible next to a 1k rps one.
function width(rps, maxRps) {
  if (maxRps <= 0) return 2;
  return 1.5 + 8 * Math.log1p(rps) / Math.log1p(maxRps);
}

const fmt = {
  rps: v => v.toFixed(2) + ' req/s',
  ratio: v => (v * 100).toFixed(1) + '%',
  ms: v => (v === null || v === undefined) ? '–' : v.toFixed(1) + ' ms',
};

function elements(data) {
  const maxRps = Math.max(0, ...data.edges.map(e => e.rps + e.refused_per_s));
  const nodes = data.nodes.map(n => ({
    group: 'nodes',
    data: { id: n.id, label: n.label, kind: n.kind },
  }));
  const edges = data.edges.map(e => ({
    group: 'edges',
    data: {
      id: e.id, source: e.source, target: e.destination,
      label: e.rps > 0 ? e.rps.toFixed(1) + '/s' : 'refused',
      colour: colour(e.error_ratio, e.refused_ratio),
      width: width(e.rps + e.refused_per_s, maxRps),
      style: e.mtls ? 'solid' : 'dashed',
      refusedOnly: e.rps === 0,
    },
  }));
  return nodes.concat(edges);
}

const STYLE = [
  { selector: 'node', style: {
    'label': 'data(label)', 'font-size': 11, 'text-valign': 'bottom', 'text-margin-y': 4,
    'text-background-color': '#fff', 'text-background-opacity': 0.85, 'text-background-padding': 2,
    'width': 34, 'height': 34, 'background-color': '#607d8b', 'border-width': 2, 'border-color': '#fff',
  } },
  { selector: 'node[kind = "client"]', style: { 'shape': 'ellipse', 'background-color': '#9e9e9e' } },
  { selector: 'node[kind = "gateway"]', style: { 'shape': 'hexagon', 'background-color': '#1565c0', 'width': 44, 'height': 44 } },
  { selector: 'node[kind = "service"]', style: { 'shape': 'round-rectangle', 'background-color': '#00897b' } },
  { selector: 'node[kind = "external"]', style: { 'shape': 'diamond', 'background-color': '#6a1b9a' } },
  { selector: 'edge', style: {
    'curve-style': 'bezier', 'target-arrow-shape': 'triangle', 'arrow-scale': 0.9,
    'width': 'data(width)', 'line-color': 'data(colour)', 'target-arrow-color': 'data(colour)',
    'line-style': 'data(style)', 'label': 'data(label)', 'font-size': 9, 'color': '#37474f',
    'text-background-color': '#fff', 'text-background-opacity': 0.8, 'text-background-padding': 1,
  } },
  // Knocks that never became requests bend away from the hops that carry traffic.
  { selector: 'edge[?refusedOnly]', style: { 'curve-style': 'unbundled-bezier', 'control-point-distances': [-90], 'control-point-weights': [0.5] } },
  { selector: ':selected', style: { 'border-color': '#ffb300', 'border-width': 4, 'line-color': '#ffb300', 'target-arrow-color': '#ffb300' } },
];

// Three layers, left to right: who calls (callers nothing calls, and the clients without
// an identity), the fleet, and what is called. Within a layer, by name, so a node keeps its
// place from one refresh to the next.
function layer(node) {
  const kind = node.data('kind');
  if (kind === 'gateway') return 1;
  if (kind === 'client' || node.indegree(false) === 0) return 0;
  return 2;
}

function layout(cy) {
  const columns = [[], [], []];
  cy.nodes().forEach(n => columns[layer(n)].push(n));
  const positions = {};
  columns.forEach((nodes, col) => {
    nodes.sort((a, b) => a.id().localeCompare(b.id()));
    nodes.forEach((n, row) => {
      positions[n.id()] = { x: col * 340, y: (row - (nodes.length - 1) / 2) * 120 };
    });
  });
  cy.layout({
    name: 'preset', positions: n => positions[n.id()], fit: true, padding: 60, animate: false,
  }).run();
}

function render(data) {
  state.data = data;
  const els = elements(data);
  const shape = els.map(e => e.data.id).sort().join('\n');
  if (!state.cy) {
    state.cy = cytoscape({
      container: document.getElementById('cy'), elements: els, style: STYLE,
      wheelSensitivity: 0.3, minZoom: 0.2, maxZoom: 3,
    });
    state.cy.on('tap', 'node, edge', ev => select(ev.target.id()));
    state.cy.on('tap', ev => { if (ev.target === state.cy) select(null); });
    layout(state.cy);
  } else if (shape !== state.shape) {
    // Nodes or edges came or went: redraw and lay out again.
    state.cy.elements().remove();
    state.cy.add(els);
    layout(state.cy);
  } else {
    // The same graph with new figures: update in place, keep what the user arranged.
    for (const e of els) state.cy.getElementById(e.data.id).data(e.data);
  }
  state.shape = shape;
  document.getElementById('empty').hidden = data.edges.length > 0;
  document.getElementById('problems').textContent = (data.problems || []).join(' · ');
  if (state.selected) {
    const el = state.cy.getElementById(state.selected);
    if (el.length) el.select();
  }
  details();
}

function select(id) {
  state.selected = id;
  details();
}

function find(id) {
  if (!state.data || !id) return null;
  const node = state.data.nodes.find(n => n.id === id);
  if (node) return { kind: 'node', item: node };
  const edge = state.data.edges.find(e => e.id === id);
  return edge ? { kind: 'edge', item: edge } : null;
}

// One figure row; `data-figure` and `data-value` let a test read what a person sees.
function row(dl, name, label, value, text) {
  const dt = document.createElement('dt');
  dt.textContent = label;
  const dd = document.createElement('dd');
  dd.dataset.figure = name;
  dd.dataset.value = value === null || value === undefined ? '' : String(value);
  dd.textContent = text;
  dl.append(dt, dd);
}

function list(parent, title, items) {
  if (!items.length) return;
  const h = document.createElement('h3');
  h.textContent = title;
  const ul = document.createElement('ul');
  ul.dataset.list = title.toLowerCase();
  for (const i of items) {
    const li = document.createElement('li');
    li.textContent = i;
    ul.append(li);
  }
  parent.append(h, ul);
}

function details() {
  const title = document.getElementById('details-title');
  const kind = document.getElementById('details-kind');
  const dl = document.getElementById('details-figures');
  const lists = document.getElementById('details-lists');
  dl.replaceChildren();
  lists.replaceChildren();
  const found = find(state.selected);
  if (!found) {
    title.textContent = state.selected ? 'No traffic in this window' : 'Click a node or an edge';
    kind.textContent = '';
    return;
  }
  const x = found.item;
  if (found.kind === 'node') {
    title.textContent = x.label;
    kind.textContent = x.kind + (x.namespace ? ' in ' + x.namespace : '');
    row(dl, 'rps', 'Requests', x.rps, fmt.rps(x.rps));
    row(dl, 'rps_out', 'Sent on', x.rps_out, fmt.rps(x.rps_out));
  } else {
    title.textContent = x.source + ' → ' + x.destination;
    kind.textContent = x.mtls ? 'mTLS' : 'not mTLS';
    row(dl, 'rps', 'Requests', x.rps, fmt.rps(x.rps));
    row(dl, 'mtls', 'mTLS', x.mtls, x.mtls ? 'yes' : 'no');
  }
  row(dl, 'error_ratio', 'Errors (5xx)', x.error_ratio, fmt.ratio(x.error_ratio));
  row(dl, 'p50_ms', 'p50', x.p50_ms, fmt.ms(x.p50_ms));
  row(dl, 'p99_ms', 'p99', x.p99_ms, fmt.ms(x.p99_ms));
  row(dl, 'rate_limited_ratio', 'Rate limited', x.rate_limited_ratio, fmt.ratio(x.rate_limited_ratio));
  row(dl, 'denied_ratio', 'Denied (401/403)', x.denied_ratio, fmt.ratio(x.denied_ratio));
  row(dl, 'refused_ratio', 'Refused at handshake', x.refused_ratio, fmt.ratio(x.refused_ratio));
  row(dl, 'refused_per_s', 'Refused', x.refused_per_s, x.refused_per_s.toFixed(2) + ' conn/s');
  const zoneOf = found.kind === 'node' ? x : state.data.nodes.find(n => n.id === x.destination);
  if (zoneOf && zoneOf.zone) {
    const z = zoneOf.zone;
    row(dl, 'in_zone_share', 'In-zone share', z.in_zone_share, fmt.ratio(z.in_zone_share));
    row(dl, 'cross_rps', 'Across zones', z.cross_rps, fmt.rps(z.cross_rps));
  }
  list(lists, 'Status codes', Object.entries(x.codes).map(([c, v]) => c + ': ' + fmt.rps(v)));
  list(lists, 'Routes', x.routes);
  list(lists, 'Backends', x.backends);
  if (found.kind === 'node' && x.kind === 'gateway') {
    list(lists, 'Rate limit policies', state.data.rate_limits.map(p =>
      p.policy + ': ' + fmt.rps(p.allowed_rps) + ' allowed, ' + fmt.rps(p.limited_rps) +
      ' limited, ' + fmt.rps(p.shadow_limited_rps) + ' shadow'));
  }
  // Authorization: every policy on a gateway; a Service's namespace's policies on it.
  if (found.kind === 'node' && (x.kind === 'gateway' || x.kind === 'service')) {
    const mine = state.data.authz.filter(p =>
      x.kind === 'gateway' || p.policy.split('/')[0] === x.namespace);
    list(lists, 'Authorization policies', mine.map(p =>
      p.policy + ' (' + p.action + '): ' + fmt.rps(p.allowed_rps) + ' allowed, ' +
      fmt.rps(p.denied_rps) + ' denied' +
      (p.shadow_denied_rps > 0 ? ', ' + fmt.rps(p.shadow_denied_rps) + ' would be denied (Shadow)' : '') +
      (p.audited_rps > 0 ? ', ' + fmt.rps(p.audited_rps) + ' audited' : '')));
  }
}

async function load() {
  const status = document.getElementById('status');
  try {
    const resp = await fetch('/api/graph?window=' + encodeURIComponent(windowSelect.value));
    const body = await resp.json();
    if (!resp.ok) throw new Error(body.error || resp.statusText);
    render(body);
    state.loads += 1;
    status.className = '';
    status.textContent = 'updated ' + new Date().toLocaleTimeString() + ' · window ' + body.window;
  } catch (e) {
    status.className = 'error';
    status.textContent = 'cannot load the graph: ' + e.message;
  }
}

async function start() {
  try {
    const config = await (await fetch('/api/config')).json();
    state.refreshMs = config.refresh_ms;
    windowSelect.value = params.get('window') || config.default_window;
  } catch (e) { /* the defaults serve */ }
  if (!windowSelect.value) windowSelect.value = '5m';
  windowSelect.addEventListener('change', () => {
    params.set('window', windowSelect.value);
    history.replaceState(null, '', '?' + params);
    load();
  });
  await load();
  setInterval(load, state.refreshMs);
}

// For tests and the curious: what is drawn, and from which data.
window.weirGraph = {
  cy: () => state.cy,
  data: () => state.data,
  loads: () => state.loads,
  selected: () => state.selected,
};

start();
