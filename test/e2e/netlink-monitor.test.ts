import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runOk, runSync } from '../../src/testbed/run';

/**
 * The NETLINK_ROUTE monitor and the LocalChangeMonitor against a real kernel, inside a fresh
 * network namespace (a netlink socket belongs to the namespace of the thread that opens it, so the
 * monitor runs as `ip netns exec NS node -e SCRIPT` over the built dist/). The namespace holds a
 * veth pair v0/v1; only 198.18.0.0/15 addresses are used.
 */
const canNetns = process.getuid?.() === 0 && fs.existsSync('/usr/sbin/ip');
const DIST = path.resolve(__dirname, '..', '..', 'dist');

/** Counts per drain, one JSON line each, for `ms`; waits on the socket with poll(2). */
const RAW_SCRIPT = `
const [dist, ms] = process.argv.slice(1);
const { openRouteMonitor } = require(dist + '/os/netlink.js');
const { Poller } = require(dist + '/os/poll.js');
const m = openRouteMonitor();
const p = new Poller([m.fd]);
const end = Date.now() + Number(ms);
console.log(JSON.stringify({ ready: true, t: Date.now() }));
while (Date.now() < end) {
  if (p.wait(100) === 0) continue;
  const e = m.drain();
  console.log(JSON.stringify({ t: Date.now(), ...e, foreign: m.foreign, lastErrno: m.lastErrno }));
}
m.close();
p.close();
`;

/** A tiny socket buffer left undrained for 1.5 s while the test floods it, then one drain. */
const OVERFLOW_SCRIPT = `
const [dist] = process.argv.slice(1);
const { openRouteMonitor } = require(dist + '/os/netlink.js');
const m = openRouteMonitor({ socketBytes: 1 }); // the kernel rounds it up to its minimum
console.log(JSON.stringify({ ready: true, t: Date.now() }));
Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1500);
console.log(JSON.stringify({ t: Date.now(), ...m.drain(), overflows: m.overflows }));
console.log(JSON.stringify({ t: Date.now(), ...m.drain(), overflows: m.overflows }));
m.close();
`;

/** A LocalChangeMonitor with the real netlink source, addresses and timers: one JSON line per change. */
const MONITOR_SCRIPT = `
const [dist, ms, exclude] = process.argv.slice(1);
const { openRouteMonitor } = require(dist + '/os/netlink.js');
const { systemAddresses } = require(dist + '/os/netmon.js');
const { LocalChangeMonitor, intervalTimers } = require(dist + '/agent/changes.js');
const events = openRouteMonitor();
const mon = new LocalChangeMonitor({
  events,
  addresses: systemAddresses(exclude.split(',')),
  clock: { now: () => Date.now(), mono: () => performance.now() },
  timers: intervalTimers,
  onChange: (c) => console.log(JSON.stringify({ t: Date.now(), ...c })),
});
mon.start();
console.log(JSON.stringify({ ready: true, t: Date.now(), current: mon.current() }));
setTimeout(() => { mon.stop(); events.close(); }, Number(ms));
`;

interface Line {
  t: number;
  [k: string]: unknown;
}

/** A script running inside the namespace; its stdout JSON lines are collected as they arrive. */
class NsScript {
  readonly lines: Line[] = [];
  stderr = '';
  readonly child: ChildProcess;
  private exited = false;

  constructor(ns: string, script: string, args: string[]) {
    this.child = spawn('ip', ['netns', 'exec', ns, process.execPath, '-e', script, DIST, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    createInterface({ input: this.child.stdout! }).on('line', (l) => {
      try {
        this.lines.push(JSON.parse(l) as Line);
      } catch {
        this.stderr += `(stdout) ${l}\n`;
      }
    });
    this.child.stderr!.on('data', (b: Buffer) => (this.stderr += b.toString()));
    this.child.on('exit', () => (this.exited = true));
  }

  /** The first line at index >= from that matches, waiting up to timeoutMs. */
  async waitFor(pred: (l: Line) => boolean, from: number, timeoutMs: number): Promise<Line | undefined> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      const hit = this.lines.slice(from).find(pred);
      if (hit || Date.now() > until || this.exited) return hit;
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  kill(): void {
    if (!this.exited) this.child.kill('SIGKILL');
  }
}

describe.skipIf(!canNetns)('netlink route monitor in a network namespace', () => {
  const ns = `cnlm${randomBytes(4).toString('hex')}`;
  const scripts: NsScript[] = [];
  const ip = (...args: string[]) => runOk(['ip', '-n', ns, ...args]);
  const start = async (script: string, args: string[]) => {
    const s = new NsScript(ns, script, args);
    scripts.push(s);
    const ready = await s.waitFor((l) => l['ready'] === true, 0, 10_000);
    if (!ready) throw new Error(`script did not start: ${s.stderr}`);
    return s;
  };

  beforeAll(async () => {
    if (!fs.existsSync(path.join(DIST, 'os', 'netlink.js')) || !fs.existsSync(path.join(DIST, 'agent', 'changes.js'))) {
      throw new Error('dist/ is not built: run `npx tsc -p tsconfig.json` first');
    }
    await runOk(['ip', 'netns', 'add', ns]);
    await ip('link', 'add', 'v0', 'type', 'veth', 'peer', 'name', 'v1');
    await ip('link', 'set', 'v0', 'up');
    await ip('link', 'set', 'v1', 'up');
  });

  afterAll(() => {
    for (const s of scripts) s.kill();
    runSync(['ip', 'netns', 'del', ns]);
  });

  it('sees address, route and link notifications within 1 s of each change', async () => {
    const s = await start(RAW_SCRIPT, ['15000']);
    const totals = (from: number) => {
      const t = { addr: 0, route: 0, link: 0, overflow: false };
      for (const l of s.lines.slice(from)) {
        t.addr += Number(l['addr'] ?? 0);
        t.route += Number(l['route'] ?? 0);
        t.link += Number(l['link'] ?? 0);
        t.overflow ||= l['overflow'] === true;
      }
      return t;
    };
    /** Runs `change`, then waits for a drain with a `kind` count; returns the latency and totals. */
    const step = async (label: string, kind: 'addr' | 'route' | 'link', change: () => Promise<unknown>) => {
      const from = s.lines.length;
      const t0 = Date.now();
      await change();
      const hit = await s.waitFor((l) => Number(l[kind] ?? 0) > 0, from, 1_000);
      expect(hit, `${label}: no ${kind} notification within 1 s (stderr: ${s.stderr})`).toBeDefined();
      await new Promise((r) => setTimeout(r, 150)); // let the rest of the burst arrive
      const seen = totals(from);
      console.log(`${label}: first ${kind} after ${hit!.t - t0} ms; messages ${JSON.stringify(seen)}`);
      return { latency: hit!.t - t0, seen };
    };

    const add = await step('add 198.18.77.2/24', 'addr', () => ip('addr', 'add', '198.18.77.2/24', 'dev', 'v0'));
    expect(add.seen.route).toBeGreaterThan(0); // the prefix and local routes come with it

    const replace = await step('replace with 198.18.77.3/24', 'addr', () =>
      runOk(['ip', '-n', ns, '-batch', '-'], { input: 'addr del 198.18.77.2/24 dev v0\naddr add 198.18.77.3/24 dev v0\n' }),
    );
    expect(replace.seen.addr).toBeGreaterThanOrEqual(2);
    expect(replace.seen.route).toBeGreaterThan(0);

    await step('route add', 'route', () => ip('route', 'add', '198.18.80.0/24', 'via', '198.18.77.1'));
    await step('route del', 'route', () => ip('route', 'del', '198.18.80.0/24'));

    const down = await step('peer v1 down (v0 loses carrier)', 'link', () => ip('link', 'set', 'v1', 'down'));
    console.log(`  carrier loss: ${down.seen.addr} address messages (addresses stay configured)`);
    await step('peer v1 up', 'link', () => ip('link', 'set', 'v1', 'up'));

    const all = totals(0);
    expect(all.overflow).toBe(false);
    expect(s.lines.every((l) => l['foreign'] === undefined || l['foreign'] === 0)).toBe(true);
    expect(s.lines.every((l) => l['lastErrno'] === undefined || l['lastErrno'] === 0)).toBe(true);
  });

  it('reports an overflowed socket (ENOBUFS) as overflow, then reads on normally', async () => {
    await ip('addr', 'replace', '198.18.77.3/24', 'dev', 'v0');
    const s = await start(OVERFLOW_SCRIPT, []);
    const routes = Array.from({ length: 200 }, (_, i) => `route add 198.19.${i}.0/24 via 198.18.77.1`).join('\n');
    await runOk(['ip', '-n', ns, '-batch', '-'], { input: `${routes}\n` });
    const first = await s.waitFor((l) => l['overflows'] !== undefined, 1, 5_000);
    const second = await s.waitFor((l) => l['overflows'] !== undefined, 2, 1_000);
    console.log(`200 route adds into a minimal buffer: ${JSON.stringify(first)}`);
    expect(first, s.stderr).toMatchObject({ overflow: true, overflows: 1 });
    expect(first!['route']).toBeGreaterThan(0); // what fitted is still counted
    expect(first!['route']).toBeLessThan(200);
    expect(second).toMatchObject({ addr: 0, route: 0, link: 0, overflow: false });
    await runOk(['ip', '-n', ns, '-batch', '-'], { input: `${routes.replace(/route add/g, 'route del')}\n` });
  });

  it('LocalChangeMonitor reports address, route, carrier and resume changes from the real kernel', async () => {
    // Start from a clean v0 (the previous test may have left 198.18.77.3/24).
    await ip('addr', 'flush', 'dev', 'v0');
    await ip('link', 'set', 'v1', 'up');
    const s = await start(MONITOR_SCRIPT, ['20000', 'v1']); // v1 plays the excluded TUN
    expect(s.lines[0]!['current']).toEqual([]);
    const changes = () => s.lines.filter((l) => l['reason'] !== undefined);
    const step = async (label: string, change: () => Promise<unknown>, want: Record<string, unknown>) => {
      const from = s.lines.length;
      const t0 = Date.now();
      await change();
      const hit = await s.waitFor((l) => l['reason'] !== undefined, from, 1_000);
      expect(hit, `${label}: no change within 1 s (stderr: ${s.stderr})`).toBeDefined();
      console.log(`${label}: ${hit!['reason']} after ${hit!.t - t0} ms`);
      expect(hit).toMatchObject(want);
      await new Promise((r) => setTimeout(r, 300)); // nothing else follows from the same change
      expect(s.lines.slice(from).filter((l) => l['reason'] !== undefined)).toHaveLength(1);
    };

    await step('add', () => ip('addr', 'add', '198.18.77.2/24', 'dev', 'v0'), {
      reason: 'address',
      before: [],
      after: ['198.18.77.2/24'],
    });
    await step(
      'replace',
      () => runOk(['ip', '-n', ns, '-batch', '-'], { input: 'addr del 198.18.77.2/24 dev v0\naddr add 198.18.77.3/24 dev v0\n' }),
      { reason: 'address', before: ['198.18.77.2/24'], after: ['198.18.77.3/24'] },
    );
    await step('route add', () => ip('route', 'add', '198.18.80.0/24', 'via', '198.18.77.1'), {
      reason: 'route',
      before: ['198.18.77.3/24'],
      after: ['198.18.77.3/24'],
    });
    await step('address on the excluded device', () => ip('addr', 'add', '198.18.78.2/24', 'dev', 'v1'), {
      reason: 'route', // its prefix routes; the address itself is not ours
      after: ['198.18.77.3/24'],
    });
    await step('carrier lost', () => ip('link', 'set', 'v1', 'down'), {
      reason: 'address',
      before: ['198.18.77.3/24'],
      after: [],
    });
    await step('carrier back', () => ip('link', 'set', 'v1', 'up'), {
      reason: 'address',
      before: [],
      after: ['198.18.77.3/24'],
    });

    // SIGSTOP: both clocks run on, the timers are simply late. `ip netns exec` execs node, so the
    // child's pid is node's own.
    const pid = s.child.pid!;
    expect(fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim()).toBe('node');
    const from = s.lines.length;
    process.kill(pid, 'SIGSTOP');
    try {
      await new Promise((r) => setTimeout(r, 3_500));
    } finally {
      process.kill(pid, 'SIGCONT');
    }
    const resume = await s.waitFor((l) => l['reason'] !== undefined, from, 1_000);
    console.log(`SIGSTOP 3.5 s: ${JSON.stringify(resume)}`);
    expect(resume).toMatchObject({ reason: 'resume', before: ['198.18.77.3/24'], after: ['198.18.77.3/24'] });
    expect(resume!['gapMs']).toBeGreaterThanOrEqual(3_400);
    expect(resume!['gapMs']).toBeLessThan(4_500);
    expect(changes()).toHaveLength(7);
  });
});
