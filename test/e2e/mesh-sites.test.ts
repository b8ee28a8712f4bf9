import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hostKey } from '../../src/control/keys';
import type { HostRecord } from '../../src/control/records';
import { cli, networkKeyFile, sleep, waitUntil, type AgentStatus } from '../../src/testbed/agents';
import { startMeshBed, type MeshBed } from '../../src/testbed/mesh';
import { addSiteLan, type SiteLan } from '../../src/testbed/sites';
import { longestGapMs, ping, startPings, tcpTransfer, writeRandomFile } from '../../src/testbed/traffic';

/**
 * Whole sites on the mesh (issue 15): LANs of plain hosts (no agent) behind gateway hosts that run
 * the agent and advertise their LAN's prefix, certified by the network key.
 *
 *   site a 198.19.1.0/24: plain host .10 behind gwa          site b 198.19.2.0/24: behind gwb
 *   site c 198.19.3.0/24: plain host .10 behind gx and gy (one prefix, a failover group, SNAT)
 *   m: a member without routes; bad: a host asked to advertise what its certificate lacks
 */
const isRoot = process.getuid?.() === 0;
const A = '198.19.1.0/24';
const B = '198.19.2.0/24';
const C = '198.19.3.0/24';

describe.skipIf(!isRoot)('subnet routes through gateways', () => {
  let bed: MeshBed;
  let la: SiteLan;
  let lb: SiteLan;
  let lc: SiteLan;

  beforeAll(async () => {
    bed = await startMeshBed({ topology: { hosts: [{ name: 'gwa' }, { name: 'gwb' }, { name: 'm' }, { name: 'gx' }, { name: 'gy' }, { name: 'bad' }, { name: 'gu' }] }, agents: 0, waitUp: false });
    const t = bed.topo;
    la = await addSiteLan(t, { name: 'la', index: 1, gateways: ['gwa'] });
    lb = await addSiteLan(t, { name: 'lb', index: 2, gateways: ['gwb'] });
    lc = await addSiteLan(t, { name: 'lc', index: 3, gateways: ['gx', 'gy'] });
    const gw = (prefix: string, more: string[] = []) => ({ certRoutes: [prefix], extraArgs: ['--advertise-routes', prefix, ...more] });
    await Promise.all([
      bed.start(t.host('gwa'), gw(A)),
      bed.start(t.host('gwb'), gw(B)),
      bed.start(t.host('m')),
      bed.start(t.host('gx'), gw(C, ['--snat-routes'])),
      bed.start(t.host('gy'), gw(C, ['--snat-routes'])),
    ]);
    await bed.waitUp(bed.agents, 30_000);
  }, 90_000);
  afterAll(async () => {
    await bed?.destroy();
  });

  const routesOf = (s: AgentStatus) => s.subnets?.routes.map((r) => `${r.prefix}>${r.gateway}${r.standby.length ? `|${r.standby.join(',')}` : ''}`);

  it('installs every certified prefix toward its gateway, a shared one once with a standby, and shows it in status', async () => {
    const m = bed.agent('m');
    await waitUntil('m to install three routes', async () => routesOf(await m.status())?.length === 3, { timeoutMs: 10_000 });
    expect(routesOf(await m.statusCli())).toEqual([`${A}>gwa`, `${B}>gwb`, `${C}>gx|gy`]);
    expect(routesOf(await bed.agent('gwa').status())).toEqual([`${B}>gwb`, `${C}>gx|gy`]);
    const gwaDoc = await bed.agent('gwa').status();
    expect(gwaDoc.self.advertisedRoutes).toEqual([A]);
    // its LAN address is inside the prefix it routes: never a tunnel candidate (the tunnel would carry itself)
    expect(gwaDoc.self.endpoints).toEqual([`${bed.topo.host('gwa').underlayIp}:51820`]);
    // gx and gy share site c: each reaches it directly, neither installs nor refuses the other's
    const gx = await bed.agent('gx').status();
    expect(routesOf(gx)).toEqual([`${A}>gwa`, `${B}>gwb`]);
    expect(gx.subnets?.refused).toEqual([]);
    const kernel = await bed.topo.exec(bed.topo.host('m').ns, ['ip', 'route', 'show', 'dev', 'cladnet0', 'proto', '77']);
    expect(kernel.stdout.trim().split('\n').map((l) => l.trim()).sort()).toEqual([`${A} scope link`, `${B} scope link`, `${C} scope link`]);
    expect(await bed.topo.exec(bed.topo.host('gwa').ns, ['sysctl', '-n', 'net.ipv4.ip_forward']).then((r) => r.stdout.trim())).toBe('1');
  });

  it('the plain hosts of two sites ping each other and move 20 MB with a matching sha256 through the mesh', async () => {
    for (const [from, to] of [[la, lb], [lb, la]] as const) {
      const r = await ping(bed.topo, from.ns, to.hostIp, { count: 5, intervalS: 0.1 });
      expect(r.received, `${from.hostIp} -> ${to.hostIp}`).toBe(5);
    }
    const file = path.join(bed.topo.workDir, 'site.bin');
    writeRandomFile(file, 20 * 1024 * 1024);
    const r = await tcpTransfer(bed.topo, { fromNs: la.ns, toNs: lb.ns, toIp: lb.hostIp, file, outFile: path.join(bed.topo.workDir, 'site.received') });
    console.log(`20 MiB site a -> site b through gwa and gwb: ${r.mbitPerS.toFixed(0)} Mbit/s, sha256 ${r.receivedSha256.slice(0, 16)}...`);
    expect(r.bytes).toBe(20 * 1024 * 1024);
    expect(r.receivedSha256).toBe(r.sentSha256);
  });

  it('a member not certified for site a cannot inject packets with a source in it: gwb drops and counts them as spoofed', async () => {
    const mNs = bed.topo.host('m').ns;
    const gwb = bed.agent('gwb');
    const before = (await gwb.status()).dataplane.drops['spoofed'] ?? 0;
    await bed.topo.exec(mNs, ['ip', 'address', 'add', '198.19.1.77/32', 'dev', 'lo']);
    const r = await ping(bed.topo, mNs, lb.hostIp, { count: 5, intervalS: 0.1, source: '198.19.1.77' });
    expect(r.received).toBe(0);
    await sleep(200);
    const after = (await gwb.status()).dataplane.drops['spoofed'] ?? 0;
    console.log(`spoofed drops at gwb: ${before} -> ${after}`);
    expect(after - before).toBeGreaterThanOrEqual(5);
    // m's own address still works, and so does site a's real host
    expect((await ping(bed.topo, mNs, lb.hostIp, { count: 2, intervalS: 0.1 })).received).toBe(2);
    expect((await ping(bed.topo, la.ns, lb.hostIp, { count: 2, intervalS: 0.1 })).received).toBe(2);
  });

  it('a record rewritten in etcd to advertise site a from m is refused for that prefix (warned, counted): etcd grants no route', async () => {
    const NET = bed.network;
    const etcdctl = (args: string[], input?: string) =>
      bed.topo.exec(bed.topo.routerNs, ['etcdctl', `--endpoints=${bed.etcd.endpoint}`, ...args], { input, env: { ...process.env, ETCDCTL_API: '3' }, timeoutMs: 10_000 });
    const key = hostKey(NET, 'm');
    const original = (await etcdctl(['get', key, '--print-value-only'])).stdout.trim();
    const rec = JSON.parse(original) as HostRecord;
    expect(rec.routes).toBeUndefined();
    const gwb = bed.agent('gwb');
    await etcdctl(['put', key], JSON.stringify({ ...rec, routes: [A] }));
    const doc = await waitUntil(
      'gwb to refuse the route in m\'s record',
      async () => {
        const d = await gwb.status();
        return d.subnets?.refused.some((r) => r.gateway === 'm' && r.prefix === A) ? d : undefined;
      },
      { timeoutMs: 5_000, intervalMs: 100 },
    );
    expect(doc.subnets!.refused).toEqual([{ gateway: 'm', prefix: A, reason: 'not covered by its certificate' }]);
    expect(doc.subnets!.refusedTotal).toBeGreaterThanOrEqual(1);
    expect(routesOf(doc)).toEqual([`${A}>gwa`, `${C}>gx|gy`]);
    expect(gwb.logTail(100)).toContain('advertised route refused: not covered by its certificate');
    expect((await ping(bed.topo, la.ns, lb.hostIp, { count: 2, intervalS: 0.1 })).received).toBe(2);
    expect((await gwb.statusText())).toContain(`${A} via gwa`);
    await etcdctl(['put', key], original);
  });

  it('an agent asked to advertise a prefix its certificate does not carry refuses to start (EROUTE, naming it)', async () => {
    const err = await bed.start(bed.topo.host('bad'), { certRoutes: [A], extraArgs: ['--advertise-routes', '198.19.9.0/24'] }).then(
      () => null,
      (e: Error) => e,
    );
    expect(err?.message).toMatch(/EROUTE/);
    expect(err?.message).toContain('198.19.9.0/24 is not covered by this host\'s certificate');
    // and the operator cannot certify a route over the overlay range itself
    const t = bed.topo;
    const issue = await cli(t, t.routerNs, [
      ...['host', 'issue', 'bad2', '--network', bed.network, '--network-key', networkKeyFile(t, bed.network)],
      ...['--out', `${t.workDir}/bad2`, '--etcd', bed.etcd.endpoint, '--routes', '100.64.0.0/16'],
    ]);
    expect(issue.code).not.toBe(0);
    expect(issue.stderr).toContain(`routes: 100.64.0.0/16 overlaps the network's overlay range ${bed.cidr}`);
  });

  it("a gateway advertising m's underlay link does not break the mesh: peers pin m's endpoint to the underlay, and the pin follows a new underlay gateway within 1 s", async () => {
    const t = bed.topo;
    const M_LINK = '198.18.3.0/24'; // m's internet link (third host), now also "behind" gu
    const mEndpoint = t.host('m').underlayIp;
    await bed.start(t.host('gu'), { certRoutes: [M_LINK], extraArgs: ['--advertise-routes', M_LINK] });
    const gwa = bed.agent('gwa');
    const doc = await waitUntil(
      'gwa to install the route and pin m',
      async () => {
        const d = await gwa.status();
        return d.self.endpointPins?.some((p) => p.dst === mEndpoint) && routesOf(d)?.includes(`${M_LINK}>gu`) ? d : undefined;
      },
      { timeoutMs: 15_000, intervalMs: 100 },
    );
    expect(doc.self.endpointPins).toEqual([{ dst: mEndpoint, gateway: '198.18.1.1', dev: `${t.id}-x1` }]);
    const viaOf = async () => (await t.exec(t.host('gwa').ns, ['ip', 'route', 'get', mEndpoint])).stdout;
    expect(await viaOf()).toContain(`via 198.18.1.1 dev ${t.id}-x1`);
    const mIp = (await bed.agent('m').status()).self.overlayIp;
    const run = startPings(t, t.host('gwa').ns, mIp, { intervalMs: 10 });
    await sleep(1_000);
    // gwa's underlay gateway changes (a new router address on its link, as after a DHCP renewal)
    await t.exec(t.routerNs, ['ip', 'address', 'add', '198.18.1.254/24', 'dev', `${t.id}-r1`]);
    const changedAt = Date.now();
    await t.exec(t.host('gwa').ns, ['ip', 'route', 'replace', 'default', 'via', '198.18.1.254']);
    await waitUntil('the pin to follow', async () => (await viaOf()).includes('via 198.18.1.254'), { timeoutMs: 5_000, intervalMs: 20 });
    const followMs = Date.now() - changedAt;
    await sleep(1_000);
    const series = await run.stop();
    const gap = longestGapMs(series.replies, run.startedAt + 200, series.stoppedAt);
    console.log(`pin of m's endpoint at gwa followed the new underlay gateway in ${followMs} ms; gwa -> m longest gap ${gap.toFixed(0)} ms (${series.replies.length}/${series.sent})`);
    expect(followMs).toBeLessThan(1_000);
    expect(gap).toBeLessThan(1_000);
    expect((await gwa.status()).peers.find((p) => p.name === 'm')?.state).toBe('up');
  });

  it('gateway failover: the active gateway of a shared prefix is killed under a ping every 10 ms; the other takes over within 2 s', async () => {
    const mNs = bed.topo.host('m').ns;
    expect((await ping(bed.topo, mNs, lc.hostIp, { count: 3, intervalS: 0.1 })).received).toBe(3);
    const run = startPings(bed.topo, mNs, lc.hostIp, { intervalMs: 10 });
    await sleep(2_000);
    const killedAt = Date.now();
    await bed.agent('gx').stop({ signal: 'SIGKILL' });
    await sleep(5_000);
    const series = await run.stop();
    const gap = longestGapMs(series.replies, killedAt, series.stoppedAt);
    const before = series.replies.filter((r) => r.at < killedAt).length;
    console.log(`failover gx -> gy: outage ${gap.toFixed(0)} ms (${series.replies.length}/${series.sent} replies, ${before} before the kill)`);
    expect(before).toBeGreaterThan(50);
    expect(gap).toBeLessThan(2_000);
    expect(routesOf(await bed.agent('m').status())).toContain(`${C}>gy|gx`);
  });
  it('failback: the preferred gateway comes back and takes its prefix again while pings keep flowing (gap under 2 s)', async () => {
    const t = bed.topo;
    const mNs = t.host('m').ns;
    const run = startPings(t, mNs, lc.hostIp, { intervalMs: 10 });
    await sleep(1_000);
    const startedAt = Date.now();
    await bed.start(t.host('gx'), { certRoutes: [C], extraArgs: ['--advertise-routes', C, '--snat-routes'] });
    await waitUntil('m to route site c through gx again', async () => routesOf(await bed.agent('m').status())?.includes(`${C}>gx|gy`), {
      timeoutMs: 20_000,
      intervalMs: 50,
    });
    const backMs = Date.now() - startedAt;
    await sleep(2_000);
    const series = await run.stop();
    const gap = longestGapMs(series.replies, run.startedAt + 200, series.stoppedAt);
    console.log(`failback to gx ${backMs} ms after its start; longest gap ${gap.toFixed(0)} ms (${series.replies.length}/${series.sent})`);
    expect(gap).toBeLessThan(2_000);
  });
});
