import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cli, waitUntil, type Agent, type AgentStatus } from '../../src/testbed/agents';
import { startNatBed, type MeshBed } from '../../src/testbed/mesh';
import { startPings, type PingRun } from '../../src/testbed/traffic';
import { fetchMetrics } from '../../src/status/client';
import { METRICS_CONTENT_TYPE, msToSeconds, pathLabel, snakeCase } from '../../src/status/metrics';
import type { StatusPeer } from '../../src/status/types';
import { parseSeries, promtool, type Series } from '../helpers/prometheus';

/**
 * Metrics from live agents match their status. Five hosts, so every kind of path shows:
 *   pub   on the internet, relay
 *   a, e  behind one MASQUERADE site (a-e private, a-pub public)
 *   c, d  each behind a port-randomizing site (c-d relayed via pub)
 * Every agent runs with --metrics-listen 127.0.0.1:9821 inside its own namespace. With pings
 * flowing on each kind of path, each agent is read three times in a row: status, metrics, status.
 * Gauges in the metrics equal the status (or one of the two readings when it changed between
 * them), counters and timestamps lie between the two readings, every peer has its series, and
 * the info labels are the status's. The same holds over --metrics-listen, and promtool is clean
 * on every live output. Last, Debian's prometheus scrapes pub and answers queries about it.
 */
const isRoot = process.getuid?.() === 0;
const METRICS_PORT = 9821;
const PKG_VERSION = (JSON.parse(fs.readFileSync(path.resolve(__dirname, '..', '..', 'package.json'), 'utf8')) as { version: string }).version;

/** GET http://HOST:PORT/PATH from inside a namespace (argv: host, port, path); by default the listener on that namespace's loopback. */
const GET_SCRIPT = `
const http = require('node:http');
http.get({ host: process.argv[1], port: Number(process.argv[2]), path: process.argv[3], agent: false }, (res) => {
  const chunks = [];
  res.on('data', (c) => chunks.push(c));
  res.on('end', () => process.stdout.write(JSON.stringify({ status: res.statusCode, type: res.headers['content-type'], body: Buffer.concat(chunks).toString() })));
}).on('error', (e) => { process.stderr.write(e.message); process.exit(2); });
`;

describe.skipIf(!isRoot)('Prometheus metrics from live agents', () => {
  let bed: MeshBed;
  const pings: PingRun[] = [];
  const ips = new Map<string, string>();

  beforeAll(async () => {
    // e on another port than a: two hosts on one port behind one Linux NAT stop being endpoint-independent.
    ({ bed } = await startNatBed({
      topology: {
        hosts: [{ name: 'pub' }, { name: 'a', site: 's1' }, { name: 'e', site: 's1' }, { name: 'c', site: 's3' }, { name: 'd', site: 's4' }],
        sites: [
          { name: 's1', nat: 'masquerade' },
          { name: 's3', nat: 'random' },
          { name: 's4', nat: 'random' },
        ],
      },
      relay: 'pub',
      extraArgs: () => ['--metrics-listen', `127.0.0.1:${METRICS_PORT}`],
      listenPort: (n) => (n === 'e' ? 51821 : undefined),
    }));
    for (const ag of bed.agents) ips.set(ag.name, (await ag.status()).self.overlayIp);
    const peerOf = (doc: AgentStatus, name: string) => doc.peers.find((p) => p.name === name);
    await waitUntil(
      'a-e private, a-pub public and c-d relayed',
      async () => {
        const [a, e, c, d] = await Promise.all(['a', 'e', 'c', 'd'].map((n) => bed.agent(n).status()));
        return (
          peerOf(a!, 'e')?.pathScope === 'private' &&
          peerOf(e!, 'a')?.pathScope === 'private' &&
          peerOf(a!, 'pub')?.pathScope === 'public' &&
          peerOf(c!, 'd')?.path === 'relayed' &&
          peerOf(d!, 'c')?.path === 'relayed'
        );
      },
      { timeoutMs: 30_000 },
    );
    // Traffic on each kind of path while the readings are taken.
    pings.push(startPings(bed.topo, bed.topo.host('a').ns, ips.get('e')!, { intervalMs: 20 }));
    pings.push(startPings(bed.topo, bed.topo.host('a').ns, ips.get('pub')!, { intervalMs: 20 }));
    pings.push(startPings(bed.topo, bed.topo.host('c').ns, ips.get('d')!, { intervalMs: 20 }));
    await waitUntil('pings to flow on every path', async () => pings.every((p) => p.replies().length >= 5), { timeoutMs: 10_000 });
  }, 120_000);

  afterAll(async () => {
    await Promise.all(pings.map((p) => p.stop().catch(() => undefined)));
    await bed?.destroy();
  });

  async function getIn(agent: Agent, urlPath: string, port = METRICS_PORT, host = '127.0.0.1'): Promise<{ status: number; type: string; body: string }> {
    const r = await bed.topo.tryExec(agent.host.ns, [process.execPath, '-e', GET_SCRIPT, host, String(port), urlPath], { timeoutMs: 10_000 });
    expect(r.code, `${agent.name}: ${r.stderr}`).toBe(0);
    return JSON.parse(r.stdout) as { status: number; type: string; body: string };
  }

  /** Three readings as close together as the socket allows: status, then `metrics()`, then status. */
  async function triple(agent: Agent, metrics: () => Promise<string>): Promise<[AgentStatus, string, AgentStatus]> {
    const s1 = await agent.status();
    const text = await metrics();
    const s2 = await agent.status();
    return [s1, text, s2];
  }

  /** Checks `text` against the status read just before (s1) and just after (s2) it. */
  function expectConsistent(s1: AgentStatus, text: string, s2: AgentStatus): void {
    const host = s1.self.name;
    const series = parseSeries(text);
    const all = (name: string, labels: Record<string, string> = {}): Series[] =>
      series.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
    const one = (name: string, labels: Record<string, string> = {}): number => {
      const hits = all(name, labels);
      expect(hits.length, `${host}: ${name}${JSON.stringify(labels)}`).toBe(1);
      return hits[0]!.value;
    };
    /** A counter or a timestamp: between the two readings. */
    const between = (what: string, lo: number, v: number, hi: number) =>
      expect(lo <= v && v <= hi, `${host}: ${what}: ${lo} <= ${v} <= ${hi}`).toBe(true);
    /** A gauge: equal to the status, or to one of the two readings when it changed between them. */
    const gauge = (what: string, a: number, v: number, b: number) => expect([a, b], `${host}: ${what} = ${v}`).toContain(v);
    const sec = (iso: string | null) => (iso === null ? null : Date.parse(iso) / 1000);

    // This host.
    expect(all('cladnet_info').map((s) => s.labels)).toEqual([
      {
        version: PKG_VERSION,
        network: s1.self.network,
        host: s1.self.name,
        overlay_ip: s1.self.overlayIp,
        interface: s1.self.interface,
        crypto: s1.self.crypto,
        node_version: s1.self.nodeVersion,
      },
    ]);
    expect(s1.self.version).toBe(PKG_VERSION);
    expect(one('cladnet_start_time_seconds')).toBe(Date.parse(s1.self.startedAt) / 1000);
    expect(one('cladnet_interface_mtu_bytes')).toBe(s1.self.mtu);
    expect(one('cladnet_relay_enabled')).toBe(s1.self.relay ? 1 : 0);
    // The process's CPU time only grows; its resident memory moves a little between the readings.
    const p1 = s1.self.process!;
    const p2 = s2.self.process!;
    between('process cpu seconds', p1.cpuSeconds, one('process_cpu_seconds_total'), p2.cpuSeconds);
    const rss = one('process_resident_memory_bytes');
    const [rLo, rHi] = [Math.min(p1.residentBytes, p2.residentBytes), Math.max(p1.residentBytes, p2.residentBytes)];
    expect(rss > rLo * 0.9 && rss < rHi * 1.1, `${host}: resident ${rss} near ${rLo}..${rHi}`).toBe(true);
    expect(rss).toBeGreaterThan(20 * 1048576); // a real node process, not a placeholder
    const nat = all('cladnet_nat_info');
    expect(nat).toHaveLength(1);
    expect([s1.self.nat, s2.self.nat]).toContain(nat[0]!.labels['kind']);
    const refl = nat[0]!.labels['reflexive'];
    if (refl !== undefined && s1.self.nat === 'varies' && s2.self.nat === 'varies') {
      // Behind a port-randomizing NAT the reflexive address is the newest pong's, and pongs from
      // several peers can land between the readings: its address is stable, its port is not.
      const ipOf = (a: string | null | undefined) => a?.slice(0, a.lastIndexOf(':'));
      expect([ipOf(s1.self.reflexive), ipOf(s2.self.reflexive)]).toContain(ipOf(refl));
    } else if (refl !== undefined) expect([s1.self.reflexive, s2.self.reflexive]).toContain(refl);

    // etcd.
    gauge('etcd connected', +s1.etcd.connected, one('cladnet_etcd_connected'), +s2.etcd.connected);
    for (const st of ['unknown', 'up', 'down']) {
      gauge(`etcd link ${st}`, +(s1.etcd.link === st), one('cladnet_etcd_link', { state: st }), +(s2.etcd.link === st));
    }
    between('etcd outages', s1.etcd.outages!, one('cladnet_etcd_outages_total'), s2.etcd.outages!);
    between('invalid records', s1.etcd.invalidRecords, one('cladnet_etcd_invalid_records_total'), s2.etcd.invalidRecords);

    // Peers: the same set in both readings, and every one of them in the metrics.
    expect(s2.peers.map((p) => p.name)).toEqual(s1.peers.map((p) => p.name));
    expect(s1.peers.length).toBe(4);
    for (const st of ['up', 'connecting', 'down'] as const) {
      const count = (d: AgentStatus) => d.peers.filter((p) => p.state === st).length;
      gauge(`peers ${st}`, count(s1), one('cladnet_peers', { state: st }), count(s2));
    }
    for (const kind of ['direct_private', 'direct_public', 'direct', 'relayed', 'none']) {
      const count = (d: AgentStatus) => d.peers.filter((p) => pathLabel(p) === kind).length;
      gauge(`peers by path ${kind}`, count(s1), one('cladnet_peers_by_path', { path: kind }), count(s2));
    }
    s1.peers.forEach((p1, i) => {
      const p2: StatusPeer = s2.peers[i]!;
      const peer = p1.name;
      expect(one('cladnet_peer_info', { peer, overlay_ip: p1.overlayIp })).toBe(1);
      gauge(`${peer} up`, +(p1.state === 'up'), one('cladnet_peer_up', { peer }), +(p2.state === 'up'));
      const path = all('cladnet_peer_path', { peer });
      expect(path, `${host}: path of ${peer}`).toHaveLength(1);
      expect([pathLabel(p1), pathLabel(p2)]).toContain(path[0]!.labels['path']);
      if (path[0]!.labels['path'] === 'relayed') expect(path[0]!.labels['via']).toBe(p1.via ?? p2.via);
      const rtt = all('cladnet_peer_rtt_seconds', { peer });
      const rttCounts = [p1.rttMs, p2.rttMs].map((r) => (r === null ? 0 : 1)); // absent while the status has none
      expect(rttCounts, `${host}: rtt of ${peer}`).toContain(rtt.length);
      if (rtt.length === 1) {
        // Equal to one of the two readings; when they differ, the RTT may have moved more than once
        // between them (one CI run saw 0.652 ms, then 0.311 in the metrics, then 0.468), so any sample.
        if (p1.rttMs === p2.rttMs) expect(rtt[0]!.value).toBe(msToSeconds(p1.rttMs!));
        else expect(rtt[0]!.value, `${host}: rtt of ${peer}`).toBeGreaterThan(0);
      }
      between(`${peer} rx bytes`, p1.rxBytes, one('cladnet_peer_receive_bytes_total', { peer }), p2.rxBytes);
      between(`${peer} tx bytes`, p1.txBytes, one('cladnet_peer_transmit_bytes_total', { peer }), p2.txBytes);
      between(`${peer} rx packets`, p1.rxPackets, one('cladnet_peer_receive_packets_total', { peer }), p2.rxPackets);
      between(`${peer} tx packets`, p1.txPackets, one('cladnet_peer_transmit_packets_total', { peer }), p2.txPackets);
      expect(p1.lastHandshake, `${host}: handshake with ${peer}`).not.toBeNull();
      between(`${peer} last handshake`, sec(p1.lastHandshake)!, one('cladnet_peer_last_handshake_timestamp_seconds', { peer }), sec(p2.lastHandshake)!);
      between(`${peer} last rx`, sec(p1.lastRx)!, one('cladnet_peer_last_receive_timestamp_seconds', { peer }), sec(p2.lastRx)!);
    });
    expect(new Set(all('cladnet_peer_up').map((s) => s.labels['peer']))).toEqual(new Set(s1.peers.map((p) => p.name)));

    // Data plane: totals, relaying, drops by reason, offloads.
    const d1 = s1.dataplane;
    const d2 = s2.dataplane;
    between('rx bytes', d1.rxBytes, one('cladnet_receive_bytes_total'), d2.rxBytes);
    between('tx bytes', d1.txBytes, one('cladnet_transmit_bytes_total'), d2.txBytes);
    between('rx packets', d1.rxPackets, one('cladnet_receive_packets_total'), d2.rxPackets);
    between('tx packets', d1.txPackets, one('cladnet_transmit_packets_total'), d2.txPackets);
    between('relayed packets', d1.relayedPackets!, one('cladnet_relayed_packets_total'), d2.relayedPackets!);
    between('relayed bytes', d1.relayedBytes!, one('cladnet_relayed_bytes_total'), d2.relayedBytes!);
    for (const reason of Object.keys(d1.drops)) {
      between(`drops ${reason}`, d1.drops[reason]!, one('cladnet_packet_drops_total', { reason: snakeCase(reason) }), d2.drops[reason]!);
    }
    expect(all('cladnet_packet_drops_total')).toHaveLength(Object.keys(d1.drops).length);
    const o1 = d1.offloads!;
    const o2 = d2.offloads!;
    gauge('udp gso enabled', +o1.udpGso, one('cladnet_udp_gso_enabled'), +o2.udpGso);
    between('gso datagrams', o1.gsoDatagrams, one('cladnet_udp_gso_datagrams_total'), o2.gsoDatagrams);
    between('gro datagrams', o1.groDatagrams, one('cladnet_udp_gro_datagrams_total'), o2.groDatagrams);

    // Handshakes by event and refusals by reason.
    const h1 = s1.handshake!;
    const h2 = s2.handshake!;
    const events = { initiation_sent: 'initiationsSent', response_sent: 'responsesSent', completed: 'completed', cookie_sent: 'cookiesSent', rekey: 'rekeys' } as const;
    for (const [event, key] of Object.entries(events)) between(`handshakes ${event}`, h1[key], one('cladnet_handshakes_total', { event }), h2[key]);
    for (const reason of Object.keys(h1.drops)) {
      between(`handshake refusals ${reason}`, h1.drops[reason]!, one('cladnet_handshake_refusals_total', { reason: snakeCase(reason) }), h2.drops[reason]!);
    }
  }

  it('serves on the status socket metrics that promtool passes and that match status read just before and after', async () => {
    for (const agent of bed.agents) {
      const [s1, text, s2] = await triple(agent, () => fetchMetrics(agent.socket));
      expect(promtool(text), agent.name).toEqual({ code: 0, output: '' });
      expectConsistent(s1, text, s2);
    }
    // Every kind of path shows, with a relay that relays.
    const pub = await fetchMetrics(bed.agent('pub').socket);
    const a = parseSeries(await fetchMetrics(bed.agent('a').socket));
    const c = parseSeries(await fetchMetrics(bed.agent('c').socket));
    const pathOf = (series: Series[], peer: string) => series.find((s) => s.name === 'cladnet_peer_path' && s.labels['peer'] === peer)?.labels;
    expect(pathOf(a, 'e')).toEqual({ peer: 'e', path: 'direct_private' });
    expect(pathOf(a, 'pub')).toEqual({ peer: 'pub', path: 'direct_public' });
    expect(pathOf(c, 'd')).toEqual({ peer: 'd', path: 'relayed', via: 'pub' });
    const relayed = parseSeries(pub).find((s) => s.name === 'cladnet_relayed_packets_total')!.value;
    expect(relayed).toBeGreaterThan(10);
    console.log(`--- metrics of a (live) ---\n${await fetchMetrics(bed.agent('a').socket)}`);
  });

  it('serves the same on --metrics-listen in each host namespace, promtool clean, 404 elsewhere', async () => {
    for (const agent of bed.agents) {
      const before = parseSeries(await fetchMetrics(agent.socket));
      let answer = { status: 0, type: '', body: '' };
      const [s1, text, s2] = await triple(agent, async () => {
        answer = await getIn(agent, '/metrics');
        return answer.body;
      });
      expect(answer.status).toBe(200);
      expect(answer.type).toBe(METRICS_CONTENT_TYPE);
      expect(promtool(text), agent.name).toEqual({ code: 0, output: '' });
      expectConsistent(s1, text, s2);
      // The same families and series as the socket gave a moment before (values move on).
      const key = (s: Series) => `${s.name}${JSON.stringify(s.labels)}`;
      const live = parseSeries(text);
      expect(new Set(live.map((s) => s.name))).toEqual(new Set(before.map((s) => s.name)));
      expect(live.filter((s) => s.name === 'cladnet_peer_up').map(key)).toEqual(before.filter((s) => s.name === 'cladnet_peer_up').map(key));
      expect((await getIn(agent, '/v1/status')).status).toBe(404);
      expect((await getIn(agent, '/')).status).toBe(404);
    }
    // Traffic flowed between the readings: a's counter for e grew from the socket's reading to the listener's.
    const rxFromE = (series: Series[]) => series.find((s) => s.name === 'cladnet_peer_receive_bytes_total' && s.labels['peer'] === 'e')!.value;
    const first = rxFromE(parseSeries(await fetchMetrics(bed.agent('a').socket)));
    await new Promise((r) => setTimeout(r, 500));
    const second = rxFromE(parseSeries((await getIn(bed.agent('a'), '/metrics')).body));
    expect(second).toBeGreaterThan(first);
  });

  it('prints the metrics with cladnet status --metrics', async () => {
    const agent = bed.agent('pub');
    const r = await cli(bed.topo, null, ['status', '--socket', agent.socket, '--metrics'], 10_000);
    expect(r.code, r.stderr).toBe(0);
    expect(promtool(r.stdout)).toEqual({ code: 0, output: '' });
    expect(parseSeries(r.stdout).find((s) => s.name === 'cladnet_info')?.labels['host']).toBe('pub');
    expect(r.stdout).toMatch(/^cladnet_relay_enabled 1$/m);
  });

  it('refuses a bad --metrics-listen before touching the host, naming the field', async () => {
    const r = await cli(bed.topo, null, ['agent', '--network', 'mesh', '--metrics-listen', 'localhost:9821', '--state-dir', path.join(bed.topo.workDir, 'bad')]);
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toBe(
      'cladnet: config: metricsListen (from --metrics-listen): "localhost:9821" is not an IP address and port (a.b.c.d:port or [v6]:port, port 1-65535) [ECONFIG]',
    );
    expect(fs.existsSync(path.join(bed.topo.workDir, 'bad'))).toBe(false);
  });

  it('is scraped by a real Prometheus: the target is up and the peers and the relay show in queries', async () => {
    const pub = bed.agent('pub');
    const dir = path.join(bed.topo.workDir, 'prometheus');
    fs.mkdirSync(dir, { recursive: true });
    const config = path.join(dir, 'prometheus.yml');
    fs.writeFileSync(
      config,
      ['global:', '  scrape_interval: 1s', 'scrape_configs:', '  - job_name: cladnet', '    static_configs:', `      - targets: ['127.0.0.1:${METRICS_PORT}']`, ''].join('\n'),
    );
    bed.topo.spawn(
      pub.host.ns,
      ['prometheus', `--config.file=${config}`, `--storage.tsdb.path=${path.join(dir, 'data')}`, '--web.listen-address=127.0.0.1:9090', '--log.level=warn'],
      { logFile: path.join(dir, 'prometheus.log') },
    );
    const query = async (q: string): Promise<{ metric: Record<string, string>; value: [number, string] }[]> => {
      const r = await getIn(pub, `/api/v1/query?query=${encodeURIComponent(q)}`, 9090);
      expect(r.status, r.body).toBe(200);
      return (JSON.parse(r.body) as { data: { result: { metric: Record<string, string>; value: [number, string] }[] } }).data.result;
    };
    const up = await waitUntil('Prometheus to scrape pub', async () => {
      const res = await query('up{job="cladnet"}').catch(() => []);
      return res.length === 1 ? res : undefined;
    }, { timeoutMs: 30_000, intervalMs: 500 });
    expect(up[0]!.value[1]).toBe('1');
    const scraped = await query('scrape_samples_post_metric_relabeling{job="cladnet"}');
    const samplesNow = parseSeries(await fetchMetrics(pub.socket)).length;
    expect(Number(scraped[0]!.value[1])).toBe(samplesNow);
    expect((await query('cladnet_peer_up == 1')).map((r) => r.metric['peer']).sort()).toEqual(['a', 'c', 'd', 'e']);
    expect((await query('cladnet_info'))[0]!.metric).toMatchObject({ host: 'pub', version: PKG_VERSION });
    expect(Number((await query('cladnet_relayed_packets_total'))[0]!.value[1])).toBeGreaterThan(10);
  });

  // Last: it restarts e.
  it('listens on the overlay address too, so a scraper in the mesh reaches it through the tunnel', async () => {
    const e = bed.agent('e');
    const ip = ips.get('e')!;
    await e.stop();
    const again = await bed.start(e.host, {
      listenPort: 51821,
      issueCert: false, // the certificate it has
      extraArgs: ['--metrics-listen', `${ip}:${METRICS_PORT}`],
    });
    expect((await again.status()).self.overlayIp).toBe(ip);
    const answer = await waitUntil(
      `a to scrape e at ${ip}:${METRICS_PORT} over the tunnel`,
      async () => {
        const r = await getIn(bed.agent('a'), '/metrics', METRICS_PORT, ip).catch(() => undefined);
        return r?.status === 200 ? r : undefined;
      },
      { timeoutMs: 20_000, intervalMs: 500 },
    );
    expect(promtool(answer.body)).toEqual({ code: 0, output: '' });
    expect(parseSeries(answer.body).find((x) => x.name === 'cladnet_info')?.labels).toMatchObject({ host: 'e', overlay_ip: ip });
  });
});
