import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cli, waitUntil, type AgentStatus } from '../../src/testbed/agents';
import { startNatBed, type MeshBed } from '../../src/testbed/mesh';
import type { NetcheckReport } from '../../src/status/diag-types';
import type { PingSummary } from '../../src/cli/ping';

/**
 * `cladnet ping` and `cladnet netcheck` as a person runs them: `node dist/cli.js` inside a host's
 * namespace, talking to that host's agent through its status socket; stdout and exit codes checked.
 *
 *   pub  on the internet, relay-capable, beside a STUN server (cladnet stun-server on the router)
 *   a    behind a MASQUERADE site (endpoint-independent mapping, port kept)
 *   c, d each behind its own port-randomizing site (MASQUERADE --random-fully): c and d reach
 *        each other only through pub
 */
const isRoot = process.getuid?.() === 0;

describe.skipIf(!isRoot)('cladnet ping and netcheck in the test bed', () => {
  let bed: MeshBed;
  const siteWan = (site: string) => bed.topo.plan.sites.find((s) => s.name === site)!.wanIp;
  const peer = (doc: AgentStatus, name: string) => doc.peers.find((p) => p.name === name);
  /** Runs the CLI in `host`'s namespace against its agent's socket. */
  const run = (host: string, args: string[], timeoutMs = 20_000) =>
    cli(bed.topo, bed.topo.host(host).ns, [...args, '--socket', bed.agent(host).socket], timeoutMs);
  const logs = (...names: string[]) => names.map((n) => `--- ${n}\n${bed.agent(n).logTail(15)}`).join('\n');

  beforeAll(async () => {
    ({ bed } = await startNatBed({
      topology: {
        hosts: [{ name: 'pub' }, { name: 'a', site: 's1' }, { name: 'c', site: 's3' }, { name: 'd', site: 's4' }],
        sites: [
          { name: 's1', nat: 'masquerade' },
          { name: 's3', nat: 'random' },
          { name: 's4', nat: 'random' },
        ],
      },
      relay: 'pub',
    }));
  }, 90_000);

  afterAll(async () => {
    await bed?.destroy();
  });

  it('from a NATed host to a public one: each reply names the direct public path and an RTT, exit 0', async () => {
    await waitUntil('a to reach pub directly', async () => peer(await bed.agent('a').status(), 'pub')?.path === 'direct');
    const before = peer(await bed.agent('a').status(), 'pub')!;
    const r = await run('a', ['ping', 'pub', '-c', '3', '-i', '0.2']);
    expect(r.code, r.stderr).toBe(0);
    const pubEp = `${bed.topo.host('pub').underlayIp}:51820`;
    const replies = r.stdout.split('\n').filter((l) => l.startsWith('reply from'));
    expect(replies).toHaveLength(3);
    for (const l of replies) expect(l).toMatch(new RegExp(`^reply from pub: via ${pubEp.replace(/\./g, '\\.')} direct public, rtt \\d+(\\.\\d+)? ms, seq \\d$`));
    expect(r.stdout).toContain('3 sent, 3 received, 0% loss');
    expect(r.stdout).toMatch(/rtt min\/avg\/max\/mdev = [\d.]+\/[\d.]+\/[\d.]+\/[\d.]+ ms/);
    // By overlay address too, as JSON; RTTs are real round trips on this machine (well under a second).
    const ip = before.overlayIp;
    const j = await run('a', ['ping', ip, '-c', '2', '-i', '0.1', '--json']);
    expect(j.code, j.stderr).toBe(0);
    const s = JSON.parse(j.stdout) as PingSummary;
    expect(s.peer).toEqual({ name: 'pub', overlayIp: ip });
    expect(s.received).toBe(2);
    for (const x of s.replies) {
      expect(x.reply).toMatchObject({ path: 'direct', endpoint: pubEp, scope: 'public', via: null });
      expect(x.reply!.rttMs).toBeGreaterThan(0);
      expect(x.reply!.rttMs).toBeLessThan(500);
    }
    // The pings moved nothing: same endpoint and path as before.
    expect(peer(await bed.agent('a').status(), 'pub')).toMatchObject({ endpoint: before.endpoint, path: 'direct', pathScope: 'public' });
  });

  it('between two hosts behind port-randomizing NATs: the replies come through the relay, exit 0', async () => {
    await waitUntil('c and d to reach each other through pub', async () => {
      const [dc, dd] = await Promise.all([bed.agent('c').status(), bed.agent('d').status()]);
      return peer(dc, 'd')?.path === 'relayed' && peer(dd, 'c')?.path === 'relayed';
    }, { timeoutMs: 30_000 }).catch((e: Error) => {
      throw new Error(`${e.message}\n${logs('c', 'd', 'pub')}`);
    });
    const relayedBefore = (await bed.agent('pub').status()).dataplane.relayedPackets ?? 0;
    const r = await run('c', ['ping', 'd', '-c', '3', '-i', '0.2']);
    expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
    const replies = r.stdout.split('\n').filter((l) => l.startsWith('reply from'));
    expect(replies.length).toBeGreaterThanOrEqual(1);
    for (const l of replies) expect(l).toMatch(/^reply from d: via relay pub, rtt \d+(\.\d+)? ms, seq \d$/);
    // pub carried them (a probe and its pong per reply, at least).
    const relayedAfter = (await bed.agent('pub').status()).dataplane.relayedPackets ?? 0;
    expect(relayedAfter - relayedBefore).toBeGreaterThanOrEqual(2 * replies.length);
    // ...and the path choice did not move: still relayed through pub at both ends.
    expect(peer(await bed.agent('c').status(), 'd')).toMatchObject({ path: 'relayed', via: 'pub' });
    expect(peer(await bed.agent('d').status(), 'c')).toMatchObject({ path: 'relayed', via: 'pub' });
  });

  it('an unknown peer exits 2 with a clear message', async () => {
    const r = await run('a', ['ping', 'nosuchhost', '-c', '1']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('no peer named or addressed "nosuchhost"');
    expect(r.stderr).toContain('[ENOPEER]');
    const byIp = await run('a', ['ping', '100.64.0.250', '-c', '1']);
    expect(byIp.code).toBe(2);
  });

  it('netcheck behind MASQUERADE: the NAT\'s public address as reflexive, endpoint-independent mapping', async () => {
    const r = await run('a', ['netcheck']);
    expect(r.code, r.stderr).toBe(0);
    const want = `${siteWan('s1')}:51820`;
    expect(r.stdout).toContain(`reflexive address: ${want}`);
    expect(r.stdout).toContain('NAT: endpoint-independent mapping');
    expect(r.stdout).toMatch(/relays: reachable/);
    const j = await run('a', ['netcheck', '--json']);
    const rep = JSON.parse(j.stdout) as NetcheckReport;
    expect(rep.nat).toBe('eim');
    expect(rep.reflexive).toBe(want);
    // Two observers (the STUN server and pub), both saw the same mapping.
    expect(rep.observations.map((o) => o.kind).sort()).toEqual(['peer', 'stun']);
    for (const o of rep.observations) expect(o.seen).toBe(want);
    expect(rep.stun).toHaveLength(1);
    expect(rep.stun[0]!.rttMs).toBeGreaterThan(0);
    const pub = rep.peers.find((p) => p.name === 'pub')!;
    expect(pub).toMatchObject({ relay: true, state: 'up', seen: want });
    expect(pub.reply?.rttMs).toBeGreaterThan(0);
    expect(rep.tookMs).toBeLessThan(4_000);
  });

  it('netcheck on the public host: no NAT, its own address is what everyone sees', async () => {
    const rep = JSON.parse((await run('pub', ['netcheck', '--json'])).stdout) as NetcheckReport;
    expect(rep.nat).toBe('none');
    expect(rep.reflexive).toBe(`${bed.topo.host('pub').underlayIp}:51820`);
    expect(rep.observations.length).toBeGreaterThanOrEqual(2);
  });

  it('netcheck behind a port-randomizing NAT: the mapping varies', async () => {
    const r = await run('c', ['netcheck']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('NAT: mapping varies by destination');
    const j = await run('c', ['netcheck', '--json']);
    const rep = JSON.parse(j.stdout) as NetcheckReport;
    expect(rep.nat).toBe('varies');
    const seen = rep.observations.map((o) => o.seen);
    expect(seen.length).toBeGreaterThanOrEqual(2);
    expect(new Set(seen).size).toBeGreaterThanOrEqual(2);
    for (const s of seen) expect(s.startsWith(`${siteWan('s3')}:`)).toBe(true);
    // d is reached through the relay: no observation from it, but an RTT.
    expect(rep.peers.find((p) => p.name === 'd')?.reply).toMatchObject({ path: 'relayed', via: 'pub' });
  });

  it('a peer whose agent is gone does not answer: exit 1', async () => {
    // SIGKILL: no bye, so c keeps d as a member (it would drop a peer that said bye at once).
    await bed.agent('d').stop({ signal: 'SIGKILL' });
    const r = await run('c', ['ping', 'd', '-c', '2', '-i', '0.2', '--timeout', '0.5']);
    expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(1);
    expect(r.stdout).toContain('no reply from d: timed out after 500 ms, seq 1');
    expect(r.stdout).toContain('2 sent, 0 received, 100% loss');
  });
});
