import type { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Snapshot } from '../../src/dashboard/snapshot';
import { cli, cliPath, networkKeyFile, sleep } from '../../src/testbed/agents';
import { startMeshBed, type MeshBed } from '../../src/testbed/mesh';

/**
 * The dashboard in a real browser: three agents with real etcd, `cladnet dashboard` as its own
 * process in the router namespace (where etcd is), Debian's chromium driven by playwright-core
 * (started in the same namespace through a small wrapper, so it reaches 127.0.0.1 there). The page
 * shows 3 hosts and 6 RTT cells with numbers; an agent stopped gracefully turns its row and column
 * to "down" within 5 s without a reload (its alive and view keys go with its lease).
 */
const isRoot = process.getuid?.() === 0;

// The little of the DOM that the page functions below use: they run in the browser, and the tests'
// type check has no DOM library (module-scoped, so they shadow nothing elsewhere).
interface PageElement {
  readonly textContent: string | null;
  readonly className: string;
  getAttribute(name: string): string | null;
}
declare const document: {
  querySelectorAll(selector: string): ArrayLike<PageElement> & Iterable<PageElement>;
  querySelector(selector: string): PageElement | null;
};
declare const window: object;
const CHROMIUM = '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** `cladnet dashboard` in the router namespace (where etcd is), listening on its loopback. */
function spawnDashboard(bed: MeshBed, port: number, logFile: string): ChildProcess {
  return bed.topo.spawn(
    bed.topo.routerNs,
    [process.execPath, cliPath(), 'dashboard', '--listen', `127.0.0.1:${port}`, '--etcd', bed.etcd.endpoint, '--network', bed.network],
    { logFile },
  );
}

/**
 * Debian's chromium inside namespace `ns` with a fresh profile under `outDir`: playwright talks to
 * it over inherited pipes, which `ip netns exec` keeps.
 */
/**
 * Removes `outDir` (each run left its screenshots and logs in /tmp before); with
 * CLADNET_KEEP_SCREENSHOTS=1 only the browser profiles go, and the screenshots stay for a look.
 */
function removeOutDir(outDir: string | undefined): void {
  if (!outDir || !fs.existsSync(outDir)) return;
  if (process.env.CLADNET_KEEP_SCREENSHOTS !== '1') {
    fs.rmSync(outDir, { recursive: true, force: true });
    return;
  }
  for (const f of fs.readdirSync(outDir)) if (f.startsWith('profile-')) fs.rmSync(path.join(outDir, f), { recursive: true, force: true });
}

function launchChromiumIn(ns: string, outDir: string): Promise<BrowserContext> {
  const wrapper = path.join(outDir, 'chromium-in-netns.sh');
  fs.writeFileSync(wrapper, `#!/bin/sh\nexec ip netns exec ${ns} ${CHROMIUM} "$@"\n`, { mode: 0o755 });
  return chromium.launchPersistentContext(fs.mkdtempSync(path.join(outDir, 'profile-')), {
    executablePath: wrapper,
    args: CHROMIUM_ARGS,
    viewport: { width: 1280, height: 860 },
  });
}

describe.skipIf(!isRoot)('cladnet dashboard in a browser', () => {
  let bed: MeshBed;
  let dash: ChildProcess;
  let context: BrowserContext;
  let page: Page;
  let outDir: string;
  let dashLog: string;
  const port = 18_000 + Math.floor(Math.random() * 2_000);
  const url = `http://127.0.0.1:${port}`;

  /** GET `p` from inside the router namespace (the dashboard listens on its loopback). */
  const fetchIn = async (p: string): Promise<string> => {
    const r = await bed.topo.tryExec(bed.topo.routerNs, ['curl', '-fsS', '--max-time', '3', `${url}${p}`], { timeoutMs: 5_000 });
    if (r.code !== 0) throw new Error(`GET ${p}: exit ${r.code} ${r.stderr}`);
    return r.stdout;
  };

  beforeAll(async () => {
    outDir = fs.mkdtempSync(path.join(os.tmpdir(), 'cladnet-dashboard-test-'));
    bed = await startMeshBed({ topology: { hosts: 3 } });
    dashLog = path.join(outDir, 'dashboard.log');
    dash = spawnDashboard(bed, port, dashLog);
    const deadline = Date.now() + 15_000;
    for (;;) {
      try {
        await fetchIn('/api/snapshot');
        break;
      } catch (e) {
        if (Date.now() > deadline || dash.exitCode !== null) throw new Error(`dashboard not up: ${(e as Error).message}\n${fs.readFileSync(dashLog, 'utf8')}`);
        await sleep(200);
      }
    }
    context = await launchChromiumIn(bed.topo.routerNs, outDir);
    page = await context.newPage();
  }, 120_000);

  afterAll(async () => {
    await context?.close().catch(() => undefined);
    removeOutDir(outDir);
    if (dash && dash.exitCode === null) {
      dash.kill('SIGTERM');
      await new Promise((r) => {
        const t = setTimeout(() => {
          dash.kill('SIGKILL');
          r(undefined);
        }, 3_000);
        dash.once('exit', () => {
          clearTimeout(t);
          r(undefined);
        });
      });
    }
    await bed?.destroy();
  });

  it('serves a snapshot with the three hosts up and every ordered pair measured', async () => {
    let snap: Snapshot | undefined;
    const deadline = Date.now() + 15_000;
    do {
      snap = JSON.parse(await fetchIn('/api/snapshot')) as Snapshot;
      if (snap.links.filter((l) => l.state === 'up' && l.rttMs !== null).length === 6) break;
      await sleep(250);
    } while (Date.now() < deadline);
    expect(snap!.hosts.map((h) => [h.name, h.status])).toEqual([
      ['h1', 'up'],
      ['h2', 'up'],
      ['h3', 'up'],
    ]);
    expect(snap!.links).toHaveLength(6);
    for (const l of snap!.links) {
      expect(l.state, `${l.from} -> ${l.to}`).toBe('up');
      expect(['private', 'public']).toContain(l.path); // one router, no NAT: direct
      expect(l.rttMs).toBeGreaterThan(0);
    }
    expect(snap!.counters.invalidViews).toBe(0);
    // The other routes: the page (self-contained, strict CSP), an event stream, 404 and 405.
    const head = async (args: string[]) =>
      (await bed.topo.tryExec(bed.topo.routerNs, ['curl', '-sS', '-o', '/dev/null', '-D', '-', '--max-time', '1', ...args], { timeoutMs: 5_000 })).stdout;
    const page = await head([`${url}/`]);
    expect(page).toMatch(/^HTTP\/1.1 200/);
    expect(page).toMatch(/content-security-policy: default-src 'none';/i);
    expect(await fetchIn('/')).not.toMatch(/<script[^>]+src=|<link[^>]+href=|https?:\/\/(?!www\.w3\.org\/2000\/svg)/);
    expect(await head([`${url}/api/events`])).toMatch(/content-type: text\/event-stream/i);
    expect(await head([`${url}/nope`])).toMatch(/^HTTP\/1.1 404/);
    expect(await head(['-X', 'POST', `${url}/api/snapshot`])).toMatch(/^HTTP\/1.1 405/);
    // A page whose DNS name was rebound to our address sends its own name as Host: refused.
    expect(await head(['-H', `Host: rebound.example:${port}`, `${url}/api/snapshot`])).toMatch(/^HTTP\/1.1 421/);
    expect(await head(['-H', `Host: rebound.example:${port}`, `${url}/api/events`])).toMatch(/^HTTP\/1.1 421/);
  });

  it('shows 3 hosts and 6 RTT cells with numbers, and turns a stopped host\'s row and column to down within 5 s without a reload', async () => {
    await page.goto(`${url}/`);
    await page.waitForFunction(
      () => {
        const cells = [...document.querySelectorAll('td[data-from][data-to]')];
        return document.querySelectorAll('tr[data-host]').length === 3 && cells.length === 6 && cells.every((c) => /^\d+(\.\d+)? ms/.test(c.textContent ?? ''));
      },
      undefined,
      { timeout: 15_000 },
    );
    expect(await page.locator('svg g[data-host]').count()).toBe(3);
    expect(await page.locator('svg line[data-state="up"]').count()).toBe(3);
    expect(await page.getAttribute('body', 'data-live')).toBe('1');
    const texts = await page.locator('td[data-from][data-to]').allTextContents();
    console.log(`RTT cells: ${texts.join(' | ')}`);
    await page.screenshot({ path: path.join(outDir, 'dashboard-up.png'), fullPage: true });

    // A mark on the window: it survives only if the page is not reloaded.
    await page.evaluate(() => ((window as unknown as { mark: number }).mark = 42));
    const t0 = Date.now();
    const stopping = bed.agent('h3').stop();
    await page.waitForFunction(
      () => {
        const cells = [...document.querySelectorAll('td[data-from][data-to]')].filter(
          (c) => c.getAttribute('data-from') === 'h3' || c.getAttribute('data-to') === 'h3',
        );
        return cells.length === 4 && cells.every((c) => c.getAttribute('data-state') === 'down' && c.textContent === 'down');
      },
      undefined,
      { timeout: 5_000, polling: 50 },
    );
    const ms = Date.now() - t0;
    await stopping;
    console.log(`h3's cells down in the browser ${ms} ms after SIGTERM`);
    expect(ms).toBeLessThan(5_000);
    expect(await page.evaluate(() => (window as unknown as { mark?: number }).mark)).toBe(42);
    // The other pairs stay up; h3 is greyed out as silent.
    for (const [a, b] of [['h1', 'h2'], ['h2', 'h1']]) {
      expect(await page.getAttribute(`td[data-from="${a}"][data-to="${b}"]`, 'data-state')).toBe('up');
    }
    expect(await page.getAttribute('tr[data-host="h3"]', 'data-state')).toBe('silent');
    expect(await page.getAttribute('svg g[data-host="h3"]', 'data-state')).toBe('silent');
    const shot = path.join(outDir, 'dashboard.png');
    await page.screenshot({ path: shot, fullPage: true });
    console.log(`screenshots: ${shot} (and dashboard-up.png beside it; kept with CLADNET_KEEP_SCREENSHOTS=1)`);
    expect(fs.statSync(shot).size).toBeGreaterThan(10_000);
  });

  it('turns a killed agent\'s cells down once its liveness lease expires (TTL 10 s), without a reload', async () => {
    const t0 = Date.now();
    await bed.agent('h2').stop({ signal: 'SIGKILL' });
    await page.waitForFunction(
      () => ['h1 h2', 'h2 h1'].every((p) => {
        const [a, b] = p.split(' ');
        return document.querySelector(`td[data-from="${a}"][data-to="${b}"]`)?.getAttribute('data-state') === 'down';
      }),
      undefined,
      { timeout: 20_000, polling: 100 },
    );
    const ms = Date.now() - t0;
    console.log(`h2's cells down in the browser ${ms} ms after SIGKILL`);
    expect(ms).toBeLessThan(14_000); // lease TTL 10 s (etcd expires it within ~0.5 s after), plus the watch and a rebuild
    expect(await page.evaluate(() => (window as unknown as { mark?: number }).mark)).toBe(42);
  }, 40_000);

  it('greys out a revoked host as revoked (the revocation verified against the network key, as agents do)', async () => {
    const r = await cli(bed.topo, bed.topo.routerNs, [
      ...['host', 'revoke', 'h1', '--network', bed.network, '--network-key', networkKeyFile(bed.topo, bed.network), '--etcd', bed.etcd.endpoint],
    ]);
    expect(r.code, r.stderr).toBe(0);
    await page.waitForFunction(() => document.querySelector('tr[data-host="h1"]')?.getAttribute('data-state') === 'revoked', undefined, {
      timeout: 5_000,
    });
    expect(await page.getAttribute('tr[data-host="h1"]', 'class')).toBe('grey');
    expect(await page.getAttribute('svg g[data-host="h1"]', 'data-state')).toBe('revoked');
    expect(await page.evaluate(() => (window as unknown as { mark?: number }).mark)).toBe(42);
    await page.screenshot({ path: path.join(outDir, 'dashboard-revoked.png'), fullPage: true });
  });
});

describe.skipIf(!isRoot)('cladnet dashboard with NATs and a relay', () => {
  let bed: MeshBed;
  let context: BrowserContext;
  let outDir: string;
  const port = 20_000 + Math.floor(Math.random() * 2_000);

  afterAll(async () => {
    await context?.close().catch(() => undefined);
    removeOutDir(outDir);
    await bed?.destroy(); // (ends the dashboard too: the topology tracks what it spawned)
  });

  it('colours each cell by its path and shows the reflexive address and NAT kind of hosts behind NAT', async () => {
    outDir = fs.mkdtempSync(path.join(os.tmpdir(), 'cladnet-dashboard-nat-'));
    bed = await startMeshBed({
      topology: {
        hosts: [{ name: 'relay' }, { name: 'office', site: 's1' }, { name: 'laptop', site: 's2' }],
        sites: [
          { name: 's1', nat: 'masquerade' },
          { name: 's2', nat: 'random' },
        ],
      },
      agents: 0,
      waitUp: false,
    });
    const stun = `${bed.topo.routerIp}:3478`;
    bed.topo.spawn(bed.topo.routerNs, [process.execPath, cliPath(), 'stun-server', '--listen', stun]);
    await bed.start(bed.topo.host('relay'), { extraArgs: ['--relay', '--stun', stun] });
    await Promise.all(['office', 'laptop'].map((n) => bed.start(bed.topo.host(n), { extraArgs: ['--stun', stun] })));
    await bed.waitUp(bed.agents, 40_000);
    spawnDashboard(bed, port, path.join(outDir, 'dashboard.log'));
    context = await launchChromiumIn(bed.topo.routerNs, outDir);
    const page = await context.newPage();
    for (let i = 0; ; i++) {
      try {
        await page.goto(`http://127.0.0.1:${port}/`);
        break;
      } catch (e) {
        if (i > 50) throw e;
        await sleep(200);
      }
    }
    const wan = (site: string) => bed.topo.plan.sites.find((x) => x.name === site)!.wanIp;
    // Every cell up with an RTT, and the hosts behind NAT with what their peers saw of them.
    await page.waitForFunction(
      (officeWan) => {
        const cells = [...document.querySelectorAll('td[data-from][data-to]')];
        const refl = document.querySelector('tr[data-host="office"] td[data-field="reflexive"]')?.textContent ?? '';
        const nat = document.querySelector('tr[data-host="laptop"] td[data-field="nat"]')?.textContent ?? '';
        return cells.length === 6 && cells.every((c) => /^\d+(\.\d+)? ms/.test(c.textContent ?? '')) && refl.startsWith(officeWan + ':') && /varies/.test(nat);
      },
      wan('s1'),
      { timeout: 30_000, polling: 200 },
    );
    expect(await page.textContent('tr[data-host="office"] td[data-field="nat"]')).toMatch(/same mapping/);
    const cells = await page.$$eval('td[data-from][data-to]', (tds) =>
      tds.map((td) => ({ from: td.getAttribute('data-from'), to: td.getAttribute('data-to'), path: td.getAttribute('data-path'), cls: td.className, text: td.textContent })),
    );
    console.log(cells.map((c) => `${c.from}->${c.to} ${c.path} ${c.text}`).join('\n'));
    for (const c of cells) expect(c.cls, `${c.from}->${c.to}`).toBe(c.path); // the colour is the path
    // The relay reaches both directly, over public addresses.
    for (const c of cells.filter((x) => x.from === 'relay')) expect(c.path).toBe('public');
    const shot = path.join(outDir, 'dashboard.png');
    await page.screenshot({ path: shot, fullPage: true });
    console.log(`screenshot: ${shot} (kept with CLADNET_KEEP_SCREENSHOTS=1)`);
  }, 120_000);
});
