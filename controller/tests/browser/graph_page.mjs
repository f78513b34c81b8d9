// Drives Debian's chromium through the service graph page, for sidecar/tests/graph_page.rs:
// waits for the graph, clicks a node and an edge as a person would (on the canvas), takes a
// screenshot, and prints one JSON report on stdout for the Rust test to judge.
//
// usage: node graph_page.mjs PAGE_URL SCREENSHOT_PATH NODE_ID EDGE_ID
import { chromium } from 'playwright-core';

const [url, screenshot, nodeId, edgeId] = process.argv.slice(2);
const origin = new URL(url).origin;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update'],
});
const report = { errors: [], foreign_requests: [] };
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 800 } });
  page.on('pageerror', e => report.errors.push(String(e)));
  page.on('console', m => { if (m.type() === 'error') report.errors.push(m.text()); });
  // Nothing may come from anywhere but the binary (no CDN).
  page.on('request', r => { if (!r.url().startsWith(origin)) report.foreign_requests.push(r.url()); });
  await page.goto(url);
  await page.waitForFunction(
    ([n, e]) => window.weirGraph && window.weirGraph.cy() &&
      window.weirGraph.cy().getElementById(n).length > 0 &&
      window.weirGraph.cy().getElementById(e).length > 0,
    [nodeId, edgeId], { timeout: 30000 });
  // Stop the refresh from swapping the data between a click and the read of the panel.
  const drawn = await page.evaluate(() => {
    const cy = window.weirGraph.cy();
    return {
      nodes: cy.nodes().map(n => ({ id: n.id(), kind: n.data('kind') })),
      edges: cy.edges().map(e => ({ id: e.id(), source: e.source().id(), target: e.target().id(),
        colour: e.data('colour'), style: e.data('style'), width: e.data('width') })),
      data: window.weirGraph.data(),
    };
  });
  report.drawn = drawn;

  const box = await page.locator('#cy').boundingBox();
  const clickOn = async (id) => {
    const at = await page.evaluate(id => {
      const el = window.weirGraph.cy().getElementById(id);
      return el.isNode() ? el.renderedPosition() : el.renderedMidpoint();
    }, id);
    await page.mouse.click(box.x + at.x, box.y + at.y);
    await page.waitForFunction(id => window.weirGraph.selected() === id, id, { timeout: 5000 });
    return page.evaluate(() => ({
      title: document.getElementById('details-title').textContent,
      figures: Object.fromEntries([...document.querySelectorAll('#details-figures dd')]
        .map(dd => [dd.dataset.figure, { value: dd.dataset.value, text: dd.textContent }])),
      lists: Object.fromEntries([...document.querySelectorAll('#details-lists ul')]
        .map(ul => [ul.dataset.list, [...ul.querySelectorAll('li')].map(li => li.textContent)])),
      // The data the panel was drawn from, read in the same turn as the panel.
      data: window.weirGraph.data(),
    }));
  };
  report.node_click = await clickOn(nodeId);
  report.edge_click = await clickOn(edgeId);
  await page.screenshot({ path: screenshot });
} catch (e) {
  report.errors.push('driver: ' + (e.stack || e));
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(report) + '\n');
